"""Test helpers: the proxy on its own event loop in a thread, a recorder of what the Assistants observer reads,
and a byte-counting upstream for big bodies."""

from __future__ import annotations

import asyncio
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
from stepscope.receivers.listener import Message, Receive, Scope, Send
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
