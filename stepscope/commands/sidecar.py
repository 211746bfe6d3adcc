"""One running stepscope: the built components under one lifecycle, and what the HTTP surface asks of them.

`Sidecar.start()` starts, in order: the store, the HTTP listener, the API connection and one credential check,
span delivery, OTLP metrics (when on), the poller (which resumes what the store says is active), the protocol's
discovery and components, the proxy, the heartbeat; it returns once everything runs. `shutdown()` stops them in
reverse within `SHUTDOWN_BUDGET_S`; spans not delivered by then stay in the backlog for the next start, and the last
log line says how many. `run_sidecar()` adds signal handling for `stepscope serve`. Nothing here knows which
protocol runs.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from stepscope import __version__
from stepscope.commands.wiring import Components, Seams, build
from stepscope.config import Config
from stepscope.config.values import redact_url
from stepscope.core.discovery import PeriodicDiscovery
from stepscope.core.lifecycle import Component, Lifecycle
from stepscope.core.supervision import Heartbeat
from stepscope.errors import AuthError, ConfigError, SourceError, StoreError
from stepscope.receivers.http import HttpApp, HttpServer
from stepscope.receivers.proxy import ProxyApp, ProxyServer

log = logging.getLogger("stepscope")

SHUTDOWN_BUDGET_S = 8.0  # inside the 10 s a sidecar gets; leaves room for the interpreter to exit
PROBE_TIMEOUT_S = 10.0


class Supervised(Protocol):
    """A loop `/healthz` watches: its name (what it beats as), whether it runs, and how long it may go quiet."""

    @property
    def name(self) -> str: ...

    @property
    def running(self) -> bool: ...

    @property
    def allowed_s(self) -> float: ...


class CredentialCheck:
    """A component whose start makes one cheap authenticated request: a rejected credential is a `ConfigError`
    naming the key's settings; an API that cannot answer is only a warning (polling retries with backoff)."""

    name = "credential check"

    def __init__(self, probe: Callable[[], Awaitable[None]], url: str, *, timeout_s: float = PROBE_TIMEOUT_S) -> None:
        self._probe = probe
        self._url = redact_url(url)
        self._timeout = timeout_s

    async def start(self) -> None:
        try:
            await asyncio.wait_for(self._probe(), timeout=self._timeout)
        except AuthError as exc:
            problem = f"api.api_key (OPENAI_API_KEY, STEPSCOPE_AUTH): {self._url} rejected the credentials: {exc}"
            raise ConfigError([problem]) from exc
        except (SourceError, TimeoutError) as exc:
            reason = str(exc) or f"no answer in {self._timeout:.0f}s"
            log.warning("cannot check the API at %s yet (%s); polling retries with backoff", self._url, reason)
            return
        except Exception as exc:  # a malformed answer still proves the credentials were accepted
            log.debug("credential check answered oddly: %s", exc)
        log.info("API at %s accepted the credentials", self._url)

    async def stop(self, budget_s: float = 0.0) -> None:
        return None


class Sidecar:
    """A stepscope built from `config`. `serve_http`, `discover` and `check_api` turn off what backfill and tests
    do not need. Implements the status protocol the HTTP server asks (`alive`, `ready`, `status`)."""

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
        p = self.parts
        finders, server = p.finders, config.server
        self.heartbeat = Heartbeat()
        self.http_server: HttpServer | None = None
        components: list[Component] = [p.store]
        if serve_http:
            app = HttpApp(self, p.registry, token=str(server.watch_token), max_body=server.max_body_bytes,
                          listen_host=server.host, watch_rate=server.watch_rate, drops=p.metrics,
                          registrations=finders.registrations, webhook_secret=str(server.webhook_secret),
                          webhooks=finders.webhooks)  # fmt: skip
            self.http_server = HttpServer(app, server.host, server.port)
            components.append(self.http_server)
        components.append(p.api)
        if check_api:
            components.append(CredentialCheck(p.instance.probe, config.api.base_url))
        components.append(p.delivery)
        if p.otlp_metrics is not None:  # after delivery, before the poller: it stops after the last commit is counted
            components.append(p.otlp_metrics)
        components.append(p.poller)
        if discover:
            components.append(finders.discovery)
        components += finders.components
        self.proxy: ProxyServer | None = None
        if server.proxy_listen:
            self.proxy = ProxyServer(ProxyApp(config.api.base_url, finders.proxy, drops=p.metrics),
                                     server.proxy_host, server.proxy_port)  # fmt: skip
            components.append(self.proxy)
        components.append(self.heartbeat)
        self._lifecycle = Lifecycle(components)
        self._discover = discover
        self._supervised: list[Supervised] = [p.poller, p.delivery]
        if discover and isinstance(finders.discovery, PeriodicDiscovery):
            self._supervised.append(finders.discovery)

    # --- lifecycle ----------------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start every component; returns once the HTTP server listens. Raises `ConfigError` for what the operator
        must fix: an unusable state path, a port in use, credentials the API rejects."""
        try:
            await self._lifecycle.start()
        except StoreError as exc:
            raise ConfigError([f"state (STEPSCOPE_STATE): {exc}"]) from exc
        p, cfg = self.parts, self.config
        for loop in self._supervised:
            p.progress.supervise(loop.name, loop.allowed_s)
        where = f"listening on {cfg.server.host}:{self.http_server.port}" if self.http_server else "no HTTP listener"
        if self.proxy is not None:
            where += f", proxying {cfg.server.proxy_host}:{self.proxy.port} to the API"
        log.info("stepscope %s started: %s, reading the %s protocol, watching %d, resuming %d unit(s), traces %s",
                 __version__, where, p.protocol.name, len(p.finders.discovery.watched()), p.poller.tracked_count,
                 "on" if p.traces else "off")  # fmt: skip
        idle = p.finders.discovery.idle_reason()
        if self._discover and idle and not (p.poller.tracked_count or self.proxy):
            log.warning("nothing to watch yet: %s; or put the proxy in front of the API (STEPSCOPE_PROXY_LISTEN)", idle)

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

    @property
    def spans_kept(self) -> int:
        """Spans left in the backlog at shutdown."""
        return self.parts.delivery.spans_kept

    async def wait(self) -> None:
        """Block until a stop was requested."""
        await self.parts.stop.wait()

    def request_stop(self) -> None:
        self.parts.stop.set()

    # --- what the HTTP server asks ------------------------------------------------------------------------------

    def alive(self) -> bool:
        """Started, the event loop beating, and every supervised loop running and making progress within what its
        interval allows (a dead or stuck loop fails `/healthz`, so the orchestrator restarts the process)."""
        if not (self._lifecycle.started and self.heartbeat.alive()):
            return False
        return all(loop.running for loop in self._supervised) and not self.parts.progress.stalled()

    def ready(self) -> bool:
        """Started, the store open and writable, the server up. Never depends on the API or the collector."""
        store = self.parts.store.sync
        server = self.http_server
        return self._lifecycle.started and store.is_open and store.healthy and server is not None and server.started

    def status(self) -> dict[str, Any]:
        p = self.parts
        return {
            "version": __version__,
            "protocol": p.protocol.name,
            "tracked_runs": p.poller.tracked_count,
            "watched_threads": len(p.finders.discovery.watched()),
            "last_successful_poll": p.health.last_success,
            "last_discovery": p.finders.discovery.last_pass,
            "api": {"state": p.health.state, "last_error": p.health.last_error},
            "exporter": {
                "state": p.delivery.state,
                "pending_spans": p.delivery.pending,
                "backlog_age_seconds": round(p.delivery.oldest_age(), 1),
            },
            "store": {
                "path": p.store.sync.path,
                "healthy": p.store.sync.healthy,
                "last_error": p.store.sync.last_error,
            },
            "shard": f"{self.config.poll.shard_index}/{self.config.poll.shard_count}",
        }


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
