"""One running stepscope: the built components under one lifecycle, and what the HTTP surface asks of them.

`Sidecar.start()` opens the store, starts the HTTP listener, checks the credentials with one request, then starts
delivery, the poller and discovery, and returns once everything runs. `shutdown()` stops them in reverse within
`SHUTDOWN_BUDGET_S`: discovery, polls in flight (`POLLS_BUDGET_S`), span delivery (what is left, less a second),
the API client, the listener, the store; spans not delivered by then stay in the backlog for the next start, and
the last log line says how many. `run_sidecar()` adds signal handling for `stepscope serve`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from typing import Any

from stepscope import __version__
from stepscope.commands.wiring import Components, Seams, build
from stepscope.config import Config
from stepscope.config.values import redact_url
from stepscope.contract.vocabulary import Flavor
from stepscope.core.lifecycle import Lifecycle, Stage
from stepscope.errors import AuthError, ConfigError, NotFound, SourceError, StoreError
from stepscope.protocols.agents.discovery import SessionDiscovery
from stepscope.protocols.agents.proxied import SessionFeed
from stepscope.protocols.assistants.discovery import Discovery
from stepscope.protocols.assistants.proxied import ProxyFeed
from stepscope.protocols.assistants.reader import StepReader
from stepscope.receivers.http import HttpApp, HttpError, HttpServer
from stepscope.receivers.proxy import ProxyApp, ProxyServer

log = logging.getLogger("stepscope")

SHUTDOWN_BUDGET_S = 8.0  # inside the 10 s a sidecar gets; leaves room for the interpreter to exit
POLLS_BUDGET_S = 2.5  # of which polls in flight may take this much; span delivery gets the rest but a second
HEARTBEAT_S = 1.0


class Sidecar:
    """A stepscope built from `config`. `serve_http`, `discover` and `check_api` turn off what backfill and tests
    do not need. Implements the status protocol the HTTP server asks (`alive`, `ready`, `status`, `watch`)."""

    def __init__(
        self,
        config: Config,
        seams: Seams = Seams(),  # noqa: B008 - frozen, so sharing it is safe
        *,
        serve_http: bool = True,
        discover: bool = True,
        check_api: bool = True,
    ) -> None:
        self.config = config
        self.parts: Components = build(config, seams)
        self.http_server: HttpServer | None = None
        self.spans_kept = 0  # spans left in the backlog at shutdown
        self._heartbeat = 0.0
        self._beat_task: asyncio.Task[None] | None = None
        p = self.parts
        stages = [
            Stage("store", self._open_store, self._close_store),
            Stage("resume", self._resume),
        ]
        if serve_http:
            stages.append(Stage("http", self._start_http, self._stop_http))
        api = (
            Stage("api", self._check_credentials, self._close_api) if check_api else Stage("api", stop=self._close_api)
        )
        stages.append(api)
        stages.append(Stage("delivery", self._start_delivery, self._stop_delivery))
        stages.append(Stage("poller", p.poller.start, self._stop_poller))
        if discover:
            stages.append(Stage("discovery", p.discovery.start, self._stop_discovery))
        self.proxy: ProxyServer | None = None
        if config.server.proxy_listen:
            feed: ProxyFeed | SessionFeed
            if isinstance(p.reader, StepReader):
                feed = runs = ProxyFeed(p.poller, p.reader, dropped=p.metrics.dropped)
                stages.append(Stage("proxy feed", runs.start, lambda budget_s: runs.stop()))
            else:
                assert isinstance(p.discovery, SessionDiscovery)
                feed = SessionFeed(p.discovery)
            app = ProxyApp(config.api.base_url, feed, dropped=p.metrics.dropped)
            self.proxy = ProxyServer(app, config.server.proxy_host, config.server.proxy_port)
            stages.append(Stage("proxy", self.proxy.start, self._stop_proxy))
        stages.append(Stage("heartbeat", self._start_beat, self._stop_beat))
        self._lifecycle = Lifecycle(stages)
        self._discover = discover

    # --- lifecycle ----------------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start every component; returns once the HTTP server listens. Raises `ConfigError` for what the operator
        must fix: an unusable state path, a port in use, credentials the API rejects."""
        await self._lifecycle.start()
        p, cfg = self.parts, self.config
        where = f"listening on {cfg.server.host}:{self.http_server.port}" if self.http_server else "no HTTP listener"
        if self.proxy is not None:
            where += f", proxying {cfg.server.proxy_host}:{self.proxy.port} to the API"
        units = "session(s)" if isinstance(p.discovery, SessionDiscovery) else "thread(s)"
        log.info("stepscope %s started: %s, reading the %s API, watching %d %s, resuming %d unit(s), traces %s",
                 __version__, where, cfg.api.protocol, len(self.watched()), units, p.poller.tracked_count,
                 "on" if p.traces else "off")  # fmt: skip
        lists_threads = (cfg.api.flavor == Flavor.AZURE and not cfg.poll.threads) or isinstance(
            p.discovery, SessionDiscovery
        )
        finds_runs = bool(self.watched() or p.poller.tracked_count or self.proxy or lists_threads)
        if self._discover and not finds_runs:
            log.warning("nothing to watch yet: set STEPSCOPE_THREADS=thread_a,thread_b, or register threads with "
                        'POST /v1/watch {"thread_id": ...}; runs are found on watched threads only')  # fmt: skip

    async def shutdown(self) -> None:
        """Stop everything in reverse order within `SHUTDOWN_BUDGET_S`. Idempotent; safe after a failed start."""
        self.parts.stop.set()
        started = time.monotonic()
        ran = self._lifecycle.started
        await self._lifecycle.stop(SHUTDOWN_BUDGET_S)
        if not ran:
            return  # a start that failed says why itself; there is nothing to report about spans
        kept = self.spans_kept
        spans = "all spans delivered" if not kept else f"{kept} span(s) kept in the backlog for the next start"
        log.info("stepscope stopped in %.1fs: %s", time.monotonic() - started, spans)

    async def wait(self) -> None:
        """Block until a stop was requested."""
        await self.parts.stop.wait()

    def request_stop(self) -> None:
        self.parts.stop.set()

    # --- stages -------------------------------------------------------------------------------------------------

    async def _open_store(self) -> None:
        try:
            self.parts.store.open()
        except StoreError as exc:
            raise ConfigError([f"state (STEPSCOPE_STATE): {exc}"]) from exc

    async def _close_store(self, budget_s: float) -> None:
        self.parts.store.close()

    async def _resume(self) -> None:
        self.parts.poller.resume(self.parts.store.active_runs())

    async def _start_http(self) -> None:
        cfg, metrics = self.config.server, self.parts.metrics
        discovery = self.parts.discovery
        session_event = discovery.session_event if isinstance(discovery, SessionDiscovery) else _ignore_event
        app = HttpApp(self, self.parts.registry, token=str(cfg.watch_token), max_body=cfg.max_body_bytes,
                      listen_host=cfg.host, watch_rate=cfg.watch_rate, dropped=metrics.dropped,
                      webhook_secret=str(cfg.webhook_secret), session_event=session_event)  # fmt: skip
        self.http_server = HttpServer(app, cfg.host, cfg.port)
        await self.http_server.start()

    async def _stop_http(self, budget_s: float) -> None:
        if self.http_server is not None:
            await self.http_server.shutdown()

    async def _check_credentials(self) -> None:
        """One cheap request: a rejected credential is a configuration error; an unreachable API only a warning."""
        url = redact_url(self.config.api.base_url)
        try:
            await asyncio.wait_for(self.parts.probe(), timeout=10.0)
        except NotFound:
            pass
        except AuthError as exc:
            problem = f"api.api_key (OPENAI_API_KEY, STEPSCOPE_AUTH): {url} rejected the credentials: {exc}"
            raise ConfigError([problem]) from exc
        except (SourceError, TimeoutError) as exc:
            log.warning("cannot check the API at %s yet (%s); polling retries with backoff", url, exc or "timed out")
            return
        except Exception as exc:  # a malformed answer still proves the credentials were accepted
            log.debug("credential check answered oddly: %s", exc)
        log.info("API at %s accepted the credentials", url)

    async def _close_api(self, budget_s: float) -> None:
        await self.parts.api.aclose()

    async def _start_delivery(self) -> None:
        self.parts.delivery.start()

    async def _stop_delivery(self, budget_s: float) -> None:
        self.spans_kept = await asyncio.to_thread(self.parts.delivery.shutdown, max(0.5, budget_s - 1.0))

    async def _stop_poller(self, budget_s: float) -> None:
        await self.parts.poller.shutdown(timeout_s=min(POLLS_BUDGET_S, budget_s))

    async def _stop_proxy(self, budget_s: float) -> None:
        if self.proxy is not None:
            await self.proxy.shutdown()

    async def _stop_discovery(self, budget_s: float) -> None:
        await self.parts.discovery.shutdown()

    async def _start_beat(self) -> None:
        self._heartbeat = time.monotonic()
        self._beat_task = asyncio.create_task(self._beat(), name="stepscope-heartbeat")

    async def _stop_beat(self, budget_s: float) -> None:
        if self._beat_task is not None:
            self._beat_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._beat_task

    async def _beat(self) -> None:
        while True:
            self._heartbeat = time.monotonic()
            await asyncio.sleep(HEARTBEAT_S)

    # --- what the HTTP server asks ------------------------------------------------------------------------------

    def alive(self) -> bool:
        beating = time.monotonic() - self._heartbeat < 10 * HEARTBEAT_S
        return self._lifecycle.started and beating and self.parts.poller.running

    def ready(self) -> bool:
        """Started, the store open and writable, the server up. Never depends on the API or the collector."""
        store = self.parts.store
        server = self.http_server
        return self._lifecycle.started and store.is_open and store.healthy and server is not None and server.started

    def status(self) -> dict[str, Any]:
        p = self.parts
        return {
            "version": __version__,
            "tracked_runs": p.poller.tracked_count,
            "watched_threads": len(self.watched()),
            "last_successful_poll": p.health.last_success,
            "last_discovery": p.discovery.last_pass,
            "api": {"state": p.health.state, "last_error": p.health.last_error},
            "exporter": {
                "state": p.delivery.state,
                "pending_spans": p.delivery.pending,
                "backlog_age_seconds": round(p.delivery.oldest_age(), 1),
            },
            "store": {"path": p.store.path, "healthy": p.store.healthy, "last_error": p.store.last_error},
            "shard": f"{self.config.poll.shard_index}/{self.config.poll.shard_count}",
        }

    def watched(self) -> list[str]:
        """The threads (or, for the Agents API, the sessions) this replica watches."""
        discovery = self.parts.discovery
        return discovery.sessions() if isinstance(discovery, SessionDiscovery) else discovery.threads()

    def watch(self, thread_id: str, run_id: str | None) -> bool:
        discovery = self.parts.discovery
        if isinstance(discovery, SessionDiscovery):
            raise HttpError(404, "with STEPSCOPE_PROTOCOL=agents, sessions are followed from the session listing and "
                                 "webhooks: /v1/watch registers Assistants threads only")  # fmt: skip
        return discovery.watch(thread_id, run_id)

    def unwatch(self, thread_id: str, run_id: str | None) -> None:
        discovery = self.parts.discovery
        if isinstance(discovery, Discovery):
            discovery.unwatch(thread_id, run_id)
        if run_id is not None:
            self.parts.poller.untrack(run_id)


def _ignore_event(session_id: str, event_type: str) -> None:
    """Agents API webhooks mean nothing to the Assistants protocol."""


async def run_sidecar(config: Config) -> int:
    """Run until SIGTERM/SIGINT, then shut down gracefully. Returns the process exit code."""
    sidecar = Sidecar(config)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, sidecar.request_stop)
    log.info("configuration: %s", config.summary())
    try:
        await sidecar.start()
        await sidecar.wait()
        log.info("shutting down")
    finally:
        await sidecar.shutdown()
    return 0
