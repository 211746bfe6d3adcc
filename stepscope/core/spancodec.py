"""`SpanSpec` to and from compact JSON bytes: the format of the durable span backlog.

The pipeline encodes a step's spans in the same store transaction that commits the step; the delivery worker
decodes them, possibly in a later process (after a restart or a `kill -9`). The layout is a positional JSON array,
tagged by its first element, so an older row stays readable after an upgrade and a foreign row is refused
(`ValueError`), never guessed at. Ids travel as hex strings: JSON numbers above 2**53 lose precision in most readers.
Tag 1 is a `SpanSpec` (a trailing list of links was added later; rows without it read as having none); tag 2 a
`RelayedSpan`, the server's own OTLP JSON kept as it came.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from stepscope.core.records import AttrValue, RelayedSpan, SpanEvent, SpanSpec

FORMAT = 1
RELAYED = 2
_encoder = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def encode(spec: SpanSpec | RelayedSpan) -> bytes:
    """One spec, or one relayed span, as compact UTF-8 JSON. Raises ValueError for values JSON cannot carry (NaN,
    infinities)."""
    if isinstance(spec, RelayedSpan):
        return _encoder.encode([RELAYED, spec.key, dict(spec.resource), dict(spec.scope), dict(spec.span)]).encode()
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
        [[f"{t:032x}", f"{sid:016x}"] for t, sid in spec.links],
    ]
    return _encoder.encode(row).encode()


def decode(data: bytes | str) -> SpanSpec | RelayedSpan:
    """The spec (or relayed span) `encode` wrote. Raises ValueError for anything else (a damaged or foreign row)."""
    try:
        row = json.loads(data)
        if isinstance(row, list) and len(row) == 5 and row[0] == RELAYED:
            _, key, resource, scope, span = row
            if not (isinstance(resource, dict) and isinstance(scope, dict) and isinstance(span, dict)):
                raise ValueError("not a relayed span record")
            return RelayedSpan(_str(key), resource, scope, span)
        if not isinstance(row, list) or len(row) not in (14, 15) or row[0] != FORMAT:
            raise ValueError("not a stepscope span record")
        (_, key, name, kind, trace_id, span_id, parent, start_ns, end_ns, attrs, error_type, remote, flags, events) = (
            row[:14]
        )
        links = row[14] if len(row) == 15 else []
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
            links=tuple((int(t, 16), int(sid, 16)) for t, sid in links),
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
