"""The composition root: the only module that knows every concrete class.

`Service` wires config -> API client -> poller and discovery -> pipeline -> metrics and the span backlog's
delivery, plus the checkpoint store and the HTTP server, and gives them one lifecycle: `start()` returns once
everything listens, `shutdown()` stops intake, lets polls in flight finish, delivers what spans it can within the
deadline (the rest stay in the backlog for the next start), closes the store and stops the server.
`run_service()` adds signal handling for `stepscope serve`.
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
from stepscope.config import Config, redact_url
from stepscope.errors import AuthError, ConfigError, NotFound, SourceError, StoreError
from stepscope.export.delivery import BacklogLimits, SpanDelivery
from stepscope.export.otlp import TraceSettings, build_resource, build_span_exporter
from stepscope.export.prometheus import PrometheusMetrics
from stepscope.mapping.attributes import PROVIDER_AZURE, PROVIDER_OPENAI, MappingOptions
from stepscope.pipeline import Pipeline
from stepscope.poller import Poller, PollSchedule
from stepscope.selfmetrics import SelfMetrics
from stepscope.server import App, HttpServer
from stepscope.source.auth import Auth
from stepscope.source.client import AssistantsClient
from stepscope.source.connect import ApiConnection, connect
from stepscope.source.discovery import Discovery
from stepscope.store import SqliteStore

log = logging.getLogger("stepscope")

SHUTDOWN_BUDGET_S = 8.0  # inside the 10 s a sidecar gets; leaves room for the interpreter to exit
POLLS_BUDGET_S = 2.5  # of which polls in flight may take this much; span delivery gets the rest
HEARTBEAT_S = 1.0
PROBE_ASSISTANT = "asst_stepscope_credential_check"
"""Fetched once at start: any answer but 401/403 proves the credentials; a 404 is the expected one."""


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
    delivery: SpanDelivery
    pipeline: Pipeline
    poller: Poller
    discovery: Discovery
    _api: ApiConnection

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
        check_api: bool = True,
    ) -> None:
        self.config = config
        self.registry = registry or CollectorRegistry()
        self._transport = transport
        self._auth = auth
        self._span_exporter = span_exporter
        self._wall = wall
        self._serve_http = serve_http
        self._discover = discover
        self._check_api = check_api
        self._stop = asyncio.Event()
        self._started = False
        self._shut = False
        self._heartbeat = 0.0
        self._tasks: list[asyncio.Task[None]] = []
        self.metrics = SelfMetrics(self.registry, version=__version__)
        self.store = SqliteStore(config.state)
        self.http_server: HttpServer | None = None
        self.spans_kept = 0  # spans left in the backlog at shutdown

    # --- lifecycle ----------------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the store, build the stages and start them; returns once the HTTP server listens.

        Raises `ConfigError` for what the operator must fix: an unusable state path, a port in use, credentials the
        API rejects.
        """
        if self._started:
            return
        self._started = True
        cfg = self.config
        try:
            self.store.open()
        except StoreError as exc:
            raise ConfigError([f"state (STEPSCOPE_STATE): {exc}"]) from exc
        self._api = connect(cfg, transport=self._transport, auth=self._auth, observer=self.metrics, stop=self._stop)
        self.source = self._api.client
        options = MappingOptions(
            provider_name=PROVIDER_AZURE if cfg.api.flavor == "azure" else PROVIDER_OPENAI,
            capture_content=cfg.export.capture_content,
        )
        metric_sink = PrometheusMetrics(
            self.registry,
            label_cap=cfg.export.label_cap,
            max_series=cfg.export.max_series_per_metric,
            overflow=self.metrics.dropped,
        )
        settings = trace_settings(cfg)
        exporter = self._span_exporter if self._span_exporter is not None else build_span_exporter(settings)
        self.delivery = SpanDelivery(
            self.store,
            exporter,
            resource=build_resource(settings),
            health=self.metrics,
            limits=BacklogLimits(max_spans=cfg.export.backlog_max_spans, max_age_s=cfg.export.backlog_max_age),
            batch_size=settings.max_export_batch_size,
            delay_s=settings.schedule_delay_ms / 1000,
            wall=self._wall,
        )
        self.pipeline = Pipeline(
            self.store,
            metric_sink,
            self.metrics,
            options=options,
            on_spans=self.delivery.notify,
            traces=exporter is not None,
            wall=self._wall,
        )
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
        self.metrics.set_tracked_runs_source(lambda: self.poller.tracked_count)
        self.metrics.set_backlog_sources(lambda: self.delivery.pending, self.delivery.oldest_age)
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
            max_registered=cfg.server.max_watched,
            on_drop=self.metrics.dropped,
        )
        self.poller.resume(self.store.active_runs())
        if self._serve_http:
            app = App(
                self,
                self.registry,
                token=str(cfg.server.watch_token),
                max_body=cfg.server.max_body_bytes,
                listen_host=cfg.server.host,
                watch_rate=cfg.server.watch_rate,
                dropped=self.metrics.dropped,
            )
            self.http_server = HttpServer(app, cfg.server.host, cfg.server.port)
            await self.http_server.start()
        if self._check_api:
            await self._check_credentials()
        self.delivery.start()
        await self.poller.start()
        if self._discover:
            await self.discovery.start()
        self._heartbeat = time.monotonic()
        self._tasks.append(asyncio.create_task(self._beat(), name="stepscope-heartbeat"))
        where = f"listening on {cfg.server.host}:{self.http_server.port}" if self.http_server else "no HTTP listener"
        log.info("stepscope %s started: %s, watching %d thread(s), resuming %d run(s), traces %s",
                 __version__, where, len(self.discovery.threads()), self.poller.tracked_count,
                 "off" if exporter is None else "on")  # fmt: skip
        if self._discover and not self.discovery.threads() and not self.poller.tracked_count:
            log.warning("nothing to watch yet: set STEPSCOPE_THREADS=thread_a,thread_b, or register threads with "
                        "POST /v1/watch {\"thread_id\": ...}; runs are found on watched threads only")  # fmt: skip

    async def _check_credentials(self) -> None:
        """One cheap request: a rejected credential is a configuration error; an unreachable API only a warning."""
        url = redact_url(self.config.api.base_url)
        try:
            await asyncio.wait_for(self.source.get_assistant(PROBE_ASSISTANT), timeout=10.0)
        except NotFound:
            pass
        except AuthError as exc:
            raise ConfigError(
                [f"api.api_key (OPENAI_API_KEY, STEPSCOPE_AUTH): {url} rejected the credentials: {exc}"]
            ) from exc
        except (SourceError, TimeoutError) as exc:
            log.warning("cannot check the API at %s yet (%s); polling retries with backoff", url, exc or "timed out")
            return
        except Exception as exc:  # a malformed answer still proves the credentials were accepted
            log.debug("credential check answered oddly: %s", exc)
        log.info("API at %s accepted the credentials", url)

    async def _beat(self) -> None:
        while not self._stop.is_set():
            self._heartbeat = time.monotonic()
            await asyncio.sleep(HEARTBEAT_S)

    async def shutdown(self) -> None:
        """Stop intake, finish polls in flight, deliver spans until the deadline, close everything. Idempotent.

        Never takes longer than `SHUTDOWN_BUDGET_S` plus a moment: spans not delivered by then stay in the backlog.
        """
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
            await self.poller.shutdown(timeout_s=POLLS_BUDGET_S)
        kept = 0
        if "delivery" in built:
            remaining = max(0.5, SHUTDOWN_BUDGET_S - 1.0 - (time.monotonic() - started))
            kept = self.spans_kept = await asyncio.to_thread(self.delivery.shutdown, remaining)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if "_api" in built:
            await self._api.aclose()
        self.store.close()
        if self.http_server is not None:
            await self.http_server.shutdown()
        spans = "all spans delivered" if not kept else f"{kept} span(s) kept in the backlog for the next start"
        log.info("stepscope stopped in %.1fs: %s", time.monotonic() - started, spans)

    # --- what the HTTP server asks ------------------------------------------------------------------------------

    def alive(self) -> bool:
        beating = time.monotonic() - self._heartbeat < 10 * HEARTBEAT_S
        return self._started and not self._shut and beating and self.poller.running

    def ready(self) -> bool:
        """Started, the store open and writable, the server up. Never depends on the API or the collector."""
        return (
            self._started
            and not self._shut
            and self.store.is_open
            and self.store.healthy
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
            "exporter": {
                "state": self.delivery.state,
                "pending_spans": self.delivery.pending,
                "backlog_age_seconds": round(self.delivery.oldest_age(), 1),
            },
            "store": {"path": self.store.path, "healthy": self.store.healthy, "last_error": self.store.last_error},
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
