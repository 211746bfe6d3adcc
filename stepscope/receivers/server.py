"""stepscope's own HTTP/1.1 server on asyncio: serves an ASGI application (the HTTP surface, the proxy) on one
listener, with every connection's time and the number of connections bounded (`ServerLimits`).

Every connection's time is bounded: by `header_timeout` until its request head is complete, by `idle_timeout`
between requests, by `body_timeout` while the application waits for request body bytes, by `send_timeout` while
the client does not read the answer, by `tunnel_idle_timeout` while a relayed WebSocket carries no byte either
way, and otherwise by the application (the proxy's upstream timeouts). The connection limit is held under what
the process's descriptor limit (`ulimit -n`) allows, so that the listener answers 503 before accept() would fail
with EMFILE (`connection_cap()`); `stepscope serve` first raises that soft limit as far as the hard limit allows
(`raise_descriptor_limit()`).

It uses only httptools' public parser API (`connection.py`, `cycle.py`), and its own accept loop
(`listener.py`). `AsgiServer` is a component: `start()` binds first, so an address in use fails at once as a
`ConfigError` naming the setting, runs the application's lifespan startup and returns once it serves; `stop()` is
idempotent and safe without `start()`: it stops accepting, closes idle connections, lets answers in progress
finish within the budget (at most `stop_timeout`, so an event stream that never ends cannot take the whole process's
shutdown budget), then closes what is left, without a log line per connection.

What the application raises is logged with its traceback at most once a minute (with the number left out) and
the client gets a 500, or its connection closed when the answer had started.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import time
from dataclasses import dataclass
from typing import Any

from stepscope.contract.vocabulary import DropReason
from stepscope.core.records import NO_DROPS, Drops
from stepscope.receivers.asgi import ASGI_VERSION, App, Message, Scope
from stepscope.receivers.connection import HttpConnection
from stepscope.receivers.listener import Listener

log = logging.getLogger("stepscope.receivers.server")

RESERVED_DESCRIPTORS = 256
"""Descriptors kept for the rest of the process (store, API pool, exporter, the other listener, logs)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerLimits:
    """The bounds of one listener; every field has a default fit for the HTTP surface (`PROXY_LIMITS` for the
    proxy). Times are seconds."""

    max_connections: int = 64
    """Connections held at once. A connection beyond it takes the place of the one that has waited longest for a
    request (see `reclaim_after`), else it is answered 503 (`listener_full`) and closed at once."""
    reclaim_after: float = 1.0
    """At the connection limit, a connection that has waited this long for a request, idle between requests or
    with its head unfinished, and has nothing left to send, makes room for a new one: an idle one is closed
    quietly, an unfinished one answered 503 (`listener_full`). Idle ones go first, then the longest waiting; a
    connection serving a request is never closed for another."""
    descriptors_per_connection: int = 1
    """Descriptors one connection costs (2 for the proxy: the application's and the upstream's)."""
    header_timeout: float = 5.0
    """From a connection's accept, or a request's first byte, to the end of its head; then 408 and closed."""
    idle_timeout: float = 60.0
    """A keep-alive connection between requests; then closed. Longer than clients keep idle connections (httpx:
    5 s), so a client never reuses a connection the server is closing."""
    body_timeout: float = 60.0
    """The application waits for request body bytes that do not come; then 408 (or closed) and counted."""
    send_timeout: float = 60.0
    """The client reads none of the answer while the socket's buffer is full; then the connection is closed."""
    tunnel_idle_timeout: float = 600.0
    """A relayed WebSocket (or other upgrade) that carries no byte either way; then both sides are closed."""
    max_head: int = 64 * 1024
    """Bytes of one request head (request line and headers); past it 431 and closed."""
    tunnels: bool = False
    """Whether `Upgrade:` requests reach the application (the proxy relays them); otherwise they get 501."""
    stop_timeout: float = 2.0
    """The most a stop takes, whatever budget it is given: answers in progress get most of it to finish, then they
    are cancelled and their connections closed. The rest of the process's shutdown budget goes to what stops after
    the listener (polls in flight, span delivery)."""


PROXY_LIMITS = ServerLimits(max_connections=512, descriptors_per_connection=2, tunnels=True)
"""The proxy's bounds: as many connections as the upstream pool (`proxy.upstream.POOL_CONNECTIONS`)."""


def descriptor_limit() -> int | None:
    """The process's soft limit on open descriptors, None when unlimited or unknown."""
    with contextlib.suppress(OSError, ValueError):
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        return None if soft == resource.RLIM_INFINITY else int(soft)
    return None


DESCRIPTOR_TARGET = 65_536
"""The soft descriptor limit `raise_descriptor_limit()` asks for: far more than every listener's cap needs."""


def raise_descriptor_limit(target: int = DESCRIPTOR_TARGET) -> tuple[int, int] | None:
    """Raise the process's soft limit on open descriptors towards `target`, within its hard limit, as long-running
    servers do: the usual soft default of 1,024 would hold the proxy to 384 connections. Returns (before, after)
    when it was raised; None when it was high enough already, the hard limit allows nothing more, or the system
    refused."""
    with contextlib.suppress(OSError, ValueError):
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        wanted = target if hard == resource.RLIM_INFINITY else min(hard, target)
        if soft != resource.RLIM_INFINITY and soft < wanted:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            return int(soft), int(wanted)
    return None


def connection_cap(limits: ServerLimits, soft_limit: int | None) -> int:
    """The connections one listener holds at most: `max_connections`, lowered so that they fit in the descriptors
    the process has after `RESERVED_DESCRIPTORS` (but not under 8 for that). Under a limit of 1,024 the proxy holds
    384."""
    if soft_limit is None:
        return limits.max_connections
    fitting = (soft_limit - RESERVED_DESCRIPTORS) // max(1, limits.descriptors_per_connection)
    return min(limits.max_connections, max(8, fitting))


_FAILURE_LOG_S = 60.0
_LIFESPAN_S = 5.0  # the application's lifespan startup or shutdown takes at most this long


class ServerState:
    """What every connection of one server shares: the application, its bounds, its open connections and tasks."""

    def __init__(self, app: App, limits: ServerLimits, name: str, drops: Drops) -> None:
        self.app = app
        self.limits = limits
        self.name = name
        self.loop = asyncio.get_running_loop()
        self.connections: set[HttpConnection] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        self.stopping = False
        self._drops = drops
        self._failed_at = float("-inf")
        self._unlogged = 0

    def reclaim(self) -> bool:
        """At the connection limit: close the connection that waited longest for a request (idle ones first), if
        one waited `limits.reclaim_after`. Whether one was closed, so that a new connection can take its place."""
        limit = self.loop.time() - self.limits.reclaim_after
        waiting = [(not conn.idle, since, conn) for conn in self.connections
                   if (since := conn.waiting_since()) is not None and since <= limit]  # fmt: skip
        if not waiting:
            return False
        min(waiting, key=lambda entry: entry[:2])[2].reclaim()
        return True

    def count(self, reason: DropReason) -> None:
        with contextlib.suppress(Exception):  # a broken counter must not break serving
            self._drops.dropped(reason)

    def failed(self, scope: Scope, exc: BaseException) -> None:
        """The application raised serving `scope`: a traceback at most once a minute, else counted for the next."""
        now = time.monotonic()
        if now - self._failed_at < _FAILURE_LOG_S:
            self._unlogged += 1
            return
        more, self._unlogged, self._failed_at = self._unlogged, 0, now
        log.error("%s: serving %s %s failed%s", self.name, scope.get("method"), scope.get("path"),
                  f" ({more} more since the last report)" if more else "", exc_info=exc)  # fmt: skip


class _Lifespan:
    """The server's side of the ASGI lifespan protocol. An application without lifespan support (it raises or
    returns at once) is served without it, as uvicorn's `lifespan="auto"` does."""

    def __init__(self, app: App, name: str) -> None:
        self._app = app
        self._name = name
        self._inbox: asyncio.Queue[Message] = asyncio.Queue()
        self._outbox: asyncio.Queue[Message] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    async def startup(self) -> None:
        scope: Scope = {"type": "lifespan", "asgi": ASGI_VERSION, "state": {}}
        self._task = asyncio.create_task(self._run(scope), name=f"{self._name}-lifespan")
        reply = await self._exchange("lifespan.startup")
        if reply is not None and reply["type"] == "lifespan.startup.failed":
            raise RuntimeError(f"{self._name}: the application failed to start: {reply.get('message', '')}")

    async def shutdown(self, budget_s: float) -> None:
        if self._task is None:
            return
        if not self._task.done():
            reply = await self._exchange("lifespan.shutdown", budget_s)
            if reply is not None and reply["type"] == "lifespan.shutdown.failed":
                log.warning("%s: the application's shutdown failed: %s", self._name, reply.get("message", ""))
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        self._task = None

    async def _run(self, scope: Scope) -> None:
        try:
            await self._app(scope, self._inbox.get, self._outbox.put)
        except Exception as exc:  # no lifespan support: served without it
            log.debug("%s: no lifespan (%s: %s)", self._name, type(exc).__name__, exc)

    async def _exchange(self, kind: str, limit_s: float = _LIFESPAN_S) -> Message | None:
        """Send `kind`; the application's reply, or None when it has no lifespan (or did not answer in time)."""
        assert self._task is not None
        await self._inbox.put({"type": kind})
        reply = asyncio.ensure_future(self._outbox.get())
        done, _ = await asyncio.wait((reply, self._task), timeout=max(0.1, limit_s),
                                     return_when=asyncio.FIRST_COMPLETED)  # fmt: skip
        if reply in done:
            return reply.result()
        reply.cancel()
        return None


class AsgiServer:
    """Serves `app` on `host:port` within `limits`; `setting` and `fix` word a failed bind, `name` the log lines.
    Refused connections and timeouts are counted in `drops` (`listener_full`, `request_timeout`)."""

    def __init__(
        self, app: Any, host: str, port: int, *, setting: str, fix: str, name: str,
        limits: ServerLimits = ServerLimits(), drops: Drops = NO_DROPS, backlog: int = 512,
    ) -> None:  # fmt: skip
        self.app = app
        self.limits = limits
        self.name = name
        self._drops = drops
        self._listener = Listener(host, port, setting=setting, fix=fix, name=name, count=self._count, backlog=backlog)
        self._state: ServerState | None = None
        self._accepting: asyncio.Task[None] | None = None
        self._lifespan: _Lifespan | None = None
        self.cap = limits.max_connections

    def _count(self, reason: DropReason) -> None:
        with contextlib.suppress(Exception):
            self._drops.dropped(reason)

    @property
    def port(self) -> int:
        """The bound port (the real one after binding port 0)."""
        return self._listener.port

    @property
    def started(self) -> bool:
        return self._accepting is not None

    @property
    def open_connections(self) -> int:
        return len(self._state.connections) if self._state is not None else 0

    async def start(self) -> None:
        """Bind (a `ConfigError` naming the setting when the address cannot be used), run the application's
        lifespan startup, and serve. Returns once connections are accepted."""
        if self._accepting is not None:
            return
        self._listener.bind()
        try:
            state = self._state = ServerState(self.app, self.limits, self.name, self._drops)
            self.cap = connection_cap(self.limits, descriptor_limit())
            if self.cap < self.limits.max_connections:
                log.info("%s: at most %d connections at once, not %d: the descriptor limit (ulimit -n) is %s",
                         self.name, self.cap, self.limits.max_connections, descriptor_limit())  # fmt: skip
            self._lifespan = _Lifespan(self.app, self.name)
            await self._lifespan.startup()
        except BaseException:
            self._listener.close()
            raise
        self._accepting = asyncio.create_task(
            self._listener.accept(
                lambda: HttpConnection(state), lambda: len(state.connections), self.cap, state.reclaim
            ),
            name=f"{self.name}-accept",
        )

    async def stop(self, budget_s: float = 2.0) -> None:
        """Stop serving within `budget_s` seconds, at most `limits.stop_timeout` (see the module docstring).
        Idempotent."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(0.0, min(budget_s, self.limits.stop_timeout))
        if self._accepting is not None:
            self._accepting.cancel()
            await asyncio.gather(self._accepting, return_exceptions=True)
            self._accepting = None
        self._listener.close()
        state = self._state
        if state is not None:
            state.stopping = True
            for conn in list(state.connections):
                conn.shutdown()
            # Answers in progress get most of the budget; the lifespan's shutdown the rest.
            if state.tasks:
                await asyncio.wait(set(state.tasks), timeout=max(0.0, (deadline - loop.time()) * 0.8))
            for task in list(state.tasks):
                task.cancel()
            if state.tasks:
                await asyncio.wait(set(state.tasks), timeout=max(0.05, deadline - loop.time()))
            for conn in list(state.connections):
                conn.abort()
            self._state = None
        if self._lifespan is not None:
            await self._lifespan.shutdown(max(0.1, deadline - loop.time()))
            self._lifespan = None

    async def shutdown(self) -> None:
        """`stop()` with its default budget."""
        await self.stop()
