"""Test helpers: the proxy on its own event loop in a thread, and a byte-counting upstream for big bodies."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any

import uvicorn

from stepscope.receivers.listener import Message, Receive, Scope, Send
from stepscope.receivers.proxy import ProxyApp, ProxyServer, RunFeed


class ProxyThread:
    """`ProxyServer` for `upstream` on 127.0.0.1 (a free port), served from a daemon thread; a context manager."""

    def __init__(self, upstream: str, feed: RunFeed, *, dropped: Callable[[str, int], None] | None = None) -> None:
        # Without a counter the app keeps its own default, so the argument is passed only when given.
        self.app = ProxyApp(upstream, feed, dropped=dropped) if dropped else ProxyApp(upstream, feed)
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
