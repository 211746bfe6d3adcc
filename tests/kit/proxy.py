"""Test helpers: the proxy on its own event loop in a thread, a recorder of what the Assistants observer reads,
a byte-counting upstream for big bodies, and a raw HTTP/1.1 client for what a client library would not send."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import uvicorn

from stepscope.core.records import Drops, UnitRef
from stepscope.protocols.assistants.proxied import RunEvents, RunObserver
from stepscope.protocols.base import ProxyObserver
from stepscope.receivers.asgi import Message, Receive, Scope, Send
from stepscope.receivers.proxy import ProxyApp, ProxyServer
from tests.kit.fakes import Counters


@dataclass
class RecordingRuns:
    """`RunEvents` that keeps every call, in order: `calls` holds `(method, args)`."""

    calls: list[tuple[str, tuple[Any, ...]]] = field(default_factory=list)

    def run_created(self, run: Mapping[str, Any], traceparent: str | None) -> None:
        self.calls.append(("run_created", (dict(run), traceparent)))

    def stream_event(self, event: str, data: Mapping[str, Any]) -> None:
        self.calls.append(("stream_event", (event, dict(data))))

    def stream_ended(self, ref: UnitRef, complete: bool) -> None:
        self.calls.append(("stream_ended", (ref.container_id, ref.unit_id, complete)))

    def submit_sent(self, ref: UnitRef) -> None:
        self.calls.append(("submit_sent", (ref.container_id, ref.unit_id)))

    def of(self, method: str) -> list[tuple[Any, ...]]:
        """The arguments of every call to `method`, in order."""
        return [args for name, args in self.calls if name == method]


class ProxyThread:
    """`ProxyServer` for `upstream` on 127.0.0.1 (a free port), served from a daemon thread; a context manager.

    `runs` are told what the Assistants observer reads of the answers (`observer` replaces that observer);
    `drops` counts what the proxy drops (default: a fresh `Counters`).
    """

    def __init__(
        self,
        upstream: str,
        runs: RunEvents | None = None,
        *,
        drops: Drops | None = None,
        observer: ProxyObserver | None = None,
    ) -> None:
        self.drops = drops if drops is not None else Counters()
        if observer is None and runs is not None:
            observer = RunObserver(runs, drops=self.drops)
        self.app = ProxyApp(upstream, observer, drops=self.drops)
        self.server = ProxyServer(self.app, "127.0.0.1", 0)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="test-proxy", daemon=True)

    @property
    def root(self) -> str:
        return self.server.url

    def __enter__(self) -> ProxyThread:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(), self._loop).result(10)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        asyncio.run_coroutine_threadsafe(self.server.shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


class CountingUpstream:
    """ASGI app that reads any request body counting its bytes, then answers `answer_bytes` generated in
    64 KiB chunks: neither side ever holds a whole body."""

    def __init__(self, answer_bytes: int) -> None:
        self.answer_bytes = answer_bytes
        self.received: list[int] = []
        self.requests: list[tuple[str, str, list[tuple[bytes, bytes]]]] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                kind = (await receive())["type"]
                await send({"type": kind + ".complete"})
                if kind == "lifespan.shutdown":
                    return
        self.requests.append((scope["method"], scope["path"], list(scope["headers"])))
        size = 0
        while True:
            message: Message = await receive()
            size += len(message.get("body", b""))
            if not message.get("more_body"):
                break
        self.received.append(size)
        length = str(self.answer_bytes).encode()
        headers = [(b"content-type", b"application/octet-stream"), (b"content-length", length)]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        chunk = b"x" * 65536
        left = self.answer_bytes
        while left > 0:
            part = chunk[: min(left, len(chunk))]
            left -= len(part)
            await send({"type": "http.response.body", "body": part, "more_body": left > 0})
        if self.answer_bytes == 0:
            await send({"type": "http.response.body", "body": b""})


def serve_in_thread(app: Any) -> tuple[str, Callable[[], None]]:
    """Serve an ASGI app under uvicorn on 127.0.0.1 from a thread: (root URL, stop)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, access_log=False, lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "upstream did not start"
        time.sleep(0.01)

    def stop() -> None:
        server.should_exit = True
        thread.join(10)
        sock.close()

    return f"http://127.0.0.1:{sock.getsockname()[1]}", stop


@dataclass
class RawAnswer:
    """One HTTP/1.1 answer as it came over the wire: status, headers (names lower-cased, in order), body, and
    whether it was chunked."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes
    chunked: bool = False

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k == name), None)

    def json(self) -> Any:
        return json.loads(self.body)


class RawClient:
    """One raw TCP connection to 127.0.0.1:`port`, for what an HTTP client library would not send (half requests,
    pipelines, absolute-form targets) or would hide (framing, the connection's end)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int) -> RawClient:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def answer(self, *, head: bool = False, within_s: float = 5.0) -> RawAnswer:
        """Read one whole answer (`head`: to a HEAD request, so without a body)."""
        return await asyncio.wait_for(self._answer(head), within_s)

    async def _answer(self, head: bool) -> RawAnswer:
        lines = (await self.reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = [(k.strip().lower(), v.strip()) for k, _, v in (line.partition(":") for line in lines[1:] if line)]
        found = dict(headers)
        if head or status in (204, 304) or status < 200:
            return RawAnswer(status, headers, b"")
        if "content-length" in found:
            return RawAnswer(status, headers, await self.reader.readexactly(int(found["content-length"])))
        if found.get("transfer-encoding") == "chunked":
            body = b""
            while size := int((await self.reader.readuntil(b"\r\n")).strip(), 16):
                body += await self.reader.readexactly(size)
                await self.reader.readexactly(2)
            await self.reader.readexactly(2)
            return RawAnswer(status, headers, body, chunked=True)
        return RawAnswer(status, headers, await self.reader.read())

    async def closed(self, within_s: float = 5.0) -> bool:
        """Whether the server closes the connection within `within_s` seconds (anything it sends is dropped); the
        connection is closed on this side too then."""
        try:
            async with asyncio.timeout(within_s):
                while await self.reader.read(65536):
                    pass
        except TimeoutError:
            return False
        except ConnectionError:
            pass
        await self.close()
        return True

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()
