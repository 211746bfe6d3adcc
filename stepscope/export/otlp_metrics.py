"""Metrics over OTLP, opt-in (`OTEL_METRICS_EXPORTER=otlp`): the SDK's `MeterProvider` beside /metrics.

`OtlpMetrics` is a lifecycle `Component`. `start()` builds a public-API `MeterProvider` with the trace resource
(`export.otlp.build_resource`) and one `PeriodicExportingMetricReader` around the SDK's OTLP metric exporter (HTTP
or gRPC, the temporality `OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE` asks for), then the instruments:
`GenAiMetrics` (`export/genai_metrics.py`), fed through `record` with the same observations as the Prometheus sink
right after the same commit (`FanOut`), and observable instruments that read stepscope's own counters and gauges
from the Prometheus registry at each collection (`SELF_INSTRUMENTS`), so both paths report the same numbers, and the
two health histograms, recorded as `SelfMetrics` observes them (`api_request`, `export_lag`).

A metrics backend that is down, slow or refusing never blocks anything else: the reader collects and exports on
its own daemon thread, each export bounded by `timeout_ms` (retries included), while `record` only updates
in-memory aggregations (one per attribute set, bounded by the label caps and the SDK's cardinality limit). A
failed export is counted (`stepscope_metric_export_failures_total`) and told as span delivery tells its failures
(`export/episodes.py`): one line when exports start failing, at most one a minute while they fail, one when they
recover, and none of the SDK exporter's own lines. With cumulative temporality the next successful export carries
the totals, so an outage loses nothing; with delta, each failed export's increments are lost (never sent twice).
`stop(budget_s)` makes one last export and shuts the provider down within `min(budget_s, STOP_BUDGET_S)`,
abandoning a hung export to its daemon thread.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from opentelemetry.metrics import CallbackOptions, Meter
from opentelemetry.metrics import Observation as Measurement
from opentelemetry.sdk.metrics import (
    Counter,
    Histogram,
    MeterProvider,
    ObservableCounter,
    ObservableGauge,
    ObservableUpDownCounter,
    UpDownCounter,
)
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    MetricExporter,
    MetricExportResult,
    MetricReader,
    MetricsData,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.metrics.view import View
from opentelemetry.sdk.resources import Resource
from prometheus_client import CollectorRegistry

from stepscope import __version__
from stepscope.contract import metricdefs as md
from stepscope.core.records import KnownLabels, MetricSink, Observation
from stepscope.export.episodes import ANY_RECORD, Episode, SdkLogGate, attempts, lasted
from stepscope.export.genai_metrics import GenAiMetrics, Instrument, make_instrument
from stepscope.export.otlp import parse_headers
from stepscope.export.selfmetrics import API_BUCKETS, LAG_BUCKETS

log = logging.getLogger("stepscope.otlp_metrics")

STOP_BUDGET_S = 2.0
"""Seconds the final export and shutdown may take of the sidecar's stop budget; span delivery gets the rest."""
TEMPORALITIES = ("cumulative", "delta", "lowmemory")
METRIC_LOGGERS = {
    "opentelemetry.exporter.otlp.proto.http.metric_exporter": ANY_RECORD,
    "opentelemetry.exporter.otlp.proto.grpc.metric_exporter": ANY_RECORD,
    "opentelemetry.exporter.otlp.proto.grpc.exporter": frozenset({"metrics"}),
}
"""The SDK metric exporters' loggers, for `SdkLogGate`: the gRPC exporters share the last one, naming the signal."""
_C, _D = AggregationTemporality.CUMULATIVE, AggregationTemporality.DELTA

SELF_INSTRUMENTS: dict[str, Instrument] = {
    d.name: Instrument(name, d.kind, unit, d.help, (), d.name)
    for d, name, unit in (
        (md.API_REQUESTS, "stepscope.api.requests", "{request}"),
        (md.DROPPED, "stepscope.dropped", "{item}"),
        (md.INVALID_OBJECTS, "stepscope.invalid_objects", "{object}"),
        (md.SPAN_EXPORT_FAILURES, "stepscope.span_export.failures", "{span}"),
        (md.METRIC_EXPORT_FAILURES, "stepscope.metric_export.failures", "{export}"),
        (md.TRACKED_RUNS, "stepscope.tracked_runs", "{run}"),
        (md.SPAN_BACKLOG, "stepscope.span_backlog", "{span}"),
        (md.SPAN_BACKLOG_AGE, "stepscope.span_backlog.age", "s"),
        (md.LAST_SUCCESSFUL_POLL, "stepscope.last_successful_poll.timestamp", "s"),
        (md.BUILD_INFO, "stepscope.build_info", ""),
    )
}
"""Self `MetricDef` name -> the observable instrument that reads it from the registry."""
API_REQUEST_DURATION = Instrument("stepscope.api.request.duration", "histogram", "s", md.API_REQUEST_DURATION.help,
                                  API_BUCKETS, md.API_REQUEST_DURATION.name)  # fmt: skip
EXPORT_LAG = Instrument("stepscope.export.lag", "histogram", "s", md.EXPORT_LAG.help, LAG_BUCKETS, md.EXPORT_LAG.name)
"""The two self histograms, recorded as `SelfMetrics` observes them (`HealthHistograms`): an observable instrument
cannot carry a histogram. They count from this component's start: the start-up credential check's request is on
/metrics only."""


@dataclass(frozen=True, slots=True, kw_only=True)
class MetricSettings:
    """What `config/settings.py` resolved from the `OTEL_*` metric variables.

    - `exporter`: `OTEL_METRICS_EXPORTER`, `otlp` or `none` (the default: /metrics alone).
    - `protocol`: `OTEL_EXPORTER_OTLP_METRICS_PROTOCOL`, else `OTEL_EXPORTER_OTLP_PROTOCOL`.
    - `metrics_endpoint`: `OTEL_EXPORTER_OTLP_METRICS_ENDPOINT`, used as is; else `endpoint`
      (`OTEL_EXPORTER_OTLP_ENDPOINT`), a base URL to which HTTP appends `/v1/metrics`; else the SDK's default.
    - `headers`: `OTEL_EXPORTER_OTLP_METRICS_HEADERS`, else `OTEL_EXPORTER_OTLP_HEADERS` (`k=v,...` or parsed).
    - `interval_ms` (`OTEL_METRIC_EXPORT_INTERVAL`), `timeout_ms` (`OTEL_METRIC_EXPORT_TIMEOUT`, each export with
      its retries), `temporality` (`OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE`).
    - `latest_experimental`: `OTEL_SEMCONV_STABILITY_OPT_IN` names `gen_ai_latest_experimental`.
    - `label_cap`, `max_series`: the Prometheus sink's bounds, applied here too.
    """

    exporter: str = "none"
    protocol: str = "http/protobuf"
    metrics_endpoint: str | None = None
    endpoint: str | None = None
    headers: Mapping[str, str] | str = field(default_factory=dict)
    interval_ms: float = 60_000.0
    timeout_ms: float = 10_000.0
    temporality: str = "cumulative"
    latest_experimental: bool = False
    label_cap: int = 100
    max_series: int = 2000

    @property
    def url(self) -> str | None:
        """Where exports go: the metrics endpoint, or the base endpoint (with `/v1/metrics` over HTTP)."""
        if self.metrics_endpoint:
            return self.metrics_endpoint
        if self.endpoint and self.protocol.startswith("http"):
            return f"{self.endpoint.removesuffix('/')}/v1/metrics"
        return self.endpoint

    def __repr__(self) -> str:
        # Headers usually carry an API key: never print them.
        return (
            f"MetricSettings(exporter={self.exporter!r}, protocol={self.protocol!r}, url={self.url!r}, "
            f"headers={'***' if self.headers else ''!r}, interval_ms={self.interval_ms!r}, "
            f"temporality={self.temporality!r}, latest_experimental={self.latest_experimental!r})"
        )


def temporality_preference(name: str) -> dict[type, AggregationTemporality]:
    """Instrument class -> temporality, as the specification defines each preference: `cumulative` for all;
    `delta` for counters, observable counters and histograms; `lowmemory` for synchronous counters and histograms
    only. Up-down counters and gauges stay cumulative. ValueError for anything else."""
    choice = name.strip().lower()
    if choice not in TEMPORALITIES:
        raise ValueError(f"unsupported temporality preference {name!r}")
    delta = {"cumulative": (), "delta": (Counter, ObservableCounter, Histogram), "lowmemory": (Counter, Histogram)}
    kinds = (Counter, UpDownCounter, Histogram, ObservableCounter, ObservableUpDownCounter, ObservableGauge)
    return {kind: _D if kind in delta[choice] else _C for kind in kinds}


def build_metric_exporter(settings: MetricSettings) -> MetricExporter:
    """The SDK's OTLP metric exporter `settings` ask for (`timeout_ms` bounds each export, retries included).
    ValueError for an unknown protocol (config validation should have caught it)."""
    raw = settings.headers
    headers = (parse_headers(raw) if isinstance(raw, str) else dict(raw)) or None
    temporality = temporality_preference(settings.temporality)
    timeout = settings.timeout_ms / 1000
    protocol = settings.protocol.strip().lower()
    if protocol in ("http/protobuf", "http"):
        # Lazy: each exporter pulls in its transport stack (requests or grpcio); load only the one in use.
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter as Http  # noqa: PLC0415

        return Http(endpoint=settings.url, headers=headers, timeout=timeout, preferred_temporality=temporality)
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter as Grpc  # noqa: PLC0415

        return Grpc(endpoint=settings.url, headers=headers, timeout=timeout, preferred_temporality=temporality)
    raise ValueError(f"unsupported OTLP protocol {settings.protocol!r}")


class ExportHealth(Protocol):
    """Where failed exports are counted (`SelfMetrics.metric_export_failed`). Must not block or raise."""

    def metric_export_failed(self, n: int = 1) -> None: ...


class CountingExporter(MetricExporter):
    """Wraps an exporter: counts each failed export on `health`, tells failure episodes in a few lines (the first
    failure, at most one line a minute with the attempts since the last, the recovery) with the reason the SDK
    exporter's own records gave (`gate`, which keeps them off the log), and never raises. `failing` is the current
    episode's state; `monotonic` times the lines."""

    def __init__(
        self,
        inner: MetricExporter,
        health: ExportHealth,
        *,
        temporality: str,
        where: str,
        gate: SdkLogGate | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(preferred_temporality=temporality_preference(temporality))
        self._inner = inner
        self._health = health
        self._where = where
        self._gate = gate
        self._episode = Episode(clock=monotonic)
        self._delta = temporality.strip().lower() != "cumulative"

    @property
    def failing(self) -> bool:
        return self._episode.failing

    def export(self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any) -> MetricExportResult:
        raised = None
        try:
            result = self._inner.export(metrics_data, timeout_millis=timeout_millis, **kwargs)
        except Exception as exc:  # an exporter bug must not stop the reader's thread
            log.debug("metric exporter raised: %s", exc, exc_info=exc)
            result, raised = MetricExportResult.FAILURE, type(exc).__name__
        reason = self._gate.take() if self._gate is not None else None
        if result is MetricExportResult.SUCCESS:
            recovery = self._episode.succeeded()
            if recovery is not None:
                log.info("OTLP metric export to %s recovered after %s (%s failed)", self._where,
                         lasted(recovery.seconds), attempts(recovery.attempts))  # fmt: skip
            return result
        self._health.metric_export_failed()
        report = self._episode.failed(reason or raised)
        if report is not None:
            why = f" ({report.reason})" if report.reason else ""
            if report.first:
                lost = (
                    "each failed export's increments are lost" if self._delta else "the next export carries the totals"
                )
                log.warning("OTLP metric export to %s failing%s; retried every interval (%s)", self._where, why, lost)
            else:
                log.warning("OTLP metric export to %s failing: %s in the last %s%s", self._where,
                            attempts(report.attempts), lasted(report.seconds), why)  # fmt: skip
        return result

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return self._inner.force_flush(timeout_millis=timeout_millis)

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        self._inner.shutdown(timeout_millis=timeout_millis, **kwargs)


class FanOut:
    """A `MetricSink` recording every batch into each of `sinks` in order; one sink's failure never reaches the
    others or the caller."""

    def __init__(self, *sinks: MetricSink) -> None:
        self._sinks = sinks

    def record(self, observations: Sequence[Observation]) -> None:
        for sink in self._sinks:
            try:
                sink.record(observations)
            except Exception:  # sinks must not raise; this keeps the pipeline whole if one does
                log.exception("metric sink %s failed", type(sink).__name__)


class OtlpMetrics:
    """The component of the module docstring. `reader` replaces the periodic reader and its exporter (tests use
    the SDK's `InMemoryMetricReader`); `exporter` replaces only the OTLP exporter. `registry` is the Prometheus
    registry the self metrics are read from; `health` counts failed exports."""

    name = "otlp metrics"

    def __init__(
        self,
        settings: MetricSettings,
        *,
        resource: Resource,
        registry: CollectorRegistry,
        health: ExportHealth,
        labels: Sequence[KnownLabels] = (),
        exporter: MetricExporter | None = None,
        reader: MetricReader | None = None,
    ) -> None:
        self.settings = settings
        self._resource = resource
        self._registry = registry
        self._health = health
        self._labels = tuple(labels)
        self._exporter = exporter
        self._reader = reader
        self._provider: MeterProvider | None = None
        self._counting: CountingExporter | None = None
        self._gate: SdkLogGate | None = None
        self._metrics: GenAiMetrics | None = None
        self._health_histograms: tuple[Any, Any] | None = None  # API request duration, export lag
        self._stopped = False

    def record(self, observations: Sequence[Observation]) -> None:
        """The component as a `MetricSink` (for `FanOut`): into the instruments once started. Before `start` and
        after `stop` there are none and observations are left out: the sidecar starts this component before the
        poller and stops it after, so every commit falls in between."""
        if self._metrics is not None:
            self._metrics.record(observations)

    def api_request(self, endpoint: str, seconds: float) -> None:
        """`HealthHistograms`: one API request's duration, while started."""
        if (histograms := self._health_histograms) is not None:
            histograms[0].record(seconds, {md.LABEL_ENDPOINT: endpoint})

    def export_lag(self, seconds: float) -> None:
        """`HealthHistograms`: one span's export lag, while started."""
        if (histograms := self._health_histograms) is not None:
            histograms[1].record(seconds)

    async def start(self) -> None:
        """Build the provider, reader and instruments; the reader's thread starts exporting every interval."""
        if self._provider is not None or self._stopped:
            return
        settings = self.settings
        reader = self._reader
        if reader is None:
            inner = self._exporter if self._exporter is not None else build_metric_exporter(settings)
            where = settings.url or "the SDK's default endpoint"
            self._gate = SdkLogGate(METRIC_LOGGERS)
            self._gate.attach()
            self._counting = CountingExporter(inner, self._health, temporality=settings.temporality, where=where,
                                              gate=self._gate)  # fmt: skip
            reader = PeriodicExportingMetricReader(
                self._counting, export_interval_millis=settings.interval_ms, export_timeout_millis=settings.timeout_ms
            )
            log.info("exporting metrics over OTLP (%s) to %s every %gs, %s temporality", settings.protocol, where,
                     settings.interval_ms / 1000, settings.temporality)  # fmt: skip
        self._provider = MeterProvider(
            resource=self._resource, metric_readers=[reader], views=_views(settings.max_series), shutdown_on_exit=False
        )
        meter = self._provider.get_meter("stepscope", __version__)
        _observe_self_metrics(meter, self._registry)
        self._health_histograms = (make_instrument(meter, API_REQUEST_DURATION), make_instrument(meter, EXPORT_LAG))
        self._metrics = GenAiMetrics(meter, label_cap=settings.label_cap, labels=self._labels,
                                     latest_experimental=settings.latest_experimental)  # fmt: skip

    async def stop(self, budget_s: float = STOP_BUDGET_S) -> None:
        """One last export of what was recorded, then shut down, within `min(budget_s, STOP_BUDGET_S)`. Idempotent,
        safe without `start`."""
        self._stopped = True
        self._metrics = None
        self._health_histograms = None
        provider, self._provider = self._provider, None
        if provider is None:
            return
        budget = max(0.05, min(budget_s, STOP_BUDGET_S))
        done = threading.Event()

        def shut() -> None:
            try:
                provider.shutdown(timeout_millis=budget * 1000)
            except Exception as exc:
                log.warning("stopping the OTLP metric export failed: %s", exc)
            finally:
                done.set()

        # A daemon thread, so an export hung past the budget never holds the process at exit.
        threading.Thread(target=shut, name="otlp-metrics-stop", daemon=True).start()
        if not await asyncio.to_thread(done.wait, budget):
            log.warning("the final OTLP metric export did not finish in %.1fs; abandoning it", budget)
        if self._gate is not None:
            self._gate.detach()


def _views(max_series: int) -> list[View]:
    """A cardinality limit of `max_series` attribute sets per instrument where the installed SDK supports one (1.45
    does); older SDKs have none, and the label caps alone bound the attribute sets."""
    try:
        return [View(instrument_name="*", aggregation_cardinality_limit=max_series)]
    except TypeError:
        return []


def _observe_self_metrics(meter: Meter, registry: CollectorRegistry) -> None:
    """One observable instrument per `SELF_INSTRUMENTS` entry, reading its family from `registry` when collected."""
    for metric, instrument in SELF_INSTRUMENTS.items():
        callback = _reader_of(registry, metric)
        if instrument.kind == "counter":
            meter.create_observable_counter(instrument.name, [callback], instrument.unit, instrument.description)
        else:
            meter.create_observable_gauge(instrument.name, [callback], instrument.unit, instrument.description)


def _reader_of(registry: CollectorRegistry, metric: str) -> Callable[[CallbackOptions], Iterable[Measurement]]:
    def read(options: CallbackOptions) -> Iterable[Measurement]:
        out = []
        for family in registry.restricted_registry([metric]).collect():
            out += [Measurement(s.value, dict(s.labels)) for s in family.samples if s.name == metric]
        return out

    return read
