"""Spans over OTLP: the SDK's `TracerProvider` and `BatchSpanProcessor`, with deterministic ids and acks.

`OtlpSpanSink` turns `SpanSpec`s into SDK spans (explicit ids, times, parents) and hands them to a
`BatchSpanProcessor`, whose worker thread exports them so a slow collector never stalls the event loop. An
acknowledging wrapper around the real exporter reports each batch's `SpanSpec.key`s and whether the backend took
them, which is what lets the pipeline commit progress only for delivered spans. Nothing is dropped silently: the
sink refuses (acks False, reports `span_queue_full`) a whole unit (one step's spans) that would overflow the
processor's queue, so a retried step never re-exports half of itself.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import IO
from urllib.parse import unquote

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.metrics import NoOpMeterProvider
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.sdk.trace.sampling import ALWAYS_ON
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode, TraceFlags

from stepscope.mapping.attributes import ERROR_TYPE
from stepscope.types import AckCallback, SpanSpec

log = logging.getLogger(__name__)

DROP_QUEUE_FULL = "span_queue_full"
_PARENT_CACHE = 256
"""Parent contexts kept for reuse; cleared when full (runs in flight at once share few parents each)."""
_KINDS = {"client": SpanKind.CLIENT, "internal": SpanKind.INTERNAL, "server": SpanKind.SERVER}


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
    - `max_queue_size`, `max_export_batch_size`, `schedule_delay_ms`, `export_timeout_ms`: the batch processor.
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
    max_queue_size: int = 2048
    max_export_batch_size: int = 512
    schedule_delay_ms: float = 5000
    export_timeout_ms: float = 30000

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


class _PresetIds(IdGenerator):
    """Hands out the ids set just before `start_span`; the sink uses it from one thread only."""

    __slots__ = ("span_id", "trace_id")

    def __init__(self) -> None:
        self.trace_id = 0
        self.span_id = 0

    def generate_span_id(self) -> int:
        return self.span_id

    def generate_trace_id(self) -> int:
        return self.trace_id

    def is_trace_id_random(self) -> bool:
        return False


class _AckingExporter(SpanExporter):
    """Exports through `inner`, then reports the batch's keys to `on_ack`; owns the queue's admission count.

    Runs on the processor's worker thread. Keys are kept here (span ids -> keys), never sent to the backend. One
    lock guards both the in-flight count and the key map, so admitting a unit and retiring a batch each take it
    once rather than once per span.
    """

    def __init__(
        self,
        inner: SpanExporter,
        on_ack: AckCallback,
        on_failure: Callable[[int], None] | None,
        max_queue: int,
    ) -> None:
        self._inner = inner
        self._on_ack = on_ack
        self._on_failure = on_failure
        self._max_queue = max_queue
        self._lock = threading.Lock()
        # (trace id << 64 | span id) -> key, or keys in hand-over order when one span is in flight twice. An int
        # and a str, unlike a tuple and a list, are not tracked by the garbage collector, whose passes over
        # thousands of spans in flight were most of the sink's overhead.
        self._pending: dict[int, str | list[str]] = {}
        self.in_flight = 0

    def admit(self, specs: Sequence[SpanSpec]) -> bool:
        """Take the whole unit (count it in flight, remember its keys) if it fits the queue now, else nothing."""
        n = len(specs)
        with self._lock:
            if self.in_flight + n > self._max_queue:
                return False
            self.in_flight += n
            pending = self._pending
            for spec in specs:
                ids = spec.trace_id << 64 | spec.span_id
                keys = pending.get(ids)
                if keys is None:
                    pending[ids] = spec.key
                elif isinstance(keys, str):
                    pending[ids] = [keys, spec.key]
                else:
                    keys.append(spec.key)
        return True

    def forget(self, spec: SpanSpec) -> None:
        """Undo `admit` for one spec that never reached the processor."""
        with self._lock:
            self.in_flight = max(0, self.in_flight - 1)
            self._take(spec.trace_id << 64 | spec.span_id)

    def _take(self, ids: int) -> str | None:
        # Caller holds the lock.
        keys = self._pending.pop(ids, None)
        if keys is None or isinstance(keys, str):
            return keys
        key = keys.pop(0)
        if keys:
            self._pending[ids] = keys
        return key

    def take_all(self) -> list[str]:
        with self._lock:
            keys: list[str] = []
            for group in self._pending.values():
                if isinstance(group, str):
                    keys.append(group)
                else:
                    keys.extend(group)
            self._pending.clear()
            self.in_flight = 0
            return keys

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        keys = []
        with self._lock:
            for span in spans:
                ctx = span.context
                key = self._take(ctx.trace_id << 64 | ctx.span_id) if ctx is not None else None
                if key is not None:
                    keys.append(key)
        try:
            result = self._inner.export(spans)
        except Exception:
            log.exception("span exporter raised; treating the batch as failed")
            result = SpanExportResult.FAILURE
        ok = result is SpanExportResult.SUCCESS
        # Slots are freed only now: the processor already popped these spans, but a span being exported still
        # holds memory, and counting it keeps `in_flight` an upper bound of the processor's queue.
        with self._lock:
            self.in_flight = max(0, self.in_flight - len(spans))
        if not ok and self._on_failure is not None:
            self._on_failure(len(spans))
        _call_ack(self._on_ack, keys, ok)
        return result

    def shutdown(self) -> None:
        self._inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self._inner.force_flush(timeout_millis)


def _call_ack(on_ack: AckCallback, keys: Sequence[str], ok: bool) -> None:
    if not keys:
        return
    try:
        on_ack(keys, ok)
    except Exception:
        log.exception("span ack callback raised")


class OtlpSpanSink:
    """`SpanSink` over the OTel SDK. Call `export` from one thread (the event loop); acks arrive on any thread.

    Processor sizes come from the keyword arguments, else from `settings`, else `TraceSettings` defaults; the
    resource from `resource`, else `build_resource(settings)`.

    Each `export` call is one unit (the pipeline passes one step's spans, or one run span): the unit is taken whole
    or refused whole, so a step is never split between an accepted step span and a refused tool span (which would
    export the accepted one twice when the step is retried). A unit is refused when it does not fit beside the
    `max_queue_size` spans already waiting: its keys are acked False at once and counted as `span_queue_full`
    through `on_drop(reason, n)`, and the pipeline retries the step on a later poll. A unit larger than the whole
    queue could never fit, so retrying it would loop forever: it is dropped instead, counted the same way, logged,
    and acked True so its step commits (its metrics still count) and polling moves on.

    `exporter=None` means traces are off: every spec is acknowledged at once, successfully. `on_failure(n)` counts
    spans whose export failed (`stepscope_span_export_failures_total`).
    The sampler is always-on and `OTEL_TRACES_SAMPLER` is ignored: an unsampled span would never be acked.
    """

    def __init__(
        self,
        exporter: SpanExporter | None,
        *,
        on_ack: AckCallback,
        resource: Resource | None = None,
        settings: TraceSettings | None = None,
        max_queue_size: int | None = None,
        max_export_batch_size: int | None = None,
        schedule_delay_ms: float | None = None,
        export_timeout_ms: float | None = None,
        on_failure: Callable[[int], None] | None = None,
        on_drop: Callable[[str, int], None] | None = None,
    ) -> None:
        cfg = settings or TraceSettings()
        max_queue_size = max_queue_size or cfg.max_queue_size
        self._on_ack = on_ack
        self._on_drop = on_drop
        self._max_queue = max_queue_size
        self._closed = False
        self._refusing = False  # between the first refused unit and the next admitted one
        self._wrapper: _AckingExporter | None = None
        self._provider: TracerProvider | None = None
        self._ids = _PresetIds()
        self._root = Context()
        # Parent contexts by (trace id, parent span id, remote, flags): every step of a run has the same parent.
        self._parents: dict[tuple[int, int, bool, int], Context] = {}
        if exporter is None:
            return
        self._wrapper = _AckingExporter(exporter, on_ack, on_failure, max_queue_size)
        self._provider = TracerProvider(
            sampler=ALWAYS_ON,
            resource=resource if resource is not None else build_resource(cfg),
            shutdown_on_exit=False,
            id_generator=self._ids,
            meter_provider=NoOpMeterProvider(),
        )
        self._provider.add_span_processor(
            BatchSpanProcessor(
                self._wrapper,
                max_queue_size=max_queue_size,
                schedule_delay_millis=schedule_delay_ms or cfg.schedule_delay_ms,
                max_export_batch_size=min(max_export_batch_size or cfg.max_export_batch_size, max_queue_size),
                export_timeout_millis=export_timeout_ms or cfg.export_timeout_ms,
                meter_provider=NoOpMeterProvider(),
            )
        )
        self._tracer = self._provider.get_tracer("stepscope")

    @property
    def in_flight(self) -> int:
        """Spans handed to the processor and not yet acknowledged."""
        return self._wrapper.in_flight if self._wrapper is not None else 0

    def export(self, specs: Sequence[SpanSpec]) -> None:
        """Start and end one SDK span per spec, or refuse them all; never blocks on the network, never raises."""
        if not specs:
            return
        wrapper = self._wrapper
        if wrapper is None or self._closed:
            _call_ack(self._on_ack, [s.key for s in specs], not self._closed)
            return
        if not wrapper.admit(specs):
            self._refuse(specs)
            return
        if self._refusing:
            self._refusing = False
            log.info("span queue has room again")
        for spec in specs:
            try:
                self._emit(spec)
            except Exception:
                log.exception("could not emit span %s", spec.key)
                wrapper.forget(spec)
                _call_ack(self._on_ack, [spec.key], False)

    def _refuse(self, specs: Sequence[SpanSpec]) -> None:
        oversized = len(specs) > self._max_queue
        if oversized:
            log.warning(
                "dropping %d spans of one step: more than the whole span queue (%d)", len(specs), self._max_queue
            )
        elif not self._refusing:
            # Once per episode, not per step: refusals are counted in span_queue_full.
            self._refusing = True
            log.warning("span queue full: refusing steps until it drains (counted in span_queue_full)")
        if self._on_drop is not None:
            self._on_drop(DROP_QUEUE_FULL, len(specs))
        _call_ack(self._on_ack, [s.key for s in specs], oversized)

    def _parent_context(self, spec: SpanSpec, parent_span_id: int) -> Context:
        key = (spec.trace_id, parent_span_id, spec.parent_remote, spec.trace_flags)
        context = self._parents.get(key)
        if context is None:
            if len(self._parents) >= _PARENT_CACHE:
                self._parents.clear()
            parent = SpanContext(
                spec.trace_id, parent_span_id, is_remote=spec.parent_remote, trace_flags=TraceFlags(spec.trace_flags)
            )
            context = trace.set_span_in_context(NonRecordingSpan(parent), self._root)
            self._parents[key] = context
        return context

    def _emit(self, spec: SpanSpec) -> None:
        assert self._wrapper is not None
        parent_span_id = spec.parent_span_id
        context = self._root if parent_span_id is None else self._parent_context(spec, parent_span_id)
        self._ids.trace_id = spec.trace_id
        self._ids.span_id = spec.span_id
        span = self._tracer.start_span(
            spec.name,
            context=context,
            kind=_KINDS.get(spec.kind, SpanKind.INTERNAL),
            attributes=spec.attributes,
            start_time=spec.start_ns,
            record_exception=False,
            set_status_on_exception=False,
        )
        if not span.is_recording():
            # OTEL_SDK_DISABLED=true: nothing will be exported, so nothing would ever be acked.
            self._wrapper.forget(spec)
            _call_ack(self._on_ack, [spec.key], True)
            return
        for event in spec.events:
            span.add_event(event.name, event.attributes, event.time_ns)
        if spec.error_type is not None:
            if ERROR_TYPE not in spec.attributes:
                span.set_attribute(ERROR_TYPE, spec.error_type)
            span.set_status(Status(StatusCode.ERROR))
        span.end(spec.end_ns)

    def force_flush(self, timeout_s: float) -> bool:
        """Export everything queued now; True when it finished in time."""
        if self._provider is None or self._closed:
            return True
        return self._provider.force_flush(int(timeout_s * 1000))

    def shutdown(self) -> None:
        """Flush and stop the processor; idempotent. Spans still unacknowledged afterwards are acked False."""
        if self._closed:
            return
        self._closed = True
        if self._provider is None or self._wrapper is None:
            return
        try:
            self._provider.shutdown()
        except Exception:
            log.exception("tracer provider shutdown failed")
        _call_ack(self._on_ack, self._wrapper.take_all(), False)
