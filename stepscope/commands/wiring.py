"""The composition root: the only module that puts the engine, the exporters and a protocol together.

`resolve(config)` finds the protocol `STEPSCOPE_PROTOCOL` names in the registry and checks the configuration with
it (`ConfigError` for an unknown protocol or a setting it cannot use), so every command fails on a bad protocol
before it starts anything. `build(config, seams)` wires config -> API connection -> the protocol's instance ->
pipeline (with its mapper) -> reader -> poller -> the protocol's finders (discovery, proxy observer,
registrations, webhooks), around one checkpoint store, Prometheus metrics and the span backlog's delivery, and
returns them as a plain record, `Components`. It does no I/O: opening, checking and starting are the lifecycle's
(`sidecar.py`). `Seams` are what tests replace: the HTTP transport, the credential, the span exporter, the
metrics registry, the clock. With `OTEL_METRICS_EXPORTER=otlp` the pipeline records into Prometheus and the OTLP
metrics component both (`FanOut`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
from opentelemetry.sdk.metrics.export import MetricReader
from opentelemetry.sdk.trace.export import SpanExporter
from prometheus_client import CollectorRegistry

from stepscope import __version__, protocols
from stepscope.client.auth import Auth
from stepscope.client.connect import ApiConnection, connect
from stepscope.config import Config
from stepscope.core.asyncstore import AsyncStore
from stepscope.core.discovery import DiscoverySeams, DiscoverySettings
from stepscope.core.health import ApiHealth
from stepscope.core.pipeline import Pipeline
from stepscope.core.poller import Poller, PollSchedule
from stepscope.core.records import UnitReader
from stepscope.core.store import SqliteStore
from stepscope.core.supervision import Progress
from stepscope.errors import ConfigError
from stepscope.export.delivery import BacklogLimits, SpanDelivery
from stepscope.export.otlp import TraceSettings, build_resource, build_span_exporter
from stepscope.export.otlp_metrics import FanOut, MetricSettings, OtlpMetrics
from stepscope.export.prometheus import PrometheusMetrics
from stepscope.export.selfmetrics import SelfMetrics
from stepscope.protocols.base import ApiContext, Finders, ProtocolFactory, ProtocolInstance


@dataclass(frozen=True, slots=True, kw_only=True)
class Seams:
    """What a test may replace. `span_exporter` set wins over `OTEL_TRACES_EXPORTER`; `metric_reader` set turns
    OTLP metrics on with that reader instead of the periodic one (`OTEL_METRICS_EXPORTER`)."""

    registry: CollectorRegistry | None = None
    transport: httpx.AsyncBaseTransport | None = None
    auth: Auth | None = None
    span_exporter: SpanExporter | None = None
    metric_reader: MetricReader | None = None
    wall: Callable[[], float] = time.time


@dataclass(slots=True)
class Components:
    """Every part of one stepscope, built and wired, nothing started."""

    config: Config
    protocol: ProtocolFactory
    instance: ProtocolInstance
    registry: CollectorRegistry
    metrics: SelfMetrics
    store: AsyncStore
    api: ApiConnection
    health: ApiHealth
    delivery: SpanDelivery
    pipeline: Pipeline[Any, Any, Any]
    reader: UnitReader[Any]
    poller: Poller[Any]
    finders: Finders
    progress: Progress
    traces: bool
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    otlp_metrics: OtlpMetrics | None = None  # OTEL_METRICS_EXPORTER=otlp: a component fed beside Prometheus


def resolve(config: Config) -> ProtocolFactory:
    """The protocol `config` names, once it has checked the configuration; `ConfigError` otherwise."""
    factory = protocols.get(config.api.protocol)
    problems = factory.check(config)
    if problems:
        raise ConfigError(problems)
    return factory


def trace_settings(config: Config) -> TraceSettings:
    e = config.export
    return TraceSettings(
        exporter=e.traces_exporter,
        protocol=e.otlp_protocol,
        endpoint=e.otlp_endpoint,
        traces_endpoint=e.otlp_traces_endpoint,
        headers=str(e.otlp_headers),
        service_name=e.service_name,
        resource_attributes=e.resource_attributes,
        service_version=__version__,
        schedule_delay_ms=e.schedule_delay_ms,
    )


def metric_settings(config: Config) -> MetricSettings:
    """The OTLP metric settings, each `OTEL_EXPORTER_OTLP_METRICS_*` falling back to its `OTEL_EXPORTER_OTLP_*`."""
    e = config.export
    return MetricSettings(
        exporter=e.metrics_exporter,
        protocol=e.otlp_metrics_protocol or e.otlp_protocol,
        metrics_endpoint=e.otlp_metrics_endpoint,
        endpoint=e.otlp_endpoint,
        headers=str(e.otlp_metrics_headers or e.otlp_headers),
        interval_ms=e.metric_export_interval_ms,
        timeout_ms=e.metric_export_timeout_ms,
        temporality=e.metrics_temporality,
        latest_experimental=e.genai_latest_experimental,
        label_cap=e.label_cap,
        max_series=e.max_series_per_metric,
    )


def discovery_settings(config: Config) -> DiscoverySettings:
    poll = config.poll
    return DiscoverySettings(
        lookback_s=poll.lookback,
        interval_s=poll.discovery_interval,
        shard_index=poll.shard_index,
        shard_count=poll.shard_count,
    )


def build(config: Config, seams: Seams = Seams()) -> Components:
    """Wire one stepscope for `config`. Raises `ConfigError` for settings only a build can check."""
    cfg, wall = config, seams.wall
    factory = resolve(cfg)
    registry = seams.registry or CollectorRegistry()
    metrics = SelfMetrics(
        registry, version=__version__, endpoints=factory.endpoints, invalid_kinds=factory.invalid_kinds
    )
    store = AsyncStore(SqliteStore(cfg.state))
    stop = asyncio.Event()
    api = connect(cfg, transport=seams.transport, auth=seams.auth, observer=metrics, stop=stop,
                  http_transport=cfg.api.http_transport)  # fmt: skip
    instance = factory.open(ApiContext(config=cfg, connection=api, options=api.options, drops=metrics))
    progress = Progress()
    health = ApiHealth(instance.api_name, wall=wall)
    settings = trace_settings(cfg)
    exporter = seams.span_exporter if seams.span_exporter is not None else build_span_exporter(settings)
    resource = build_resource(settings)  # one resource for spans and OTLP metrics
    delivery = SpanDelivery(
        store.sync,
        exporter,
        resource=resource,
        health=metrics,
        limits=BacklogLimits(max_spans=cfg.export.backlog_max_spans, max_age_s=cfg.export.backlog_max_age),
        batch_size=settings.max_export_batch_size,
        delay_s=settings.schedule_delay_ms / 1000,
        wall=wall,
        beats=progress,
    )
    export = cfg.export
    prometheus = PrometheusMetrics(registry, label_cap=export.label_cap, max_series=export.max_series_per_metric,
                                   overflow=metrics, labels=(factory.labels,))  # fmt: skip
    otlp_metrics = None
    if export.metrics_exporter == "otlp" or seams.metric_reader is not None:
        otlp_metrics = OtlpMetrics(metric_settings(cfg), resource=resource, registry=registry, health=metrics,
                                   labels=(factory.labels,), reader=seams.metric_reader)  # fmt: skip
        metrics.mirror_to(otlp_metrics)
    sink = prometheus if otlp_metrics is None else FanOut(prometheus, otlp_metrics)
    pipeline: Pipeline[Any, Any, Any] = Pipeline(
        store, instance.mapper, sink, metrics, on_spans=delivery.notify, traces=exporter is not None, wall=wall
    )
    schedule = PollSchedule(fast=cfg.poll.interval, slow=cfg.poll.slow_interval)
    reader = instance.reader(pipeline, schedule)
    poller: Poller[Any] = Poller(reader, store, metrics, health, slow=schedule.slow, concurrency=cfg.poll.concurrency,
                                 max_tracked=cfg.poll.max_tracked_runs, wall=wall, beats=progress)  # fmt: skip
    neighbours = DiscoverySeams(store=store, tracker=poller, health=health, drops=metrics, beats=progress, wall=wall)
    finders = instance.finders(discovery_settings(cfg), neighbours)
    metrics.set_tracked_runs_source(lambda: poller.tracked_count)
    metrics.set_backlog_sources(lambda: delivery.pending, delivery.oldest_age)
    return Components(
        config=cfg,
        protocol=factory,
        instance=instance,
        registry=registry,
        metrics=metrics,
        store=store,
        api=api,
        health=health,
        delivery=delivery,
        pipeline=pipeline,
        reader=reader,
        poller=poller,
        finders=finders,
        progress=progress,
        traces=exporter is not None,
        stop=stop,
        otlp_metrics=otlp_metrics,
    )
