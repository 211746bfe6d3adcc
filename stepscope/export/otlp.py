"""Spans over OTLP: settings resolved from `OTEL_*`, the SDK exporter they ask for, and `SpanSpec` -> SDK span.

`readable_span` builds the SDK's `ReadableSpan` straight from a spec (explicit ids, times, parent, status), with no
tracer or processor in between: the durable backlog (`export/delivery.py`) is the queue, so the SDK's batch
processor would only be a second, volatile one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import IO
from urllib.parse import unquote

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SpanExporter
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags

from stepscope import __version__
from stepscope.core.records import SpanSpec
from stepscope.export.episodes import ANY_RECORD
from stepscope.mapping.attributes import ERROR_TYPE

_KINDS = {"client": SpanKind.CLIENT, "internal": SpanKind.INTERNAL, "server": SpanKind.SERVER}
_SCOPE = InstrumentationScope("stepscope", __version__)
_OK = Status(StatusCode.UNSET)
_ERROR = Status(StatusCode.ERROR)
MAX_NS = 2**64 - 1
TRACE_LOGGERS = {
    "opentelemetry.exporter.otlp.proto.http.trace_exporter": ANY_RECORD,
    "opentelemetry.exporter.otlp.proto.grpc.trace_exporter": ANY_RECORD,
    "opentelemetry.exporter.otlp.proto.grpc.exporter": frozenset({"traces"}),
}
"""The SDK span exporters' loggers, for `SdkLogGate`: the gRPC exporters share the last one, naming the signal."""


@dataclass(frozen=True, slots=True, kw_only=True)
class TraceSettings:
    """What `config.py` resolved from `OTEL_*` variables; None leaves a setting to the OTel exporter's own env.

    - `exporter`: `OTEL_TRACES_EXPORTER`, one of `otlp` (default), `console`, `none`.
    - `protocol`: `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL` / `OTEL_EXPORTER_OTLP_PROTOCOL`: `http/protobuf`, `grpc`.
    - `traces_endpoint`: `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, used as is.
    - `endpoint`: `OTEL_EXPORTER_OTLP_ENDPOINT`, a base URL; over HTTP `/v1/traces` is appended.
    - `headers`: `OTEL_EXPORTER_OTLP_HEADERS`, as the raw `k=v,k2=v2` text or already parsed.
    - `timeout_s`: per export request; `insecure`: gRPC only, plaintext instead of TLS.
    - `service_name`, `service_version`, `resource_attributes` (`OTEL_RESOURCE_ATTRIBUTES` text): the resource.
    - `max_export_batch_size`, `schedule_delay_ms`: the delivery thread's batch size and the pause that gathers one.
    """

    exporter: str = "otlp"
    protocol: str = "http/protobuf"
    traces_endpoint: str | None = None
    endpoint: str | None = None
    headers: Mapping[str, str] | str = field(default_factory=dict)
    timeout_s: float | None = None
    insecure: bool | None = None
    service_name: str = "stepscope"
    service_version: str | None = None
    resource_attributes: str = ""
    max_export_batch_size: int = 512
    schedule_delay_ms: float = 5000

    def __repr__(self) -> str:
        # Headers usually carry an API key: never print them.
        return (
            f"TraceSettings(exporter={self.exporter!r}, protocol={self.protocol!r}, "
            f"traces_endpoint={self.traces_endpoint!r}, endpoint={self.endpoint!r}, "
            f"headers={'***' if self.headers else ''!r}, service_name={self.service_name!r})"
        )


def parse_headers(text: str) -> dict[str, str]:
    """`"api-key=abc,x-tenant=t%201"` -> `{"api-key": "abc", "x-tenant": "t 1"}` (the OTLP env format).

    Entries without `=` are skipped; keys are lower-cased; values are URL-decoded.
    """
    out: dict[str, str] = {}
    for item in text.split(","):
        key, sep, value = item.partition("=")
        if sep and key.strip():
            out[unquote(key.strip()).lower()] = unquote(value.strip())
    return out


def build_resource(settings: TraceSettings) -> Resource:
    """The SDK resource: `resource_attributes` (`k=v,…`), then `service.name`/`service.version` on top."""
    attrs: dict[str, str] = {}
    for item in settings.resource_attributes.split(","):
        key, sep, value = item.partition("=")
        if sep and key.strip():
            attrs[unquote(key.strip())] = unquote(value.strip())
    attrs["service.name"] = settings.service_name
    if settings.service_version:
        attrs["service.version"] = settings.service_version
    return Resource.create(attrs)


def build_span_exporter(settings: TraceSettings, *, console_out: IO[str] | None = None) -> SpanExporter | None:
    """The exporter `settings` ask for, or None when traces are off (`exporter="none"`).

    Raises ValueError for an unknown exporter or protocol (config validation should have caught it).
    """
    kind = settings.exporter.strip().lower()
    if kind == "none":
        return None
    if kind == "console":
        return ConsoleSpanExporter(out=console_out) if console_out is not None else ConsoleSpanExporter()
    if kind != "otlp":
        raise ValueError(f"unsupported traces exporter {settings.exporter!r}")
    raw = settings.headers
    headers = (parse_headers(raw) if isinstance(raw, str) else dict(raw)) or None
    protocol = settings.protocol.strip().lower()
    if protocol in ("http/protobuf", "http"):
        # Lazy: each exporter pulls in its transport stack (requests or grpcio); load only the one in use.
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter  # noqa: PLC0415

        endpoint = settings.traces_endpoint
        if endpoint is None and settings.endpoint is not None:
            endpoint = f"{settings.endpoint.removesuffix('/')}/v1/traces"
        return HttpExporter(endpoint=endpoint, headers=headers, timeout=settings.timeout_s)
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter  # noqa: PLC0415

        return GrpcExporter(
            endpoint=settings.traces_endpoint or settings.endpoint,
            insecure=settings.insecure,
            headers=headers,
            timeout=settings.timeout_s,
        )
    raise ValueError(f"unsupported OTLP protocol {settings.protocol!r}")


def readable_span(spec: SpanSpec, resource: Resource) -> ReadableSpan:
    """The SDK span `spec` describes, ready for any `SpanExporter`.

    Raises ValueError when the spec cannot be encoded (times or ids outside OTLP's unsigned 64-bit fields): the
    caller drops that one span instead of failing its whole batch.
    """
    if not (0 <= spec.start_ns <= spec.end_ns <= MAX_NS) or not (
        0 < spec.trace_id < 2**128 and 0 < spec.span_id < 2**64
    ):
        raise ValueError(f"span {spec.key} has times or ids OTLP cannot carry")
    flags = TraceFlags(spec.trace_flags & 0xFF)
    parent = (
        None
        if spec.parent_span_id is None
        else SpanContext(spec.trace_id, spec.parent_span_id, is_remote=spec.parent_remote, trace_flags=flags)
    )
    attributes = dict(spec.attributes)
    if spec.error_type is not None:
        attributes.setdefault(ERROR_TYPE, spec.error_type)
    return ReadableSpan(
        spec.name,
        context=SpanContext(spec.trace_id, spec.span_id, is_remote=False, trace_flags=flags),
        parent=parent,
        resource=resource,
        attributes=attributes,
        events=[Event(e.name, e.attributes, e.time_ns) for e in spec.events],
        links=[Link(SpanContext(t, s, is_remote=True, trace_flags=flags)) for t, s in spec.links],
        kind=_KINDS.get(spec.kind, SpanKind.INTERNAL),
        status=_OK if spec.error_type is None else _ERROR,
        start_time=spec.start_ns,
        end_time=spec.end_ns,
        instrumentation_scope=_SCOPE,
    )
