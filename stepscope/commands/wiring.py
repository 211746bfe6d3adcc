"""The composition root: the only module that puts the engine, the exporters and a protocol together.

`resolve(config)` finds the protocol `STEPSCOPE_PROTOCOL` names in the registry and checks the configuration with
it (`ConfigError` for an unknown protocol or a setting it cannot use), so every command fails on a bad protocol
before it starts anything. `build(config, seams)` wires config -> API connection -> the protocol's instance ->
pipeline (with its mapper) -> reader -> poller -> the protocol's finders (discovery, proxy observer,
registrations, webhooks), around one checkpoint store, Prometheus metrics and the span backlog's delivery, and
returns them as a plain record, `Components`. It does no I/O: opening, checking and starting are the lifecycle's
(`sidecar.py`). `Seams` are what tests replace: the HTTP transport, the credential, the span exporter, the
metrics registry, the clock.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
from opentelemetry.sdk.trace.export import SpanExporter
from prometheus_client import CollectorRegistry

from stepscope import __version__, protocols
from stepscope.client.auth import Auth
from stepscope.client.connect import ApiConnection, connect
from stepscope.config import Config
from stepscope.core.discovery import DiscoverySeams, DiscoverySettings
from stepscope.core.health import ApiHealth
from stepscope.core.pipeline import Pipeline
from stepscope.core.poller import Poller, PollSchedule
from stepscope.core.records import UnitReader
from stepscope.core.store import SqliteStore
from stepscope.errors import ConfigError
from stepscope.export.delivery import BacklogLimits, SpanDelivery
from stepscope.export.otlp import TraceSettings, build_resource, build_span_exporter
from stepscope.export.prometheus import PrometheusMetrics
from stepscope.export.selfmetrics import SelfMetrics
from stepscope.protocols.base import ApiContext, Finders, ProtocolFactory, ProtocolInstance


@dataclass(frozen=True, slots=True, kw_only=True)
class Seams:
    """What a test may replace. `span_exporter` set wins over `OTEL_TRACES_EXPORTER`."""

    registry: CollectorRegistry | None = None
    transport: httpx.AsyncBaseTransport | None = None
    auth: Auth | None = None
    span_exporter: SpanExporter | None = None
    wall: Callable[[], float] = time.time


@dataclass(slots=True)
class Components:
    """Every part of one stepscope, built and wired, nothing started."""

    config: Config
    protocol: ProtocolFactory
    instance: ProtocolInstance
    registry: CollectorRegistry
    metrics: SelfMetrics
    store: SqliteStore
    api: ApiConnection
    health: ApiHealth
    delivery: SpanDelivery
    pipeline: Pipeline[Any, Any, Any]
    reader: UnitReader[Any]
    poller: Poller[Any]
    finders: Finders
    traces: bool
    stop: asyncio.Event = field(default_factory=asyncio.Event)


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
    store = SqliteStore(cfg.state)
    stop = asyncio.Event()
    api = connect(cfg, transport=seams.transport, auth=seams.auth, observer=metrics, stop=stop,
                  http_transport=cfg.api.http_transport)  # fmt: skip
    instance = factory.open(ApiContext(config=cfg, connection=api, options=api.options, drops=metrics))
    health = ApiHealth(instance.api_name, wall=wall)
    settings = trace_settings(cfg)
    exporter = seams.span_exporter if seams.span_exporter is not None else build_span_exporter(settings)
    delivery = SpanDelivery(
        store,
        exporter,
        resource=build_resource(settings),
        health=metrics,
        limits=BacklogLimits(max_spans=cfg.export.backlog_max_spans, max_age_s=cfg.export.backlog_max_age),
        batch_size=settings.max_export_batch_size,
        delay_s=settings.schedule_delay_ms / 1000,
        wall=wall,
    )
    export = cfg.export
    prometheus = PrometheusMetrics(registry, label_cap=export.label_cap, max_series=export.max_series_per_metric,
                                   overflow=metrics, labels=(factory.labels,))  # fmt: skip
    pipeline: Pipeline[Any, Any, Any] = Pipeline(
        store, instance.mapper, prometheus, metrics, on_spans=delivery.notify, traces=exporter is not None, wall=wall
    )
    schedule = PollSchedule(fast=cfg.poll.interval, slow=cfg.poll.slow_interval)
    reader = instance.reader(pipeline, schedule)
    poller: Poller[Any] = Poller(reader, store, metrics, health, slow=schedule.slow, concurrency=cfg.poll.concurrency,
                                 max_tracked=cfg.poll.max_tracked_runs, wall=wall)  # fmt: skip
    finders = instance.finders(
        discovery_settings(cfg), DiscoverySeams(store=store, tracker=poller, health=health, drops=metrics, wall=wall)
    )
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
        traces=exporter is not None,
        stop=stop,
    )
