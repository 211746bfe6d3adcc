"""The composition root: the only module that knows every concrete class.

`Service` wires config -> API client -> poller and discovery -> pipeline -> span and metric exporters, plus the
checkpoint store and the HTTP server, and gives them one lifecycle: `start()` returns once everything listens,
`shutdown()` stops intake, lets polls in flight finish, flushes spans (their acknowledgements commit the store),
closes the store and stops the server. `run_service()` adds signal handling for `stepscope serve`.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Callable
from typing import Any

import httpx
from prometheus_client import CollectorRegistry

from stepscope import __version__
from stepscope.config import Config
from stepscope.export.otlp import OtlpSpanSink, TraceSettings, build_span_exporter
from stepscope.export.prometheus import PrometheusMetrics
from stepscope.mapping.attributes import PROVIDER_AZURE, PROVIDER_OPENAI, MappingOptions
from stepscope.pipeline import Pipeline
from stepscope.poller import Poller, PollSchedule
from stepscope.selfmetrics import SelfMetrics
from stepscope.server import App, HttpServer
from stepscope.source.auth import Auth, make_auth
from stepscope.source.client import AssistantsClient
from stepscope.source.discovery import Discovery
from stepscope.store import SqliteStore

log = logging.getLogger("stepscope")

SHUTDOWN_BUDGET_S = 8.0  # inside the 10 s a sidecar gets; leaves room for the interpreter to exit
HEARTBEAT_S = 1.0


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


class Service:
    """One running stepscope. Seams for tests: `transport` (httpx), `registry`, `auth`, `span_exporter`."""

    # Built in start(), which needs the running loop.
    source: AssistantsClient
    spans: OtlpSpanSink
    pipeline: Pipeline
    poller: Poller
    discovery: Discovery
    _http: httpx.AsyncClient

    def __init__(
        self,
        config: Config,
        *,
        registry: CollectorRegistry | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        auth: Auth | None = None,
        span_exporter: Any = None,
        wall: Callable[[], float] = time.time,
        serve_http: bool = True,
        discover: bool = True,
    ) -> None:
        self.config = config
        self.registry = registry or CollectorRegistry()
        self._transport = transport
        self._auth = auth
        self._span_exporter = span_exporter
        self._wall = wall
        self._serve_http = serve_http
        self._discover = discover
        self._stop = asyncio.Event()
        self._started = False
        self._shut = False
        self._heartbeat = 0.0
        self._tasks: list[asyncio.Task[None]] = []
        self.metrics = SelfMetrics(self.registry, version=__version__)
        self.store = SqliteStore(config.state)
        self.http_server: HttpServer | None = None

    # --- lifecycle ----------------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the store, build the stages and start them; returns once the HTTP server listens."""
        if self._started:
            return
        self._started = True
        cfg = self.config
        self.store.open()
        self._http = httpx.AsyncClient(
            transport=self._transport,
            timeout=httpx.Timeout(cfg.api.timeout, connect=5.0),
            limits=httpx.Limits(max_connections=cfg.poll.concurrency + 4),
        )
        auth = self._auth or make_auth(cfg.api.auth, key=str(cfg.api.api_key), token_file=cfg.api.token_file)
        self._auth = auth
        self.source = AssistantsClient(
            self._http,
            base_url=cfg.api.base_url,
            auth=auth,
            api_version=cfg.api.api_version,
            organization=cfg.api.org_id,
            project=cfg.api.project_id,
            observer=self.metrics,
            stop=self._stop,
            flavor=cfg.api.flavor,
        )
        options = MappingOptions(
            provider_name=PROVIDER_AZURE if cfg.api.flavor == "azure" else PROVIDER_OPENAI,
            capture_content=cfg.export.capture_content,
        )
        metric_sink = PrometheusMetrics(self.registry, label_cap=cfg.export.label_cap, overflow=self.metrics.dropped)
        settings = trace_settings(cfg)
        exporter = self._span_exporter if self._span_exporter is not None else build_span_exporter(settings)
        # The sink acknowledges into the pipeline, which exports into the sink: the lambda closes the loop.
        self.spans = OtlpSpanSink(
            exporter,
            settings=settings,
            on_ack=lambda keys, ok: self.pipeline.on_ack(keys, ok),  # noqa: PLW0108 - pipeline is built next
            on_failure=self.metrics.export_failed,
            on_drop=self.metrics.dropped,
        )
        self.pipeline = Pipeline(self.spans, metric_sink, self.metrics, options=options, wall=self._wall)
        self.poller = Poller(
            self.source,
            self.store,
            self.pipeline,
            self.metrics,
            schedule=PollSchedule(fast=cfg.poll.interval, slow=cfg.poll.slow_interval),
            concurrency=cfg.poll.concurrency,
            max_tracked_runs=cfg.poll.max_tracked_runs,
            wall=self._wall,
        )
        self.pipeline.bind(self.poller, asyncio.get_running_loop())
        self.metrics.set_tracked_runs_source(lambda: self.poller.tracked_count)
        self.discovery = Discovery(
            self.source,
            self.store,
            self.poller,
            threads=cfg.poll.threads,
            lookback_s=cfg.poll.lookback,
            interval_s=cfg.poll.discovery_interval,
            shard_index=cfg.poll.shard_index,
            shard_count=cfg.poll.shard_count,
            wall=self._wall,
        )
        self.poller.resume(self.store.active_runs())
        app = App(self, self.registry, token=str(cfg.server.watch_token), max_body=cfg.server.max_body_bytes)
        if self._serve_http:
            self.http_server = HttpServer(app, cfg.server.host, cfg.server.port)
            await self.http_server.start()
        await self.poller.start()
        if self._discover:
            await self.discovery.start()
        self._heartbeat = time.monotonic()
        self._tasks.append(asyncio.create_task(self._beat(), name="stepscope-heartbeat"))
        log.info(
            "stepscope %s started: listening on %s:%s, watching %d thread(s), resuming %d run(s)",
            __version__, cfg.server.host, self.http_server.port if self.http_server else "-", len(cfg.poll.threads),
            self.poller.tracked_count,
        )  # fmt: skip

    async def _beat(self) -> None:
        while not self._stop.is_set():
            self._heartbeat = time.monotonic()
            await asyncio.sleep(HEARTBEAT_S)

    async def shutdown(self) -> None:
        """Stop intake, finish polls in flight, flush spans, close the store, stop the server. Idempotent."""
        if self._shut:
            return
        self._shut = True
        self._stop.set()
        if not self._started:
            return
        started = time.monotonic()
        # A start that failed half-way leaves some stages unbuilt: shut down only what exists.
        built = vars(self)
        if "discovery" in built:
            await self.discovery.shutdown()
        if "poller" in built:
            await self.poller.shutdown(timeout_s=3.0)
        flushed = True
        if "spans" in built:
            remaining = max(0.5, SHUTDOWN_BUDGET_S - 2.0 - (time.monotonic() - started))
            flushed = await asyncio.to_thread(self.spans.force_flush, remaining)
            await asyncio.sleep(0.05)  # let the acknowledgements the flush produced commit the store
            await asyncio.to_thread(self.spans.shutdown)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if "_http" in built:
            await self._http.aclose()
        close_auth = getattr(self._auth, "aclose", None)
        if close_auth is not None:
            await close_auth()
        self.store.close()
        if self.http_server is not None:
            await self.http_server.shutdown()
        pending = self.pipeline.pending_spans if "pipeline" in built else 0
        log.info(
            "stepscope stopped in %.1fs (%s, %d span(s) unacknowledged)",
            time.monotonic() - started, "spans flushed" if flushed else "flush timed out", pending,
        )  # fmt: skip

    # --- what the HTTP server asks ------------------------------------------------------------------------------

    def alive(self) -> bool:
        beating = time.monotonic() - self._heartbeat < 10 * HEARTBEAT_S
        return self._started and not self._shut and beating and self.poller.running

    def ready(self) -> bool:
        return (
            self._started
            and not self._shut
            and self.store.is_open
            and self.http_server is not None
            and self.http_server.started
        )

    def status(self) -> dict[str, Any]:
        return {
            "version": __version__,
            "tracked_runs": self.poller.tracked_count,
            "watched_threads": len(self.discovery.threads()),
            "last_successful_poll": self.poller.last_success,
            "last_discovery": self.discovery.last_pass,
            "api": {"state": self.poller.api_state, "last_error": self.poller.last_error},
            "exporter": {"state": self.pipeline.exporter_state, "pending_spans": self.pipeline.pending_spans},
            "shard": f"{self.config.poll.shard_index}/{self.config.poll.shard_count}",
        }

    def watch(self, thread_id: str, run_id: str | None) -> bool:
        return self.discovery.watch(thread_id, run_id)

    def unwatch(self, thread_id: str, run_id: str | None) -> None:
        self.discovery.unwatch(thread_id, run_id)
        if run_id is not None:
            self.poller.untrack(run_id)

    async def wait(self) -> None:
        """Block until `shutdown()` was requested."""
        await self._stop.wait()

    def request_stop(self) -> None:
        self._stop.set()


async def run_service(config: Config) -> int:
    """Run until SIGTERM/SIGINT, then shut down gracefully. Returns the process exit code."""
    service = Service(config)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, service.request_stop)
    log.info("configuration: %s", config.summary())
    try:
        await service.start()
        await service.wait()
        log.info("shutting down")
    finally:
        await service.shutdown()
    return 0
