"""Test doubles shipped in the package: an exporter and a metric sink that record, a fake clock, a real OTLP receiver.

`OtlpReceiver` is a real OTLP/HTTP server on 127.0.0.1 (and optionally OTLP/gRPC) that decodes what an exporter
sends into plain `ReceivedSpan` records (`/v1/traces`) and `ReceivedPoint` records (`/v1/metrics`), so tests can
check exported spans and metrics over the wire without a collector.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from stepscope.core.records import Observation
from stepscope.simulator.scenario import ManualClock

_KIND_NAMES = {0: "unspecified", 1: "internal", 2: "server", 3: "client", 4: "producer", 5: "consumer"}
_STATUS_NAMES = {0: "unset", 1: "ok", 2: "error"}
_TEMPORALITIES = {0: "unspecified", 1: "delta", 2: "cumulative"}


class RecordingSpanExporter(SpanExporter):
    """An SDK `SpanExporter` that keeps every span it accepts.

    Set `fail = True` to refuse batches (FAILURE, nothing kept). `batches` counts export calls, accepted or not.
    """

    def __init__(self) -> None:
        self.fail = False
        self.spans: list[ReadableSpan] = []
        self.batches = 0
        self.closed = False
        self._lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        with self._lock:
            self.batches += 1
            if self.fail or self.closed:
                return SpanExportResult.FAILURE
            self.spans.extend(spans)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        self.closed = True

    def names(self) -> list[str]:
        with self._lock:
            return [span.name for span in self.spans]


class RecordingMetricSink:
    """`MetricSink` that keeps every observation."""

    def __init__(self) -> None:
        self.observations: list[Observation] = []

    def record(self, observations: Sequence[Observation]) -> None:
        self.observations.extend(observations)

    def total(self, metric: str, **labels: str) -> float:
        """Sum of values recorded for `metric` whose labels include `labels`."""
        return sum(
            o.value
            for o in self.observations
            if o.metric == metric and all(o.labels.get(k) == v for k, v in labels.items())
        )


FakeClock = ManualClock
"""`Clock` whose time moves only with `advance()`: the simulator's `ManualClock`, so one fake clock (with `time()`,
`now()`, `monotonic()` and `advance()`) drives both the bridge and the simulated server."""


@dataclass(frozen=True, slots=True)
class ReceivedSpan:
    """One span as an OTLP receiver decoded it. Ids are lowercase hex; `parent_span_id` is "" for a root."""

    trace_id: str
    span_id: str
    parent_span_id: str
    name: str
    kind: str
    start_ns: int
    end_ns: int
    attributes: dict[str, Any]
    status: str
    events: tuple[tuple[str, int, dict[str, Any]], ...] = ()
    resource: dict[str, Any] = field(default_factory=dict)
    flags: int = 0


def _value(v: AnyValue) -> Any:
    which = v.WhichOneof("value")
    if which == "array_value":
        return [_value(x) for x in v.array_value.values]
    if which == "kvlist_value":
        return {kv.key: _value(kv.value) for kv in v.kvlist_value.values}
    return getattr(v, which) if which else None


def _attrs(kvs: Any) -> dict[str, Any]:
    return {kv.key: _value(kv.value) for kv in kvs}


def decode_request(body: bytes) -> list[ReceivedSpan]:
    """Every span in a serialized `ExportTraceServiceRequest`."""
    request = trace_service_pb2.ExportTraceServiceRequest()
    request.ParseFromString(body)
    return _spans_of(request)


def _spans_of(request: trace_service_pb2.ExportTraceServiceRequest) -> list[ReceivedSpan]:
    out = []
    for rs in request.resource_spans:
        resource = _attrs(rs.resource.attributes)
        for ss in rs.scope_spans:
            for s in ss.spans:
                out.append(
                    ReceivedSpan(
                        trace_id=s.trace_id.hex(),
                        span_id=s.span_id.hex(),
                        parent_span_id=s.parent_span_id.hex(),
                        name=s.name,
                        kind=_KIND_NAMES.get(s.kind, str(s.kind)),
                        start_ns=s.start_time_unix_nano,
                        end_ns=s.end_time_unix_nano,
                        attributes=_attrs(s.attributes),
                        status=_STATUS_NAMES.get(s.status.code, str(s.status.code)),
                        events=tuple((e.name, e.time_unix_nano, _attrs(e.attributes)) for e in s.events),
                        resource=resource,
                        flags=s.flags,
                    )
                )
    return out


@dataclass(frozen=True, slots=True)
class ReceivedPoint:
    """One metric data point as an OTLP receiver decoded it, with its metric's name, unit and kind (`sum`,
    `histogram`, `gauge`). `value` is a sum's or gauge's value, or a histogram's sum; `temporality` is `cumulative`,
    `delta` or `""` (gauges); `exemplars` are `(trace_id, span_id)` in lowercase hex; `request` numbers the export
    request it came in (from 1)."""

    metric: str
    unit: str
    kind: str
    attributes: dict[str, Any]
    value: float
    temporality: str = ""
    monotonic: bool = False
    count: int = 0
    bounds: tuple[float, ...] = ()
    bucket_counts: tuple[int, ...] = ()
    exemplars: tuple[tuple[str, str], ...] = ()
    resource: dict[str, Any] = field(default_factory=dict)
    request: int = 0


def decode_metrics(body: bytes, request: int = 0) -> list[ReceivedPoint]:
    """Every data point in a serialized `ExportMetricsServiceRequest` (sums, histograms and gauges)."""
    message = metrics_service_pb2.ExportMetricsServiceRequest()
    message.ParseFromString(body)
    out = []
    for rm in message.resource_metrics:
        resource = _attrs(rm.resource.attributes)
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                kind = m.WhichOneof("data") or ""
                data = getattr(m, kind) if kind else None
                for p in data.data_points if data is not None else ():
                    which = p.WhichOneof("value") if kind != "histogram" else None
                    out.append(
                        ReceivedPoint(
                            metric=m.name,
                            unit=m.unit,
                            kind=kind,
                            attributes=_attrs(p.attributes),
                            value=float(p.sum if kind == "histogram" else getattr(p, which or "as_double")),
                            temporality=_TEMPORALITIES.get(getattr(data, "aggregation_temporality", -1), ""),
                            monotonic=bool(getattr(data, "is_monotonic", False)),
                            count=int(getattr(p, "count", 0)),
                            bounds=tuple(getattr(p, "explicit_bounds", ())),
                            bucket_counts=tuple(getattr(p, "bucket_counts", ())),
                            exemplars=tuple((e.trace_id.hex(), e.span_id.hex()) for e in p.exemplars),
                            resource=resource,
                            request=request,
                        )
                    )
    return out


class OtlpReceiver:
    """A real OTLP receiver on 127.0.0.1: HTTP (`POST /v1/traces`, protobuf) always, gRPC with `grpc=True`.

    `refuse_status` set (e.g. 503, or 400 for a non-retryable refusal) makes HTTP answer that status and gRPC
    answer UNAVAILABLE, without keeping the spans. `requests` counts export requests received, refused ones too.
    Metrics (`POST /v1/metrics`, HTTP only) land in `points`, their requests in `metric_requests`, refused alike.
    `port` chooses the HTTP port (0: any free one), so a receiver can come back where another one was.
    Use as a context manager, or call `start()` and `shutdown()`.
    """

    def __init__(self, *, grpc: bool = False, port: int = 0) -> None:
        self.spans: list[ReceivedSpan] = []
        self.points: list[ReceivedPoint] = []
        self.metric_requests = 0
        self._port = port
        self.requests = 0
        self.headers: list[dict[str, str]] = []
        self.refuse_status: int | None = None
        self._grpc_enabled = grpc
        self._cond = threading.Condition()
        self._http: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._grpc: Any = None
        self.grpc_port = 0

    @property
    def url(self) -> str:
        """The full traces URL, e.g. `http://127.0.0.1:41234/v1/traces`."""
        assert self._http is not None, "receiver not started"
        return f"http://127.0.0.1:{self._http.server_address[1]}/v1/traces"

    @property
    def metrics_url(self) -> str:
        """The full metrics URL, e.g. `http://127.0.0.1:41234/v1/metrics`."""
        return self.url.removesuffix("/v1/traces") + "/v1/metrics"

    @property
    def grpc_endpoint(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def _accept(self, spans: list[ReceivedSpan], headers: dict[str, str]) -> bool:
        with self._cond:
            self.requests += 1
            self.headers.append(headers)
            if self.refuse_status is not None:
                return False
            self.spans.extend(spans)
            self._cond.notify_all()
            return True

    def _accept_metrics(self, body: bytes) -> bool:
        with self._cond:
            self.metric_requests += 1
            points = decode_metrics(body, self.metric_requests)
            if self.refuse_status is not None:
                return False
            self.points.extend(points)
            self._cond.notify_all()
            return True

    def start(self) -> OtlpReceiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.path == "/v1/metrics":
                    try:
                        accepted = receiver._accept_metrics(body)
                    except Exception:
                        self._answer(400)
                        return
                    self._answer(200 if accepted else (receiver.refuse_status or 503), metrics=True)
                    return
                if self.path != "/v1/traces":
                    self._answer(404)
                    return
                try:
                    spans = decode_request(body)
                except Exception:
                    self._answer(400)
                    return
                ok = receiver._accept(spans, {k.lower(): v for k, v in self.headers.items()})
                self._answer(200 if ok else (receiver.refuse_status or 503))

            def _answer(self, status: int, *, metrics: bool = False) -> None:
                payload = b""
                if status == 200 and metrics:
                    payload = metrics_service_pb2.ExportMetricsServiceResponse().SerializeToString()
                elif status == 200:
                    payload = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
                self.send_response(status)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:
                return

        self._http = ThreadingHTTPServer(("127.0.0.1", self._port), Handler)
        self._http.daemon_threads = True
        self._thread = threading.Thread(target=self._http.serve_forever, name="otlp-receiver", daemon=True)
        self._thread.start()
        if self._grpc_enabled:
            self._start_grpc()
        return self

    def _start_grpc(self) -> None:
        import grpc  # type: ignore[import-untyped]  # noqa: PLC0415 - only gRPC tests pay for loading grpcio

        receiver = self

        class Servicer(trace_service_pb2_grpc.TraceServiceServicer):
            def Export(self, request: Any, context: Any) -> Any:  # noqa: N802 - generated service method name
                headers = {k: v for k, v in context.invocation_metadata() if isinstance(v, str)}
                if not receiver._accept(_spans_of(request), headers):
                    context.abort(grpc.StatusCode.UNAVAILABLE, "refused by test")
                return trace_service_pb2.ExportTraceServiceResponse()

        server = grpc.server(ThreadPoolExecutor(max_workers=2))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Servicer(), server)  # type: ignore[no-untyped-call]
        self.grpc_port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        self._grpc = server

    def wait_for(self, predicate: Callable[[list[ReceivedSpan]], bool], timeout: float = 5.0) -> bool:
        """Block until `predicate(spans)` holds or `timeout` seconds pass; returns whether it held."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(self.spans):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
            return True

    def wait_for_points(self, predicate: Callable[[list[ReceivedPoint]], bool], timeout: float = 5.0) -> bool:
        """Block until `predicate(points)` holds or `timeout` seconds pass; returns whether it held."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(self.points):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
            return True

    def wait_for_requests(self, n: int, timeout: float = 5.0) -> bool:
        """Block until at least `n` export requests arrived (accepted or refused)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.requests >= n:
                return True
            time.sleep(0.01)
        return self.requests >= n

    def by_name(self, name: str) -> ReceivedSpan:
        """The first received span with this name; KeyError when there is none."""
        for span in self.spans:
            if span.name == name:
                return span
        raise KeyError(name)

    def shutdown(self) -> None:
        """Stop both servers; safe to call twice or without `start()`."""
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
        if self._grpc is not None:
            self._grpc.stop(grace=None)
            self._grpc = None

    def __enter__(self) -> OtlpReceiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.shutdown()


async def eventually(predicate: Callable[[], bool], limit_s: float = 5.0, what: str = "the condition") -> None:
    """Poll `predicate` on the event loop every 5 ms until it holds; `AssertionError` naming `what` after `limit_s`."""
    deadline = time.monotonic() + limit_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {limit_s} s waiting for {what}")
        await asyncio.sleep(0.005)
