"""ASGI applications and a server fixture for the server's unit tests: what each test serves, on real sockets."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from stepscope.protocols.base import AnswerSink, Route
from stepscope.receivers.asgi import DISCONNECT, TUNNEL, TUNNEL_CLOSE, TUNNEL_DATA, Message, Receive, Scope, Send
from stepscope.receivers.proxy import ProxyApp, ProxyServer
from stepscope.receivers.server import AsgiServer, ServerLimits
from tests.kit.fakes import Counters


@dataclass
class Recorder:
    """An ASGI application whose behaviour the path picks; it records what it saw.

    `/stream`: three parts without a length (chunked); `/hold`: waits for `release`; `/gone`: reads the body, then
    waits for `http.disconnect`; `/boom`: raises; `/slow-read`: reads its body one message per 20 ms; `/big`:
    answers `size` bytes in 64 KiB parts; `/upgrade`: answers 101 and echoes the tunnel upper-cased; anything
    else: a JSON echo with a length.
    """

    calls: list[Scope] = field(default_factory=list)
    messages: list[Message] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    disconnected: asyncio.Event = field(default_factory=asyncio.Event)
    running: int = 0
    most_running: int = 0
    finished: int = 0
    size: int = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                kind = (await receive())["type"]
                await send({"type": kind + ".complete"})
                if kind == "lifespan.shutdown":
                    return
        self.calls.append(scope)
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        try:
            await self._serve(scope, receive, send)
        finally:
            self.running -= 1
            self.finished += 1

    async def _serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope["path"]
        if path == "/upgrade" and TUNNEL in scope["extensions"]:
            await self._tunnel(receive, send)
            return
        if path == "/boom":
            raise RuntimeError("a bug in the application")
        body = await self._body(receive, slow=path == "/slow-read")
        if path == "/hold":
            await self.release.wait()
        if path == "/gone":
            while (message := await receive())["type"] != "http.disconnect":
                pass
            self.messages.append(message)
            assert scope["extensions"][DISCONNECT].done()
            self.disconnected.set()
            return
        if path == "/stream":
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
            for part in (b"one,", b"two,", b"three"):
                await send({"type": "http.response.body", "body": part, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
            return
        if path == "/big":
            head = [(b"content-length", str(self.size).encode())]
            await send({"type": "http.response.start", "status": 200, "headers": head})
            left = self.size
            while left > 0:
                size = min(left, 65536)
                left -= size
                await send({"type": "http.response.body", "body": b"x" * size, "more_body": left > 0})
            return
        echo = {"method": scope["method"], "path": path, "raw_path": scope["raw_path"].decode(), "body": len(body),
                "query": scope["query_string"].decode(), "client_port": scope["client"][1]}  # fmt: skip
        payload = json.dumps(echo).encode()
        head = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": head})
        await send({"type": "http.response.body", "body": payload})

    async def _body(self, receive: Receive, *, slow: bool) -> bytes:
        chunks = []
        while True:
            message = await receive()
            self.messages.append({**message, "body": len(message.get("body", b""))})
            chunks.append(message.get("body", b""))
            if slow:
                await asyncio.sleep(0.02)
            if message["type"] != "http.request" or not message.get("more_body"):
                return b"".join(chunks)

    async def _tunnel(self, receive: Receive, send: Send) -> None:
        head = [(b"upgrade", b"echo"), (b"connection", b"upgrade")]
        await send({"type": "http.response.start", "status": 101, "headers": head})
        while (message := await receive())["type"] == TUNNEL_DATA:
            await send({"type": TUNNEL_DATA, "data": message["data"].upper()})
        self.messages.append(message)
        self.disconnected.set()
        await send({"type": TUNNEL_CLOSE})


@contextlib.asynccontextmanager
async def serving(app: Any, limits: ServerLimits | None = None, drops: Counters | None = None) -> AsyncIterator[int]:
    """`app` served on 127.0.0.1 (a free port) within `limits`, on the running loop; yields the port."""
    server = AsgiServer(app, "127.0.0.1", 0, setting="test.listen", fix="pick another", name="test",
                        limits=limits or ServerLimits(), drops=drops or Counters())  # fmt: skip
    await server.start()
    try:
        yield server.port
    finally:
        await server.stop(1.0)


Handler = Callable[[bytes, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class RawUpstream:
    """An upstream on 127.0.0.1 written against raw sockets, so tests see exactly what the proxy sends and when it
    lets go: `handlers` map a path prefix to `handler(head, reader, writer)`; `open` counts connections the proxy
    holds, `heads` keeps every request head, `received` what arrived after a head."""

    def __init__(self, handlers: dict[str, Handler]) -> None:
        self.handlers = handlers
        self.open = 0
        self.most_open = 0
        self.heads: list[bytes] = []
        self.received = bytearray()
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def __aenter__(self) -> RawUpstream:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._handlers:
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        task.add_done_callback(self._handlers.discard)
        self.open += 1
        self.most_open = max(self.most_open, self.open)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                self.heads.append(head)
                path = head.split(b" ", 2)[1].decode()
                handler = next(h for prefix, h in self.handlers.items() if path.startswith(prefix))
                await handler(head, reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self.open -= 1
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def wait_open(self, count: int, within_s: float = 2.0) -> None:
        """Wait until exactly `count` connections are open."""
        async with asyncio.timeout(within_s):
            while self.open != count:  # noqa: ASYNC110 - a counter the handlers change; polling is simplest
                await asyncio.sleep(0.005)


async def hang(head: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Never answer: wait until the proxy closes the connection."""
    await reader.read()
    raise ConnectionError


async def ok(head: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A small JSON answer with a length."""
    writer.write(b'HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 12\r\n\r\n{"ok": true}')
    await writer.drain()


async def trickle(head: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """An endless event stream, one chunked event every 20 ms."""
    writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
    n = 0
    while True:
        event = b'event: tick\ndata: {"n": %d}\n\n' % n
        writer.write(b"%x\r\n%b\r\n" % (len(event), event))
        await writer.drain()
        n += 1
        await asyncio.sleep(0.02)


@dataclass
class Sink:
    """An `AnswerSink` keeping every call."""

    calls: list[tuple[str, Any]] = field(default_factory=list)

    def wants(self, event: str) -> bool:
        return event != "unwanted"

    def event(self, event: str, data: Mapping[str, Any] | None) -> None:
        self.calls.append(("event", (event, dict(data) if data is not None else None)))

    def body(self, data: object) -> None:
        self.calls.append(("body", data))

    def ended(self, complete: bool, stream: bool) -> None:
        self.calls.append(("ended", (complete, stream)))


@dataclass
class Observer:
    """A `ProxyObserver` routing every path under `/v1/watched` (and WebSockets to `/v1/responses`) to one sink."""

    sink: Sink = field(default_factory=Sink)

    def route(self, method: str, path: str) -> Route | None:
        return Route("watched") if path.startswith(("/v1/watched", "/v1/responses")) else None

    def answer(self, route: Route, traceparent: str | None) -> AnswerSink | None:
        return self.sink


@contextlib.asynccontextmanager
async def proxy_to(upstream: str, **app: Any) -> AsyncIterator[tuple[ProxyServer, Counters]]:
    drops = Counters()
    server = ProxyServer(ProxyApp(upstream, app.pop("observer", None), drops=drops, **app), "127.0.0.1", 0)
    await server.start()
    try:
        yield server, drops
    finally:
        await server.stop(1.0)
