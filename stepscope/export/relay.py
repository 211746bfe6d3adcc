"""Relaying a server-published trace unchanged: OTLP JSON in, an OTLP protobuf `ExportTraceServiceRequest` out.

The Agents API publishes each finished root turn's trace as OTLP JSON (`SessionTrace.otlp`, `{"resourceSpans":
[...]}`). `otlp_json_to_protobuf` turns it into the protobuf bytes an OTLP/HTTP endpoint takes, keeping every trace
and span id, time, name, kind, status, attribute, event, link and resource as the server wrote them: stepscope
invents nothing in a trace it did not build.

OTLP JSON differs from protobuf's canonical JSON mapping in one way that matters (OTLP specification, "JSON
Protobuf Encoding"): `traceId`, `spanId` and `parentSpanId` (in spans and links) are hex strings, not base64. They
are converted before `google.protobuf.json_format.ParseDict` reads the rest, which already accepts what OTLP JSON
allows: camelCase or snake_case keys, 64-bit integers as numbers or strings, enums as integers or names, base64
`bytesValue`. Fields the protobuf schema does not know are ignored, as the OTLP specification tells receivers to
do. The input is never modified.

Sample: `{"resourceSpans": [{"resource": {...}, "scopeSpans": [{"spans": [{"traceId":
"5b8efff798038103d269b633813fc60c", "spanId": "eee19b7ec3c1b174", "name": "lookup", "startTimeUnixNano":
"1544712660000000000", ...}]}]}]}` -> bytes that decode to a span with `trace_id ==
bytes.fromhex("5b8e…c60c")`, the same name and start time.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any

from google.protobuf import json_format  # type: ignore[import-untyped]  # protobuf ships no stubs; the venv has none
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags

from stepscope.core.records import RelayedSpan
from stepscope.errors import StepscopeError

_ID_SIZES = {"traceId": 16, "trace_id": 16, "spanId": 8, "span_id": 8, "parentSpanId": 8, "parent_span_id": 8}
_SPAN_LISTS = ("resourceSpans", "resource_spans", "scopeSpans", "scope_spans", "spans", "links")


class RelayError(StepscopeError):
    """A published trace that is not valid OTLP JSON; the message names what is wrong, in one line."""


def otlp_json_to_request(otlp: Mapping[str, Any]) -> ExportTraceServiceRequest:
    """The `ExportTraceServiceRequest` an OTLP JSON trace describes; raises `RelayError` when it is not one."""
    try:
        request = ExportTraceServiceRequest()
        json_format.ParseDict(_convert_ids(otlp, ""), request, ignore_unknown_fields=True)
    except RelayError:
        raise
    except (json_format.ParseError, TypeError, ValueError, AttributeError, RecursionError) as exc:
        first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise RelayError(f"published trace is not OTLP JSON: {first_line[:200]}") from exc
    return request


def otlp_json_to_protobuf(otlp: Mapping[str, Any]) -> bytes:
    """The serialized `ExportTraceServiceRequest` for POSTing to `/v1/traces` as `application/x-protobuf`."""
    data: bytes = otlp_json_to_request(otlp).SerializeToString(deterministic=True)
    return data


def spans_in(otlp: Mapping[str, Any]) -> int:
    """How many spans a published trace holds (for counting relayed spans), 0 for an unreadable one."""
    try:
        request = otlp_json_to_request(otlp)
    except RelayError:
        return 0
    return sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)


def _convert_ids(node: Any, path: str) -> Any:
    """A copy of `node` with hex ids in span and link objects re-encoded as base64; everything else as it is."""
    if isinstance(node, Mapping):
        out: dict[str, Any] = {}
        for key, value in node.items():
            where = f"{path}.{key}" if path else str(key)
            if key in _ID_SIZES and _in_span_or_link(path):
                out[key] = _hex_to_base64(value, _ID_SIZES[key], where)
            elif key in _SPAN_LISTS:
                out[key] = _convert_ids(value, where)
            else:
                out[key] = value
        return out
    if isinstance(node, list):
        return [_convert_ids(value, f"{path}[{i}]") for i, value in enumerate(node)]
    return node


def _in_span_or_link(path: str) -> bool:
    """Ids live only in spans and their links (`...spans[i]`, `...links[j]`), never in attributes or resources."""
    tail = path.rsplit(".", 1)[-1]
    return tail.startswith(("spans[", "links["))


def _hex_to_base64(value: object, size: int, where: str) -> str:
    if value is None or value == "":
        return ""
    if not isinstance(value, str):
        raise RelayError(f"published trace: {where} is not a hex string")
    try:
        raw = bytes.fromhex(value)
    except ValueError:
        raw = b""
    if len(raw) != size:
        raise RelayError(f"published trace: {where} is not {size * 2} hex digits")
    return base64.b64encode(raw).decode("ascii")


def relayed_readable(relayed: RelayedSpan) -> ReadableSpan:
    """The SDK span for one relayed span, with the server's own resource and scope, ready for any exporter.

    Ids, times, name, kind, status, attributes, events and links are the server's. Attribute values the SDK cannot
    hold (key-value lists, bytes) are left out. Raises `RelayError` for a span that is not OTLP JSON.
    """
    request = otlp_json_to_request(
        {
            "resourceSpans": [
                {
                    "resource": dict(relayed.resource),
                    "scopeSpans": [{"scope": dict(relayed.scope), "spans": [dict(relayed.span)]}],
                }
            ]
        }
    )
    rs = request.resource_spans[0]
    ss = rs.scope_spans[0]
    if not ss.spans:
        raise RelayError(f"published span {relayed.key} is empty")
    span = ss.spans[0]
    trace_id = int.from_bytes(span.trace_id, "big")
    span_id = int.from_bytes(span.span_id, "big")
    if not (trace_id and span_id and 0 <= span.start_time_unix_nano <= span.end_time_unix_nano):
        raise RelayError(f"published span {relayed.key} has no ids or an end before its start")
    flags = TraceFlags(span.flags & 0xFF or TraceFlags.SAMPLED)
    parent = (
        SpanContext(trace_id, int.from_bytes(span.parent_span_id, "big"), is_remote=True, trace_flags=flags)
        if span.parent_span_id
        else None
    )
    return ReadableSpan(
        span.name,
        context=SpanContext(trace_id, span_id, is_remote=False, trace_flags=flags),
        parent=parent,
        resource=Resource(_attributes(rs.resource.attributes)),
        attributes=_attributes(span.attributes),
        events=[Event(e.name, _attributes(e.attributes), e.time_unix_nano) for e in span.events],
        links=[
            Link(
                SpanContext(int.from_bytes(k.trace_id, "big"), int.from_bytes(k.span_id, "big"), is_remote=True),
                _attributes(k.attributes),
            )
            for k in span.links
            if k.trace_id and k.span_id
        ],
        kind=_KINDS.get(span.kind, SpanKind.INTERNAL),
        status=Status(_STATUS.get(span.status.code, StatusCode.UNSET), span.status.message or None),
        start_time=span.start_time_unix_nano,
        end_time=span.end_time_unix_nano,
        instrumentation_scope=InstrumentationScope(ss.scope.name, ss.scope.version or None),
    )


_KINDS = {1: SpanKind.INTERNAL, 2: SpanKind.SERVER, 3: SpanKind.CLIENT, 4: SpanKind.PRODUCER, 5: SpanKind.CONSUMER}
_STATUS = {0: StatusCode.UNSET, 1: StatusCode.OK, 2: StatusCode.ERROR}


def _attributes(kvs: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kv in kvs:
        value = _value(kv.value)
        if value is not None:
            out[kv.key] = value
    return out


def _value(v: Any) -> Any:
    which = v.WhichOneof("value")
    if which in ("string_value", "bool_value", "int_value", "double_value"):
        return getattr(v, which)
    if which == "array_value":
        values = [_value(x) for x in v.array_value.values]
        return tuple(x for x in values if x is not None and not isinstance(x, tuple))
    return None  # kvlist and bytes have no SDK attribute form
