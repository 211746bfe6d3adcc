"""`SpanSpec` to and from compact JSON bytes: the format of the durable span backlog.

The pipeline encodes a step's spans in the same store transaction that commits the step; the delivery worker
decodes them, possibly in a later process (after a restart or a `kill -9`). The layout is a positional JSON array,
versioned by its first element, so an older row stays readable after an upgrade and a foreign row is refused
(`ValueError`), never guessed at. Ids travel as hex strings: JSON numbers above 2**53 lose precision in most readers.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from stepscope.types import AttrValue, SpanEvent, SpanSpec

FORMAT = 1
_encoder = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def encode(spec: SpanSpec) -> bytes:
    """One spec as compact UTF-8 JSON. Raises ValueError for values JSON cannot carry (NaN, infinities)."""
    events = [[e.name, e.time_ns, dict(e.attributes)] for e in spec.events]
    row = [
        FORMAT,
        spec.key,
        spec.name,
        spec.kind,
        f"{spec.trace_id:032x}",
        f"{spec.span_id:016x}",
        None if spec.parent_span_id is None else f"{spec.parent_span_id:016x}",
        spec.start_ns,
        spec.end_ns,
        dict(spec.attributes),
        spec.error_type,
        spec.parent_remote,
        spec.trace_flags,
        events,
    ]
    return _encoder.encode(row).encode()


def decode(data: bytes | str) -> SpanSpec:
    """The spec `encode` wrote. Raises ValueError for anything else (a damaged or foreign row)."""
    try:
        row = json.loads(data)
        if not isinstance(row, list) or len(row) != 14 or row[0] != FORMAT:
            raise ValueError("not a stepscope span record")
        (_, key, name, kind, trace_id, span_id, parent, start_ns, end_ns, attrs, error_type, remote, flags, events) = (
            row
        )
        return SpanSpec(
            key=_str(key),
            name=_str(name),
            kind=_str(kind),
            trace_id=int(trace_id, 16),
            span_id=int(span_id, 16),
            parent_span_id=None if parent is None else int(parent, 16),
            start_ns=_int(start_ns),
            end_ns=_int(end_ns),
            attributes=_attrs(attrs),
            error_type=None if error_type is None else _str(error_type),
            parent_remote=bool(remote),
            trace_flags=_int(flags),
            events=tuple(SpanEvent(_str(n), _int(t), _attrs(a)) for n, t, a in events),
        )
    except (TypeError, AttributeError) as exc:
        raise ValueError(f"not a stepscope span record: {exc}") from exc


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {type(value).__name__}")
    return value


def _int(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"expected an integer, got {type(value).__name__}")
    return value


def _attrs(value: Any) -> Mapping[str, AttrValue]:
    if not isinstance(value, dict):
        raise ValueError("attributes must be an object")
    for v in value.values():
        if not isinstance(v, str | bool | int | float):
            raise ValueError(f"unsupported attribute value {type(v).__name__}")
    return value
