"""The reverse proxy: `ProxyApp`, the ASGI application relaying the application's API requests to the one configured
upstream, and `ProxyServer`, the component serving it.

Every request goes to the upstream origin (scheme, host and port of `OPENAI_BASE_URL`) with the same method,
path (raw, as sent), query, headers and body; the status, headers and body come back the same way, but for the
hop-by-hop headers (`upstream.py`). Bodies stream both ways, one chunk at a time with the sockets' flow control,
so memory stays within a small window whatever their size; compressed bodies pass compressed. An upgrade
(WebSocket) is relayed byte for byte (`tunnel.py`).

Not an open proxy: the target is always the configured origin; an absolute-form request target (`GET http://x/`)
is refused with 400 and `CONNECT` with 405 (by the server before this application runs, and here too under any
other server). Failures toward the upstream are OpenAI-shaped answers (`relay.py`).

An application that leaves frees its upstream request at once: when the client's connection is lost (the
server's `asgi.DISCONNECT` future), the request's task is cancelled, whether it waits for the upstream's head or
relays the answer, and the upstream connection is closed. The pool's bounds are in `upstream.py`.

Fail-open, and never waiting on telemetry: the answers of the requests the protocol's `ProxyObserver` routes go,
chunk by chunk after the application got them, into the bounded `ObservationQueue`, whose own task decodes them
for the protocol's sinks. The application's credentials pass through in its headers and are never logged,
stored or observed; the proxy holds no cookies.

`ProxyServer` serves `ProxyApp` on stepscope's own HTTP/1.1 server (`stepscope.receivers.server`) within
`PROXY_LIMITS`: the server answers `CONNECT` (405) and absolute-form targets (400) itself before the application
runs, relays upgrades (`Upgrade:`, WebSocket) to the application, adds no `Server` or `Date` header of its own
(the upstream's pass unchanged), and bounds every connection: 512 connections (fewer when the descriptor limit is
low; past them 503 at once), 5 s for a request head, 60 s idle between requests, 600 s idle for a WebSocket.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

import httpx

from stepscope.core.records import Drops
from stepscope.mapping.ids import valid_traceparent
from stepscope.protocols.base import AnswerSink, ProxyObserver, Route
from stepscope.receivers.asgi import DISCONNECT, TUNNEL, Message, Receive, Scope, Send, error_body, lifespan, respond
from stepscope.receivers.proxy.guard import GuardedObserver, RareLog, log
from stepscope.receivers.proxy.observations import ObservationQueue, Observed
from stepscope.receivers.proxy.observe import DEFAULT_MAX_BODY
from stepscope.receivers.proxy.relay import busy, relay_answer, send_upstream
from stepscope.receivers.proxy.tunnel import TunnelRelay
from stepscope.receivers.proxy.upstream import (
    RouteShares,
    end_to_end,
    make_tunnel_client,
    make_upstream_client,
    route_key,
    upstream_origin,
)
from stepscope.receivers.server import PROXY_LIMITS, AsgiServer, ServerLimits

_CONNECT_REFUSED = error_body("CONNECT is not supported: this is not a forward proxy", "method_not_allowed")
_ABSOLUTE_REFUSED = error_body(
    "absolute-form request targets are refused: this proxy only reaches its configured upstream",
    "absolute_form_refused",
)


class _RoutesNothing:
    """The observer of a protocol that reads nothing from proxied traffic: every request is only relayed."""

    def route(self, method: str, path: str) -> Route | None:
        return None

    def answer(self, route: Route, traceparent: str | None) -> AnswerSink | None:
        return None


class _ClientGone(Exception):
    """The application went away while its request body was being read."""


class ProxyApp:
    """ASGI application relaying to `upstream` (an origin, see `upstream_origin`) and showing the answers of the
    requests `observer` routes to the sinks it gives (guarded: see `GuardedObserver`).

    `http` is the upstream client (default `make_upstream_client()`) and `tunnels` the client of upgrades (default
    `make_tunnel_client()`); `aclose()` closes those made here. `drops` counts what the proxy refused or could
    not observe; `max_observed_body` bounds what is read of one routed answer or WebSocket message.
    """

    def __init__(
        self,
        upstream: str,
        observer: ProxyObserver | None,
        *,
        drops: Drops,
        http: httpx.AsyncClient | None = None,
        tunnels: httpx.AsyncClient | None = None,
        max_observed_body: int = DEFAULT_MAX_BODY,
        route_share: int | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.upstream = upstream_origin(upstream)
        self._base = httpx.URL(self.upstream)
        self._http = http or make_upstream_client()
        self._tunnel_http = tunnels or make_tunnel_client()
        self._owned = [c for c, given in ((self._http, http), (self._tunnel_http, tunnels)) if given is None]
        self.drops = drops
        chosen: ProxyObserver = observer if observer is not None else _RoutesNothing()
        self._observer = (
            chosen if isinstance(chosen, GuardedObserver) else GuardedObserver(chosen, drops=drops, monotonic=monotonic)
        )
        self.observations = ObservationQueue(self._observer, drops=drops, max_body=max_observed_body)
        self._shares = RouteShares() if route_share is None else RouteShares(route_share)
        self._rare = RareLog(log, monotonic)
        self._tunnels = TunnelRelay(self._tunnel_http, self._base, self._observer, self.observations,
                                    drops=drops, rare=self._rare)  # fmt: skip
        self.left = 0  # requests whose application went away before their answer was complete

    async def aclose(self) -> None:
        """Observe what is queued (briefly), then close the clients made here. Idempotent."""
        await self.observations.aclose()
        for client in self._owned:
            await client.aclose()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "lifespan":
                await lifespan(receive, send)
            return
        method: str = scope["method"]
        raw_path: bytes = scope.get("raw_path") or scope["path"].encode()
        if method == "CONNECT":
            await respond(send, 405, _CONNECT_REFUSED, [(b"allow", b"GET, POST, DELETE")])
            return
        if not raw_path.startswith(b"/"):
            await respond(send, 400, _ABSOLUTE_REFUSED)
            return
        extensions = scope.get("extensions") or {}
        gone: asyncio.Future[None] | None = extensions.get(DISCONNECT)
        if gone is None:  # another server (a test's ASGI transport): relayed without watching for departure
            await self._dispatch(scope, method, raw_path, receive, send, upgrade=TUNNEL in extensions)
            return
        if gone.done():
            return
        task = asyncio.current_task()
        assert task is not None
        cancel = _Canceller(task)
        gone.add_done_callback(cancel)
        try:
            await self._dispatch(scope, method, raw_path, receive, cancel.watching(send), upgrade=TUNNEL in extensions)
        except asyncio.CancelledError:
            if not cancel.fired:
                raise  # the server is stopping
            task.uncancel()  # the application left: its upstream request was cancelled, and that is all
        finally:
            gone.remove_done_callback(cancel)
        if cancel.fired:
            self.left += 1

    async def _dispatch(
        self, scope: Scope, method: str, raw_path: bytes, receive: Receive, send: Send, *, upgrade: bool
    ) -> None:
        if upgrade:
            await self._tunnels.relay(scope, raw_path, receive, send, upstream=self.upstream)
        else:
            await self._relay(scope, method, raw_path, receive, send)

    async def _relay(self, scope: Scope, method: str, raw_path: bytes, receive: Receive, send: Send) -> None:
        headers: list[tuple[bytes, bytes]] = scope["headers"]
        query: bytes = scope.get("query_string", b"")
        url = self._base.copy_with(raw_path=raw_path + (b"?" + query if query else b""))
        key = route_key(method, raw_path)
        if not self._shares.take(key):
            self._rare.warning("share", "proxy: requests to %s hold their share of the upstream pool: answering 503",
                               key.decode("latin-1"))  # fmt: skip
            await busy(send, self.upstream, "too many requests of this route wait for it", self.drops)
            return
        try:
            content = await self._request_body(headers, receive)
            request = httpx.Request(method, url, headers=end_to_end(headers, request=True), content=content)
            response = await send_upstream(self._http, request, send, upstream=self.upstream, rare=self._rare,
                                           drops=self.drops)  # fmt: skip
        except _ClientGone:  # the body's stream found the application gone: the upstream request is dropped
            return
        finally:
            self._shares.release(key)
        if response is None:
            return
        try:
            route = self._observer.route(method, raw_path.decode("latin-1"))
            answer = self._observe(route, headers, response) if route is not None else None
            await relay_answer(response, send, queue=self.observations, answer=answer, rare=self._rare,
                               upstream=self.upstream)  # fmt: skip
        finally:
            await response.aclose()

    async def _request_body(
        self, headers: list[tuple[bytes, bytes]], receive: Receive
    ) -> bytes | AsyncIterator[bytes] | None:
        """None for a request without a body; its bytes when they came in one message; else a stream of them."""
        names = {name.lower() for name, _ in headers}
        if b"content-length" not in names and b"transfer-encoding" not in names:
            return None
        first = await receive()
        if first["type"] == "http.disconnect":
            raise _ClientGone
        if not first.get("more_body"):
            return bytes(first.get("body", b""))

        async def rest() -> AsyncIterator[bytes]:
            yield bytes(first.get("body", b""))
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    raise _ClientGone
                if chunk := message.get("body", b""):
                    yield bytes(chunk)
                if not message.get("more_body"):
                    return

        return rest()

    def _observe(self, route: Route, headers: list[tuple[bytes, bytes]], response: httpx.Response) -> Observed | None:
        if not 200 <= response.status_code < 300:
            return None
        traceparent = valid_traceparent(next((v for k, v in headers if k.lower() == b"traceparent"), None))
        return self.observations.begin(route, traceparent, content_type=response.headers.get("content-type", ""),
                                       content_encoding=response.headers.get("content-encoding", ""))  # fmt: skip


class _Canceller:
    """A done-callback of the connection's `DISCONNECT` future that cancels the request's task, until the answer's
    last byte went out (what is left then, closing the upstream answer, must not be cut short) or a tunnel began
    (it ends by itself when the client goes: cancelling it could cut its end short)."""

    __slots__ = ("_armed", "_task", "fired")

    def __init__(self, task: asyncio.Task[object]) -> None:
        self._task = task
        self._armed = True
        self.fired = False

    def __call__(self, _: asyncio.Future[None]) -> None:
        if self._armed and not self._task.done():
            self.fired = True
            self._task.cancel()

    def watching(self, send: Send) -> Send:
        """`send`, disarming this canceller once the answer is complete or a tunnel began."""

        async def sending(message: Message) -> None:
            kind = message["type"]
            if kind == "http.response.start" and message["status"] == 101:
                self._armed = False
            await send(message)
            if kind == "http.response.body" and not message.get("more_body"):
                self._armed = False

        return sending


class ProxyServer:
    """`app` served on `host:port`. `start()` binds (a `ConfigError` naming `server.proxy_listen` when it cannot)
    and returns once it serves; `stop(budget_s)` is idempotent and safe without `start()`, and closes the app's
    upstream clients. Refusals and timeouts are counted in `drops` (default: the app's)."""

    name = "proxy"

    def __init__(
        self, app: ProxyApp, host: str, port: int, *, limits: ServerLimits = PROXY_LIMITS, drops: Drops | None = None
    ) -> None:
        self.app = app
        self._host = host
        self._server = AsgiServer(
            app, host, port, setting="server.proxy_listen", fix="choose another address with STEPSCOPE_PROXY_LISTEN",
            name="proxy", limits=limits, drops=drops if drops is not None else app.drops, backlog=512,
        )  # fmt: skip

    @property
    def port(self) -> int:
        return self._server.port

    @property
    def url(self) -> str:
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self.port}"

    @property
    def started(self) -> bool:
        return self._server.started

    @property
    def server(self) -> AsgiServer:
        return self._server

    async def start(self) -> None:
        """Bind, listen and serve. An address that cannot be bound raises `ConfigError` naming the setting."""
        if self._server.started:
            return
        await self._server.start()
        log.info("proxy listening on %s, relaying to %s (at most %d connections)", self.url, self.app.upstream,
                 self._server.cap)  # fmt: skip

    async def stop(self, budget_s: float = 2.0) -> None:
        await self._server.stop(budget_s)
        await self.app.aclose()

    async def shutdown(self) -> None:
        await self.stop()
