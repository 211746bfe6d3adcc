"""One running stepscope: the built components under one lifecycle, and what the HTTP surface asks of them.

`Sidecar.start()` starts, in order: the store, the HTTP listener, the API connection and one credential check,
span delivery, OTLP metrics (when on), the poller (which resumes what the store says is active), the protocol's
discovery and components, the proxy, the "nothing to watch" hint, the heartbeat; it returns once everything runs,
or as soon as a stop is requested. `shutdown()` stops them in reverse within `SHUTDOWN_BUDGET_S`; spans not
delivered by then stay in the backlog for the next start, and the last log line says how many and how long the
stop took from the signal. `run_sidecar()` adds signal handling for `stepscope serve`. Nothing here knows which
protocol runs.
"""

from __future__ import annotations

import asyncio
import contextlib
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
from stepscope.errors import AuthError, ConfigError, SourceError, StoreError, reason_of
from stepscope.protocols.base import Discovery
from stepscope.receivers.http import HttpApp, HttpServer
from stepscope.receivers.proxy import ProxyApp, ProxyServer
from stepscope.receivers.server import raise_descriptor_limit

log = logging.getLogger("stepscope")

SHUTDOWN_BUDGET_S = 8.0  # inside the 10 s a sidecar gets; leaves room for the interpreter to exit
PROBE_TIMEOUT_S = 10.0
PROBE_NOTICE_S = 2.0  # a credential check still waiting after this long says so


class Supervised(Protocol):
    """A loop `/healthz` watches: its name (what it beats as), whether it runs, and how long it may go quiet."""

    @property
    def name(self) -> str: ...

    @property
    def running(self) -> bool: ...

    @property
    def allowed_s(self) -> float: ...


class CredentialCheck:
    """A component whose start makes one cheap authenticated request, and waits at most `timeout_s` for it.

    A rejected credential, or a base URL that does not serve the protocol (the probe's own `ConfigError`), stops the
    start with a `ConfigError` naming the setting to fix. An API that cannot answer in time is a warning with its
    reason (polling retries with backoff). A check still waiting after `notice_s` says so, so a silent API never
    means a silent start; once `stop` is set (a signal during start-up) the request is abandoned at once."""

    name = "credential check"

    def __init__(
        self,
        probe: Callable[[], Awaitable[None]],
        url: str,
        *,
        stop: asyncio.Event,
        timeout_s: float = PROBE_TIMEOUT_S,
        notice_s: float = PROBE_NOTICE_S,
    ) -> None:
        self._probe = probe
        self._url = redact_url(url)
        self._stop = stop
        self._timeout = timeout_s
        self._notice = min(notice_s, timeout_s)

    async def start(self) -> None:
        began = time.monotonic()
        probe = asyncio.ensure_future(self._probe())
        stopping = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait((probe, stopping), timeout=self._notice, return_when=asyncio.FIRST_COMPLETED)
            left = self._timeout - self._notice
            if left > 0 and not (probe.done() or stopping.done()):
                log.info("waiting for the API at %s to answer the credential check (at most %gs more)", self._url, left)
                await asyncio.wait((probe, stopping), timeout=left, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (probe, stopping):
                task.cancel()
            await asyncio.gather(probe, stopping, return_exceptions=True)
        if probe.cancelled() and self._stop.is_set():
            waited = time.monotonic() - began
            log.warning("cannot check the API at %s (no answer in %.1fs before the stop)", self._url, waited)
            return
        if probe.cancelled():
            log.warning("cannot check the API at %s yet (no answer in %gs); polling retries with backoff", self._url,
                        self._timeout)  # fmt: skip
            return
        self._judge(probe.exception())

    def _judge(self, error: BaseException | None) -> None:
        """Act on the probe's outcome: None or an odd answer accepted, a refusal or a wrong base URL fatal."""
        if isinstance(error, ConfigError):
            raise error
        if isinstance(error, AuthError):
            problem = f"api.api_key (OPENAI_API_KEY, STEPSCOPE_AUTH): {self._url} rejected the credentials: {error}"
            raise ConfigError([problem]) from error
        if isinstance(error, SourceError):
            log.warning("cannot check the API at %s yet (%s); polling retries with backoff", self._url,
                        reason_of(error))  # fmt: skip
            return
        if error is not None and not isinstance(error, Exception):
            raise error  # KeyboardInterrupt, SystemExit: not an answer
        if error is not None:  # a malformed answer still proves the credentials were accepted
            log.debug("credential check answered oddly: %s", reason_of(error))
        log.info("API at %s accepted the credentials", self._url)

    async def stop(self, budget_s: float = 0.0) -> None:
        return None


class IdleHint:
    """A component that says, once per episode, that there is nothing to watch: discovery's `idle_reason()` is set
    and no unit is tracked. Checked when the start ends ("nothing to watch yet") and then every `interval_s`
    ("nothing left to watch": every watched container was dropped, for example each configured thread answered
    404); a new episode begins once there is something to watch again. Built only without the proxy, which finds
    work by itself."""

    name = "idle hint"

    def __init__(self, discovery: Discovery, tracked: Callable[[], int], *, interval_s: float) -> None:
        self._discovery = discovery
        self._tracked = tracked
        self._interval = interval_s
        self._said = False
        self._checked = False
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="stepscope-idle-hint")

    async def stop(self, budget_s: float = 0.0) -> None:
        """Cancel the loop. Idempotent."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def check(self) -> bool:
        """Whether there is nothing to watch now; the first check of an episode logs the hint."""
        first, self._checked = not self._checked, True
        idle = self._discovery.idle_reason()
        if idle is None or self._tracked():
            self._said = False
            return False
        if not self._said:
            self._said = True
            log.warning("nothing %s: %s; or put the proxy in front of the API (STEPSCOPE_PROXY_LISTEN)",
                        "to watch yet" if first else "left to watch", idle)  # fmt: skip
        return True

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            self.check()


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
        log_config: bool = False,
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
            components.append(CredentialCheck(p.instance.probe, config.api.base_url, stop=p.stop))
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
        self.idle: IdleHint | None = None
        if discover and self.proxy is None:
            self.idle = IdleHint(finders.discovery, lambda: p.poller.tracked_count,
                                 interval_s=config.poll.discovery_interval)  # fmt: skip
            components.append(self.idle)
        components.append(self.heartbeat)
        self._lifecycle = Lifecycle(components)
        self._log_config = log_config
        self._stop_requested: float | None = None  # monotonic time of the first request_stop()
        self._supervised: list[Supervised] = [p.poller, p.delivery]
        if discover and isinstance(finders.discovery, PeriodicDiscovery):
            self._supervised.append(finders.discovery)

    # --- lifecycle ----------------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start every component; returns once the HTTP server listens, or at once when a stop was requested
        meanwhile (the components started so far are left to `shutdown`). Raises `ConfigError` for what the
        operator must fix: an unusable state path, a port in use, credentials the API rejects, a base URL that does
        not serve the protocol."""
        try:
            await self._lifecycle.start(self.parts.stop.is_set)
        except StoreError as exc:
            raise ConfigError([f"state (STEPSCOPE_STATE): {exc}"]) from exc
        if self._lifecycle.interrupted:
            return
        p, cfg = self.parts, self.config
        for loop in self._supervised:
            p.progress.supervise(loop.name, loop.allowed_s)
        if self._log_config:
            log.info("configuration: %s", cfg.summary())
        where = f"listening on {cfg.server.host}:{self.http_server.port}" if self.http_server else "no HTTP listener"
        if self.proxy is not None:
            where += f", proxying {cfg.server.proxy_host}:{self.proxy.port} to the API"
        log.info("stepscope %s started: %s, reading the %s protocol, watching %d, resuming %d unit(s), traces %s",
                 __version__, where, p.protocol.name, len(p.finders.discovery.watched()), p.poller.tracked_count,
                 "on" if p.traces else "off")  # fmt: skip
        if self.idle is not None:
            self.idle.check()

    async def shutdown(self) -> None:
        """Stop everything in reverse order within `SHUTDOWN_BUDGET_S`. Idempotent; safe after a failed start. The
        last line says how long the stop took, counted from `request_stop()` (the signal) when it was called."""
        self.parts.stop.set()
        began = self._stop_requested if self._stop_requested is not None else time.monotonic()
        ran, interrupted = self._lifecycle.started, self._lifecycle.interrupted
        await self._lifecycle.stop(SHUTDOWN_BUDGET_S)
        if interrupted:
            log.info("stepscope stopped in %.1fs, during start-up", time.monotonic() - began)
            return
        if not ran:
            return  # a start that failed says why itself; there is nothing to report about spans
        kept = self.spans_kept
        if not self.parts.traces:
            spans = "traces off"
        else:
            spans = "all spans delivered" if not kept else f"{kept} span(s) kept in the backlog for the next start"
        log.info("stepscope stopped in %.1fs: %s", time.monotonic() - began, spans)

    @property
    def spans_kept(self) -> int:
        """Spans left in the backlog at shutdown (also when delivery's stop overran its share and was abandoned)."""
        delivery = self.parts.delivery
        return max(delivery.spans_kept, delivery.pending)

    async def wait(self) -> None:
        """Block until a stop was requested."""
        await self.parts.stop.wait()

    def request_stop(self) -> None:
        """Ask for a stop (a signal handler's call): a start still going returns early, `wait()` returns."""
        if self._stop_requested is None:
            self._stop_requested = time.monotonic()
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
    if raised := raise_descriptor_limit():
        log.info("open-file limit (ulimit -n) raised from %d to %d, as the hard limit allows", *raised)
    sidecar = Sidecar(config, log_config=True)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, sidecar.request_stop)
    try:
        await sidecar.start()
        await sidecar.wait()
        log.info("shutting down")
    finally:
        await sidecar.shutdown()
    return 0
