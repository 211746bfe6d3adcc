"""The OTLP metrics component: settings from `OTEL_*`, temporality, the exporter it builds, stepscope's own metrics
read from the registry, failed exports counted and logged once per episode, a bounded stop, and the pipeline
recording into Prometheus and OTLP once per commit."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter as GrpcExporter
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter as HttpExporter
from opentelemetry.sdk.metrics import Counter, Histogram, ObservableCounter, UpDownCounter
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    HistogramDataPoint,
    InMemoryMetricReader,
    MetricExporter,
    MetricExportResult,
    MetricsData,
)
from opentelemetry.sdk.resources import Resource
from prometheus_client import CollectorRegistry

from stepscope.commands.wiring import Seams, build, metric_settings
from stepscope.config import load
from stepscope.contract.vocabulary import DropReason
from stepscope.core.asyncstore import AsyncStore
from stepscope.core.pipeline import Pipeline
from stepscope.core.records import Commit, UnitRef
from stepscope.core.store import SqliteStore
from stepscope.export.episodes import SdkLogGate
from stepscope.export.otlp_metrics import (
    METRIC_LOGGERS,
    CountingExporter,
    FanOut,
    MetricSettings,
    OtlpMetrics,
    build_metric_exporter,
    temporality_preference,
)
from stepscope.export.prometheus import PrometheusMetrics
from stepscope.export.selfmetrics import API_BUCKETS, LAG_BUCKETS, SelfMetrics
from stepscope.mapping.attributes import MappingOptions
from stepscope.protocols.assistants.mapper import AssistantsMapper
from stepscope.protocols.assistants.observations import step_observations
from stepscope.protocols.assistants.records import Usage
from stepscope.testing import FakeClock
from tests.kit.fakes import Counters
from tests.kit.samples import make_run, make_step
from tests.kit.waits import holds_within

pytestmark = pytest.mark.anyio
RESOURCE = Resource.create({"service.name": "stepscope-test"})
_C, _D = AggregationTemporality.CUMULATIVE, AggregationTemporality.DELTA


class ScriptedExporter(MetricExporter):
    """A real `MetricExporter` that answers as told: `ok` False refuses, `hang` blocks until released."""

    def __init__(self) -> None:
        super().__init__()
        self.ok = False
        self.exports = 0
        self.hang = threading.Event()
        self.release = threading.Event()

    def export(self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any) -> MetricExportResult:
        self.exports += 1
        if self.hang.is_set():
            self.release.wait(30)
        return MetricExportResult.SUCCESS if self.ok else MetricExportResult.FAILURE

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return True

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        self.release.set()


def _component(registry: CollectorRegistry, health: SelfMetrics, **kw: Any) -> OtlpMetrics:
    settings = MetricSettings(exporter="otlp", interval_ms=kw.pop("interval_ms", 50), temporality="cumulative")
    return OtlpMetrics(settings, resource=RESOURCE, registry=registry, health=health, **kw)


def _failures(registry: CollectorRegistry) -> float:
    return registry.get_sample_value("stepscope_metric_export_failures_total") or 0.0


def test_settings_fall_back_to_the_generic_otlp_variables() -> None:
    """Each OTEL_EXPORTER_OTLP_METRICS_* falls back to its OTEL_EXPORTER_OTLP_* variable, HTTP appends /v1/metrics to
    the base endpoint, and the headers never show in the settings' repr."""
    env = {
        "OPENAI_API_KEY": "k",
        "OTEL_METRICS_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318/",
        "OTEL_EXPORTER_OTLP_HEADERS": "api-key=s3cret",
        "OTEL_SEMCONV_STABILITY_OPT_IN": "http, gen_ai_latest_experimental",
        "OTEL_METRIC_EXPORT_INTERVAL": "5000",
        "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE": "Delta",
    }
    settings = metric_settings(load(env=env))
    assert (settings.exporter, settings.url, settings.protocol) == ("otlp", "http://c:4318/v1/metrics", "http/protobuf")
    assert (settings.interval_ms, settings.timeout_ms, settings.temporality) == (5000.0, 10_000.0, "delta")
    assert settings.latest_experimental
    assert settings.headers == "api-key=s3cret" and "s3cret" not in repr(settings)
    env |= {"OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": "http://m:9/x", "OTEL_EXPORTER_OTLP_METRICS_HEADERS": "a=b",
            "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL": "grpc"}  # fmt: skip
    settings = metric_settings(load(env=env))
    assert (settings.url, settings.protocol, settings.headers) == ("http://m:9/x", "grpc", "a=b")
    assert not metric_settings(load(env={"OPENAI_API_KEY": "k"})).latest_experimental
    assert metric_settings(load(env={"OPENAI_API_KEY": "k"})).exporter == "none"
    assert MetricSettings(protocol="grpc", endpoint="http://c:4317").url == "http://c:4317"


def test_a_bad_temporality_is_a_configuration_error() -> None:
    """An unknown temporality preference or metrics exporter names its variable."""
    with pytest.raises(Exception, match="OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE"):
        load(env={"OPENAI_API_KEY": "k", "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE": "sometimes"})
    with pytest.raises(Exception, match="OTEL_METRICS_EXPORTER"):
        load(env={"OPENAI_API_KEY": "k", "OTEL_METRICS_EXPORTER": "prometheus"})


def test_temporality_preferences_follow_the_specification() -> None:
    """cumulative is cumulative throughout; delta makes counters, observable counters and histograms delta;
    lowmemory only the synchronous counters and histograms; up-down counters stay cumulative."""
    assert set(temporality_preference("cumulative").values()) == {_C}
    delta, low = temporality_preference("delta"), temporality_preference("lowmemory")
    assert (delta[Counter], delta[ObservableCounter], delta[Histogram], delta[UpDownCounter]) == (_D, _D, _D, _C)
    assert (low[Counter], low[ObservableCounter], low[Histogram], low[UpDownCounter]) == (_D, _C, _D, _C)
    with pytest.raises(ValueError, match="temporality"):
        temporality_preference("sometimes")


def test_the_exporter_follows_protocol_and_temporality() -> None:
    """http/protobuf builds the SDK's HTTP exporter on the full metrics URL, grpc the gRPC one, each with the
    temporality asked for; an unknown protocol is a ValueError."""
    http = build_metric_exporter(MetricSettings(endpoint="http://c:4318", temporality="delta"))
    assert isinstance(http, HttpExporter)
    assert http._endpoint == "http://c:4318/v1/metrics"
    assert (http._preferred_temporality or {})[Counter] is _D
    assert isinstance(build_metric_exporter(MetricSettings(protocol="grpc", endpoint="http://c:4317")), GrpcExporter)
    with pytest.raises(ValueError, match="protocol"):
        build_metric_exporter(MetricSettings(protocol="http/json"))


async def test_self_metrics_are_read_from_the_registry() -> None:
    """stepscope's own counters and gauges reach OTLP with the values and labels /metrics shows."""
    registry, reader = CollectorRegistry(), InMemoryMetricReader()
    health = SelfMetrics(registry, version="9.9", endpoints=("list_runs",))
    health.dropped(DropReason.LABEL_CAP, 3)
    health.observe_request("list_runs", "429", 0.1)
    health.set_tracked_runs_source(lambda: 7)
    component = _component(registry, health, reader=reader)
    await component.start()
    points = {(name, tuple(sorted(attrs.items()))): point.value for name, attrs, point in _points(reader)}
    assert points[("stepscope.dropped", (("reason", "label_cap"),))] == 3
    assert points[("stepscope.api.requests", (("code", "429"), ("endpoint", "list_runs")))] == 1
    assert points[("stepscope.tracked_runs", ())] == 7
    assert points[("stepscope.build_info", (("version", "9.9"),))] == 1
    data = reader.get_metrics_data()
    assert data is not None
    assert dict(data.resource_metrics[0].resource.attributes)["service.name"] == "stepscope-test"
    await component.stop(1.0)


async def test_the_health_histograms_reach_otlp_as_they_are_observed() -> None:
    """API request durations (by endpoint) and export lags observed while the component runs reach OTLP as
    histograms with the /metrics buckets, in seconds; one observed before its start stays on /metrics only, and
    after its stop observing still works."""
    registry, reader = CollectorRegistry(), InMemoryMetricReader()
    health = SelfMetrics(registry, version="9.9", endpoints=("list_runs",))
    component = _component(registry, health, reader=reader)
    health.mirror_to(component)
    health.observe_request("list_runs", "200", 0.2)
    await component.start()
    health.observe_request("list_runs", "200", 0.3)
    health.observe_request("list_runs", "error", 7.0)
    health.observe_export_lag(12.0)
    data = reader.get_metrics_data()
    assert data is not None
    metrics = {m.name: m for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics}
    await component.stop(1.0)
    health.observe_request("list_runs", "200", 0.1)
    health.observe_export_lag(1.0)
    requests, lag = metrics["stepscope.api.request.duration"], metrics["stepscope.export.lag"]
    (request_point,), (lag_point,) = requests.data.data_points, lag.data.data_points
    assert isinstance(request_point, HistogramDataPoint) and isinstance(lag_point, HistogramDataPoint)
    assert (requests.unit, lag.unit) == ("s", "s")
    assert dict(request_point.attributes or {}) == {"endpoint": "list_runs"}
    assert request_point.count == 2 and request_point.sum == pytest.approx(7.3)
    assert tuple(request_point.explicit_bounds) == API_BUCKETS
    assert (lag_point.count, lag_point.sum, tuple(lag_point.explicit_bounds)) == (1, 12.0, LAG_BUCKETS)
    assert registry.get_sample_value("stepscope_api_request_duration_seconds_count", {"endpoint": "list_runs"}) == 4
    assert registry.get_sample_value("stepscope_export_lag_seconds_count") == 2


async def test_failed_exports_are_counted_and_logged_once_per_episode(caplog: pytest.LogCaptureFixture) -> None:
    """Every refused export counts in stepscope_metric_export_failures_total; the log says once that exports fail
    and once that they recovered, however many attempts fell in between."""
    registry = CollectorRegistry()
    exporter = ScriptedExporter()
    component = _component(registry, SelfMetrics(registry, version="0"), exporter=exporter)
    with caplog.at_level(logging.INFO, logger="stepscope.otlp_metrics"):
        await component.start()
        assert _wait(lambda: _failures(registry) >= 4)
        exporter.ok = True
        assert _wait(lambda: "recovered" in caplog.text)
        await component.stop(1.0)
    messages = [r.getMessage() for r in caplog.records if r.name == "stepscope.otlp_metrics"]
    assert sum("failing" in m for m in messages) == 1
    assert sum("recovered" in m for m in messages) == 1
    assert _failures(registry) >= 4


def test_an_outage_is_one_line_a_minute_with_the_attempts_as_for_spans(caplog: pytest.LogCaptureFixture) -> None:
    """As span delivery does: a line at the first refused export with the SDK exporter's reason, none more within
    the minute, one after it counting the attempts since the first line, and one when exports recover."""
    clock, registry, inner = FakeClock(), CollectorRegistry(), ScriptedExporter()
    gate = SdkLogGate(METRIC_LOGGERS)
    exporter = CountingExporter(inner, SelfMetrics(registry, version="0"), temporality="cumulative", where="x",
                                gate=gate, monotonic=clock.monotonic)  # fmt: skip
    data = MetricsData(resource_metrics=[])
    sdk = logging.getLogger(next(iter(METRIC_LOGGERS)))
    gate.attach()
    try:
        with caplog.at_level(logging.INFO):
            for _ in range(6):  # the SDK exporter logs its reason on its own logger before it returns
                sdk.error("Failed to export %s batch code: %s, reason: %s", "metrics", 503, "Service Unavailable")
                exporter.export(data)
                clock.advance(12)
            inner.ok = True
            exporter.export(data)
    finally:
        gate.detach()
    assert [r.getMessage() for r in caplog.records] == [
        "OTLP metric export to x failing (HTTP 503 Service Unavailable); retried every interval (the next export "
        "carries the totals)",
        "OTLP metric export to x failing: 5 attempts in the last 1m00s (HTTP 503 Service Unavailable)",
        "OTLP metric export to x recovered after 1m12s (6 attempts failed)",
    ]
    assert _failures(registry) == 6


async def test_stop_abandons_a_hung_export_within_its_budget() -> None:
    """A backend that never answers holds stop no longer than its budget; observations after stop are ignored."""
    registry = CollectorRegistry()
    exporter = ScriptedExporter()
    exporter.hang.set()
    component = _component(registry, SelfMetrics(registry, version="0"), exporter=exporter)
    await component.start()
    assert _wait(lambda: exporter.exports >= 1)
    started = time.monotonic()
    await component.stop(0.3)
    assert time.monotonic() - started < 1.5
    component.record(
        step_observations(make_run(), make_step(usage=Usage(1, 1, 2)))
    )  # after stop: nothing to record into, and no error
    await component.stop(0.3)  # idempotent


async def test_the_pipeline_counts_a_commit_once_in_both_sinks(tmp_path: Path) -> None:
    """Through FanOut the pipeline records a durable commit into Prometheus and OTLP alike, and a commit the store
    refuses into neither."""
    registry, reader = CollectorRegistry(), InMemoryMetricReader()
    component = _component(registry, SelfMetrics(registry, version="0"), reader=reader)
    await component.start()
    store = SqliteStore(str(tmp_path / "state.db"))
    store.open()
    sink = FanOut(PrometheusMetrics(registry), component)
    pipeline = Pipeline(AsyncStore(store), AssistantsMapper(MappingOptions()), sink, Counters())
    run, step = make_run(), make_step(usage=Usage(11, 4, 15))
    ref = UnitRef("thread_1", "run_1")
    assert await pipeline.commit(Commit(ref, run, (step,), (step.id,), cursor=step.id))
    store.close()  # the next commit cannot be written
    assert not await pipeline.commit(Commit(ref, run, (), (), finish="Helper", finished=True))
    assert registry.get_sample_value("stepscope_tokens_total", _token_labels("input")) == 11
    points = list(_points(reader))
    tokens = [p.value for name, attrs, p in points if name == "stepscope.tokens" and attrs["token_type"] == "input"]
    runs = [name for name, _, _ in points if name == "stepscope.runs"]
    assert tokens == [11]
    assert runs == [] and registry.get_sample_value("stepscope_runs_total", _run_labels()) is None
    await component.stop(1.0)


def test_wiring_adds_the_component_only_when_asked(tmp_path: Path) -> None:
    """Without OTEL_METRICS_EXPORTER the pipeline records into Prometheus alone; with it (or a metric reader seam)
    the OTLP component is built beside it, nothing started."""
    env = {"OPENAI_API_KEY": "k", "STEPSCOPE_STATE": str(tmp_path / "s.db"), "STEPSCOPE_THREADS": "thread_1"}
    assert build(load(env=env)).otlp_metrics is None
    built = build(load(env={**env, "OTEL_METRICS_EXPORTER": "otlp"}))
    assert built.otlp_metrics is not None and built.otlp_metrics.settings.exporter == "otlp"
    assert build(load(env=env), Seams(metric_reader=InMemoryMetricReader())).otlp_metrics is not None


def _points(reader: InMemoryMetricReader) -> list[tuple[str, dict[str, Any], Any]]:
    """(metric name, attributes, data point) of everything `reader` collects now."""
    data = reader.get_metrics_data()
    return [
        (m.name, dict(p.attributes or {}), p)
        for rm in (data.resource_metrics if data is not None else ())
        for sm in rm.scope_metrics
        for m in sm.metrics
        for p in m.data.data_points
    ]


def _wait(predicate: Any, timeout: float = 5.0) -> bool:
    return holds_within(predicate, timeout, every=0.01)


def _token_labels(token_type: str) -> dict[str, str]:
    return {"token_type": token_type, "step_type": "message_creation", "model": "gpt-4o", "assistant_id": "asst_1",
            "protocol": "assistants"}  # fmt: skip


def _run_labels() -> dict[str, str]:
    return {"status": "completed", "model": "gpt-4o", "assistant_id": "asst_1", "protocol": "assistants"}
