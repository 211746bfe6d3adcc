"""Deterministic trace and span ids, and W3C `traceparent` parsing.

Ids are hashes of namespaced strings, so a restarted sidecar or a second replica derives the same ids for the same
run, step and tool call: a span exported twice is a duplicate a backend can recognise, never a second trace.

>>> trace_id_for_run("run_abc") == trace_id_for_run("run_abc")
True
>>> tp = parse_traceparent("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
>>> tp == (0x0AF7651916CD43DD8448EB211C80319C, 0xB7AD6B7169203331, 1)
True
"""

from __future__ import annotations

import hashlib
import re

_NAMESPACE = "stepscope/v1"
# Unit separator: cannot occur in API ids, so ("a:b", "c") and ("a", "b:c") never hash alike.
_SEP = "\x1f"
_TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")


def _hash_id(text: str, size: int) -> int:
    value = int.from_bytes(hashlib.blake2b(text.encode(), digest_size=size).digest(), "big")
    # An all-zero id is invalid in OpenTelemetry and W3C; 1 in 2**64 (or 2**128) is still worth a branch.
    return value or 1


def trace_id_for_run(run_id: str) -> int:
    """The 128-bit trace id of a run that starts its own trace; never 0.

    `trace_id_for_run("run_abc")` is the same integer in every process, on every replica.
    """
    return _hash_id(f"{_NAMESPACE}{_SEP}trace{_SEP}{run_id}", 16)


def span_id_for(kind: str, *parts: str) -> int:
    """The 64-bit span id of one object, e.g. `span_id_for("step", step_id)`; never 0.

    Kinds used by the mapping: `run` (run id), `step` (step id), `call` (step id, call id).
    """
    return _hash_id(_SEP.join((_NAMESPACE, "span", kind, *parts)), 8)


def parse_traceparent(value: str | None) -> tuple[int, int, int] | None:
    """`(trace_id, span_id, flags)` from a W3C `traceparent`, or None when it is absent or invalid.

    Accepted: version `00`, lowercase hex, exactly 55 characters (surrounding blanks ignored), trace and span id not
    all zero. Anything else (other versions, upper case, extra fields, `ff`) is ignored: the run starts its own
    trace. `"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"` -> `(0x0af7…319c, 0xb7ad…3331, 1)`.
    """
    if not value:
        return None
    match = _TRACEPARENT.fullmatch(value.strip(" \t"))
    if match is None:
        return None
    trace_id = int(match.group(1), 16)
    span_id = int(match.group(2), 16)
    if trace_id == 0 or span_id == 0:
        return None
    return trace_id, span_id, int(match.group(3), 16)


def valid_traceparent(value: bytes | str | None) -> str | None:
    """The header's value (surrounding blanks removed) when `parse_traceparent` accepts it, else None: what the
    proxy keeps of an application's `traceparent` header."""
    if not value:
        return None
    text = (value.decode("latin-1") if isinstance(value, bytes) else value).strip(" \t")
    return text if parse_traceparent(text) is not None else None
