"""The reverse proxy: the application's Assistants API requests, relayed to the one configured upstream.

Every request goes to the upstream origin (scheme, host and port of `OPENAI_BASE_URL`) with the same method,
path (raw, as sent), query, headers and body; the status, headers and body come back the same way. Only
hop-by-hop headers (RFC 9110 section 7.6.1: `Connection` and the headers it names, `Keep-Alive`,
`Proxy-Connection`, `TE`, `Transfer-Encoding`, `Upgrade`, `Proxy-Authenticate`, `Proxy-Authorization`, plus
`Expect` and `Host`, which belong to each connection) are not passed on. Bodies stream both ways, one chunk at a
time with the sockets' flow control, so memory stays within a small window whatever their size; compressed
bodies pass compressed.

Not an open proxy: the target is always the configured origin; an absolute-form request target (`GET http://x/`)
is refused with 400 and `CONNECT` with 405. An upstream that cannot be reached gives 502 (504 when it does not
answer in time) with an OpenAI-shaped error body, `{"error": {"message", "type", "param", "code"}}`.

Fail-open: the answers to run routes (`routes.py`) are also shown to an `AnswerObserver`, after each chunk went
to the application; whatever it or the feed does wrong is caught, counted and logged rarely, and the response
goes on. The application's credentials pass through in its headers and are never logged, stored or observed:
stepscope's own polling keeps its own credentials. The proxy holds no cookies.
"""

from __future__ import annotations

import asyncio
import http.cookiejar
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from urllib.parse import urlsplit

import httpx
import uvicorn

from stepscope.core.records import Drops
from stepscope.mapping.ids import valid_traceparent
from stepscope.protocols.base import AnswerSink, ProxyObserver, Route
from stepscope.receivers.listener import Listener, Receive, Scope, Send
from stepscope.receivers.proxy.guard import GuardedObserver, RareLog
from stepscope.receivers.proxy.observe import DEFAULT_MAX_BODY, AnswerReader
from stepscope.receivers.proxy.protocol import ProxyHttpProtocol

log = logging.getLogger("stepscope.receivers.proxy")


HOP_BY_HOP = frozenset(
    {
        b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"transfer-encoding", b"upgrade",
        b"proxy-authenticate", b"proxy-authorization",
    }
)  # fmt: skip
_REQUEST_ONLY = frozenset({b"host", b"expect"})  # set per connection: the upstream's host, uvicorn's 100-continue
UPSTREAM_TIMEOUT = httpx.Timeout(connect=10.0, read=600.0, write=600.0, pool=30.0)
"""The SDK's own request timeout is 600 s; a run's stream may be quiet for long between events."""
UPSTREAM_LIMITS = httpx.Limits(max_connections=512, max_keepalive_connections=64, keepalive_expiry=30.0)
SMALL_BODY = 1024 * 1024
"""Answers of known length up to this size are relayed without watching for the application to leave."""


class UpstreamCut(Exception):
    """The upstream broke off mid-answer: the application's connection is closed, as the upstream's was."""


def upstream_origin(base_url: str) -> str:
    """`https://user:pw@host:8443/api/projects/p` -> `https://host:8443`; ValueError for anything not http(s)."""
    parts = urlsplit(base_url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an http:// or https:// URL")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{parts.scheme}://{host}" + (f":{parts.port}" if parts.port else "")


def make_upstream_client() -> httpx.AsyncClient:
    """The default upstream client: no cookie jar that keeps anything, no redirects followed, long read timeout."""
    jar = http.cookiejar.CookieJar(policy=http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))
    return httpx.AsyncClient(timeout=UPSTREAM_TIMEOUT, limits=UPSTREAM_LIMITS, cookies=jar, follow_redirects=False)


def _connection_named(headers: list[tuple[bytes, bytes]]) -> set[bytes]:
    named: set[bytes] = set()
    for name, value in headers:
        if name.lower() == b"connection":
            named.update(v.strip().lower() for v in value.split(b",") if v.strip())
    return named


def end_to_end(headers: list[tuple[bytes, bytes]], *, request: bool) -> list[tuple[bytes, bytes]]:
    """`headers` without hop-by-hop ones (and, for a request, without `Host` and `Expect`), order kept."""
    drop = HOP_BY_HOP | _connection_named(headers) | (_REQUEST_ONLY if request else frozenset())
    return [(name, value) for name, value in headers if name.lower() not in drop]


def _error_body(message: str, code: str) -> bytes:
    return json.dumps({"error": {"message": message, "type": "proxy_error", "param": None, "code": code}}).encode()


class _RoutesNothing:
    """The observer of a protocol that reads nothing from proxied traffic: every request is only relayed."""

    def route(self, method: str, path: str) -> Route | None:
        return None

    def answer(self, route: Route, traceparent: str | None) -> AnswerSink | None:
        return None


_NOTHING = _RoutesNothing()


class ProxyApp:
    """ASGI application relaying to `upstream` (an origin, see `upstream_origin`) and showing the answers of the
    requests `observer` routes to the sinks it gives (guarded: see `GuardedObserver`).

    `http` is the upstream client (default `make_upstream_client()`; closed by `aclose()` only when made
    here). `drops` counts what the proxy could not observe (`proxy_body_too_large`, `proxy_unreadable`,
    `proxy_observer_error`); `max_observed_body` bounds what is read of one routed answer.
    """

    def __init__(
        self,
        upstream: str,
        observer: ProxyObserver | None,
        *,
        drops: Drops,
        http: httpx.AsyncClient | None = None,
        max_observed_body: int = DEFAULT_MAX_BODY,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.upstream = upstream_origin(upstream)
        self._base = httpx.URL(self.upstream)
        self._owns_http = http is None
        self._http = http or make_upstream_client()
        self._drops = drops
        chosen: ProxyObserver = observer if observer is not None else _NOTHING
        self._observer = (
            chosen if isinstance(chosen, GuardedObserver) else GuardedObserver(chosen, drops=drops, monotonic=monotonic)
        )
        self._max_observed = max_observed_body
        self._rare = RareLog(log, monotonic)

    async def aclose(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return  # websockets are not relayed; uvicorn closes the connection
        method: str = scope["method"]
        raw_path: bytes = scope.get("raw_path") or scope["path"].encode()
        if method == "CONNECT":
            message = "CONNECT is not supported: this is not a forward proxy"
            await _respond(send, 405, _error_body(message, "method_not_allowed"), [(b"allow", b"GET, POST, DELETE")])
            return
        if not raw_path.startswith(b"/"):
            message = "absolute-form request targets are refused: this proxy only reaches its configured upstream"
            await _respond(send, 400, _error_body(message, "absolute_form_refused"))
            return
        await self._relay(scope, method, raw_path, receive, send)

    async def _relay(self, scope: Scope, method: str, raw_path: bytes, receive: Receive, send: Send) -> None:
        headers: list[tuple[bytes, bytes]] = scope["headers"]
        query: bytes = scope.get("query_string", b"")
        url = self._base.copy_with(raw_path=raw_path + (b"?" + query if query else b""))
        body_done = asyncio.Event()
        content = await self._request_body(headers, receive, body_done)
        request = httpx.Request(method, url, headers=end_to_end(headers, request=True), content=content)
        try:
            response = await self._http.send(request, stream=True)
        except _ClientGone:
            return
        except httpx.TimeoutException:
            self._rare.warning("timeout", "proxy: the upstream %s did not answer in time", self.upstream)
            await _respond(
                send, 504, _error_body(f"upstream {self.upstream} did not answer in time", "upstream_timeout")
            )
            return
        except httpx.TransportError as exc:
            reason = type(exc).__name__
            self._rare.warning("unreachable", "proxy: cannot reach the upstream %s (%s)", self.upstream, reason)
            await _respond(send, 502, _error_body(f"cannot reach upstream {self.upstream} ({reason})", "bad_gateway"))
            return
        try:
            route = self._observer.route(method, raw_path.decode("latin-1").partition("?")[0])
            observer = self._reader(route, headers, response) if route is not None else None
            await self._pump(response, observer, send, receive, body_done)
        finally:
            await response.aclose()

    async def _request_body(
        self, headers: list[tuple[bytes, bytes]], receive: Receive, done: asyncio.Event
    ) -> bytes | AsyncIterator[bytes] | None:
        """None for a request without a body; its bytes when they came in one message; else a stream of them."""
        names = {name.lower() for name, _ in headers}
        if b"content-length" not in names and b"transfer-encoding" not in names:
            done.set()
            return None
        first = await receive()
        if first["type"] == "http.disconnect":
            raise _ClientGone
        if not first.get("more_body"):
            done.set()
            return bytes(first.get("body", b""))

        async def rest() -> AsyncIterator[bytes]:
            try:
                yield bytes(first.get("body", b""))
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        raise _ClientGone
                    if chunk := message.get("body", b""):
                        yield bytes(chunk)
                    if not message.get("more_body"):
                        return
            finally:
                done.set()

        return rest()

    def _reader(
        self, route: Route, headers: list[tuple[bytes, bytes]], response: httpx.Response
    ) -> AnswerReader | None:
        if not 200 <= response.status_code < 300:
            return None
        traceparent = valid_traceparent(next((v for k, v in headers if k.lower() == b"traceparent"), None))
        sink = self._observer.answer(route, traceparent)
        if sink is None:
            return None
        return AnswerReader(
            sink,
            content_type=response.headers.get("content-type", ""),
            content_encoding=response.headers.get("content-encoding", ""),
            max_body=self._max_observed,
            drops=self._drops,
        )

    async def _pump(
        self,
        response: httpx.Response,
        observer: AnswerReader | None,
        send: Send,
        receive: Receive,
        body_done: asyncio.Event,
    ) -> None:
        """Relay the answer while watching for the application to go away (then the upstream stream is closed)."""
        head = end_to_end(response.headers.raw, request=False)
        await send({"type": "http.response.start", "status": response.status_code, "headers": head})
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) <= SMALL_BODY:
            # Most answers: small and of known length. Relaying them takes no longer than noticing a departed
            # application would, so no watcher task (two tasks per request are a measurable part of the latency).
            await self._relay_body(response, observer, send)
            return
        relay = asyncio.ensure_future(self._relay_body(response, observer, send))
        gone = asyncio.ensure_future(_wait_disconnect(receive, body_done))
        try:
            await asyncio.wait((relay, gone), return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not relay.done():
                relay.cancel()
                self._observe(observer, None, complete=False)
            gone.cancel()
            await asyncio.gather(relay, gone, return_exceptions=True)
        failure = relay.exception() if relay.done() and not relay.cancelled() else None
        if failure is not None:
            raise failure  # an UpstreamCut: uvicorn then closes the application's connection mid-answer

    async def _relay_body(self, response: httpx.Response, observer: AnswerReader | None, send: Send) -> None:
        try:
            async for chunk in response.aiter_raw():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
                self._observe(observer, chunk)
        except httpx.HTTPError as exc:
            self._observe(observer, None, complete=False)
            self._rare.warning(
                "cut", "proxy: the upstream %s broke off an answer (%s)", self.upstream, type(exc).__name__
            )
            raise UpstreamCut(type(exc).__name__) from None
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        self._observe(observer, None, complete=True)

    def _observe(self, observer: AnswerReader | None, chunk: bytes | None, *, complete: bool = False) -> None:
        if observer is None:
            return
        try:
            if chunk is None:
                observer.finish(complete)
            else:
                observer.chunk(chunk)
        except Exception as exc:  # fail-open: the response goes on unobserved
            self._observer.failed("read", exc)


class _ClientGone(Exception):
    """The application went away while its request body was being relayed."""


async def _wait_disconnect(receive: Receive, body_done: asyncio.Event) -> None:
    await body_done.wait()  # receive() belongs to the request body until then
    while (await receive())["type"] != "http.disconnect":
        pass


async def _respond(send: Send, status: int, body: bytes, extra: list[tuple[bytes, bytes]] | None = None) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *(extra or [])]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


class _QuietCuts(logging.Filter):
    """Drops uvicorn's traceback for an `UpstreamCut`: the proxy logged it in one line already."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], UpstreamCut))


class ProxyServer:
    """The proxy under uvicorn on the running event loop. `start()` binds (errors at once) and returns once it
    serves; `shutdown()` is idempotent and safe without `start()`.

    Served with `ProxyHttpProtocol` (httptools, refusing absolute-form targets and CONNECT before the app runs;
    `ProxyApp` refuses them too under any other server), without `Server` or `Date` headers of its own, so the
    upstream's pass unchanged.
    """

    def __init__(self, app: ProxyApp, host: str, port: int) -> None:
        self.app = app
        self._host = host
        self._filter = _QuietCuts()
        config = uvicorn.Config(
            app, http=ProxyHttpProtocol, log_config=None, access_log=False, lifespan="on",
            timeout_graceful_shutdown=2, server_header=False, date_header=False,
        )  # fmt: skip
        self._listener = Listener(config, host, port, setting="server.proxy_listen",
                                  fix="choose another address with STEPSCOPE_PROXY_LISTEN", backlog=512)  # fmt: skip

    @property
    def port(self) -> int:
        return self._listener.port

    @property
    def url(self) -> str:
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self.port}"

    async def start(self) -> None:
        """Bind, listen and serve. An address that cannot be bound raises `ConfigError` naming the setting."""
        if self._listener.started:
            return
        logging.getLogger("uvicorn.error").addFilter(self._filter)
        await self._listener.start()
        log.info("proxy listening on %s, relaying to %s", self.url, self.app.upstream)

    name = "proxy"

    async def stop(self, budget_s: float = 2.0) -> None:
        await self.shutdown()

    async def shutdown(self) -> None:
        await self._listener.shutdown()
        logging.getLogger("uvicorn.error").removeFilter(self._filter)
        await self.app.aclose()
