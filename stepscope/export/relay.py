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
    except (json_format.ParseError, TypeError, ValueError, AttributeError) as exc:
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
