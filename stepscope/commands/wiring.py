"""The composition root: the only module that knows every concrete class.

`build(config, seams)` wires config -> API client -> discovery and poller (with the protocol's reader) -> pipeline
(with the protocol's mapper) -> Prometheus metrics and the span backlog's delivery, around one checkpoint store, and
returns them as a plain record, `Components`. It does no I/O: opening, checking and starting are the lifecycle's
(`sidecar.py`). `Seams` are what tests replace: the HTTP transport, the credential, the span exporter, the metrics
registry, the clock.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import httpx
from opentelemetry.sdk.trace.export import SpanExporter
from prometheus_client import CollectorRegistry

from stepscope import __version__
from stepscope.client.auth import Auth
from stepscope.client.connect import ApiConnection, agents_client, connect
from stepscope.config import Config
from stepscope.contract.vocabulary import Flavor, Protocol
from stepscope.core.health import ApiHealth
from stepscope.core.pipeline import Pipeline
from stepscope.core.poller import Poller
from stepscope.core.records import Mapper
from stepscope.core.store import SqliteStore
from stepscope.export.delivery import BacklogLimits, SpanDelivery
from stepscope.export.otlp import TraceSettings, build_resource, build_span_exporter
from stepscope.export.prometheus import PrometheusMetrics
from stepscope.export.selfmetrics import SelfMetrics
from stepscope.mapping.attributes import PROVIDER_AZURE, PROVIDER_OPENAI, MappingOptions
from stepscope.protocols.agents.discovery import SessionDiscovery
from stepscope.protocols.agents.mapping import AgentsMapper
from stepscope.protocols.agents.reader import TurnReader
from stepscope.protocols.assistants.discovery import Discovery
from stepscope.protocols.assistants.mapper import AssistantsMapper
from stepscope.protocols.assistants.reader import PollSchedule, StepReader
from stepscope.protocols.assistants.threads import ThreadLister

PROBE_ASSISTANT = "asst_stepscope_credential_check"
PROBE_SESSION = "sess_stepscope_credential_check"
"""Fetched once at start: any answer but 401/403 proves the credentials; a 404 is the expected one."""


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
    """Every stage of one stepscope, built and wired, nothing started."""

    config: Config
    registry: CollectorRegistry
    metrics: SelfMetrics
    store: SqliteStore
    api: ApiConnection
    health: ApiHealth
    delivery: SpanDelivery
    pipeline: Pipeline[Any, Any, Any]
    reader: StepReader | TurnReader
    poller: Poller[Any]
    discovery: Discovery | SessionDiscovery
    traces: bool
    probe: Callable[[], Awaitable[object]]  # one cheap authenticated request: 401/403 means bad credentials
    stop: asyncio.Event = field(default_factory=asyncio.Event)


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


def _api_name(config: Config) -> str:
    if config.api.protocol == Protocol.AGENTS:
        return "Agents API"
    return "Azure AI Agents API" if config.api.flavor == Flavor.AZURE else "Assistants API"


def build(config: Config, seams: Seams = Seams()) -> Components:
    """Wire one stepscope for `config`. Raises `ConfigError` for settings only a build can check."""
    cfg, wall = config, seams.wall
    registry = seams.registry or CollectorRegistry()
    metrics = SelfMetrics(registry, version=__version__)
    store = SqliteStore(cfg.state)
    stop = asyncio.Event()
    api = connect(
        cfg,
        transport=seams.transport,
        auth=seams.auth,
        observer=metrics,
        stop=stop,
        http_transport=cfg.api.http_transport,
    )
    health = ApiHealth(_api_name(cfg), wall=wall)
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
    options = MappingOptions(
        provider_name=PROVIDER_AZURE if cfg.api.flavor == Flavor.AZURE else PROVIDER_OPENAI,
        capture_content=cfg.export.capture_content,
    )
    prometheus = PrometheusMetrics(
        registry,
        label_cap=cfg.export.label_cap,
        max_series=cfg.export.max_series_per_metric,
        overflow=metrics.dropped,
        protocols=(cfg.api.protocol,),
    )
    schedule = PollSchedule(fast=cfg.poll.interval, slow=cfg.poll.slow_interval)
    agents = agents_client(api, cfg, observer=metrics, stop=stop) if cfg.api.protocol == Protocol.AGENTS else None
    mapper: Mapper[Any, Any, Any] = AgentsMapper(options) if agents else AssistantsMapper(options)
    pipeline: Pipeline[Any, Any, Any] = Pipeline(
        store, mapper, prometheus, metrics, on_spans=delivery.notify, traces=exporter is not None, wall=wall
    )
    reader: StepReader | TurnReader = (
        TurnReader(agents, pipeline, schedule=schedule, capture_content=cfg.export.capture_content)
        if agents
        else StepReader(api.client, pipeline, metrics, schedule=schedule)
    )
    poller: Poller[Any] = Poller(
        reader,
        store,
        metrics,
        health,
        slow=schedule.slow,
        concurrency=cfg.poll.concurrency,
        max_tracked=cfg.poll.max_tracked_runs,
        wall=wall,
    )
    discovery: Discovery | SessionDiscovery
    if agents:
        discovery = SessionDiscovery(
            agents,
            store,
            poller,
            agents=cfg.poll.agents,
            lookback_s=cfg.poll.lookback,
            interval_s=cfg.poll.discovery_interval,
            shard_index=cfg.poll.shard_index,
            shard_count=cfg.poll.shard_count,
            wall=wall,
            on_drop=metrics.dropped,
            health=health,
            poll_soon=poller.poll_soon,
        )
    else:
        # Azure can list a project's threads: with none configured, discovery finds them itself.
        listing = cfg.api.flavor == Flavor.AZURE and not cfg.poll.threads
        discovery = Discovery(
            api.client,
            store,
            poller,
            threads=cfg.poll.threads,
            lookback_s=cfg.poll.lookback,
            interval_s=cfg.poll.discovery_interval,
            shard_index=cfg.poll.shard_index,
            shard_count=cfg.poll.shard_count,
            wall=wall,
            max_registered=cfg.server.max_watched,
            on_drop=metrics.dropped,
            health=health,
            thread_source=ThreadLister.beside(api, cfg, observer=metrics) if listing else None,
        )
    metrics.set_tracked_runs_source(lambda: poller.tracked_count)
    metrics.set_backlog_sources(lambda: delivery.pending, delivery.oldest_age)
    return Components(
        config=cfg,
        registry=registry,
        metrics=metrics,
        store=store,
        api=api,
        health=health,
        delivery=delivery,
        pipeline=pipeline,
        reader=reader,
        poller=poller,
        discovery=discovery,
        traces=exporter is not None,
        probe=partial(agents.get_session, PROBE_SESSION)
        if agents
        else partial(api.client.get_assistant, PROBE_ASSISTANT),
        stop=stop,
    )
