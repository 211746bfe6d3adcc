"""The sidecar's HTTP surface (ASGI, served by uvicorn on the event loop).

- `GET /metrics`: Prometheus text, or OpenMetrics with exemplars when the scraper asks for it.
- `GET /healthz`: 200 while the event loop and the poller are alive (liveness).
- `GET /readyz`: 200 once configured, the store is open and the server is up. Never depends on reaching the
  Assistants API: a sidecar's readiness gates its whole pod.
- `POST /v1/watch`, `DELETE /v1/watch`: register or drop a thread (and optionally a run); JSON body
  `{"thread_id": "thread_...", "run_id": "run_..."}`; bearer-token protected when a token is configured.
- `GET /v1/status`: JSON health for humans and scripts.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import re
import socket
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from typing import Any, Protocol

import uvicorn
from prometheus_client import CollectorRegistry, make_asgi_app

log = logging.getLogger("stepscope.server")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

THREAD_ID = re.compile(r"^thread_[A-Za-z0-9_-]{1,64}$")
RUN_ID = re.compile(r"^run_[A-Za-z0-9_-]{1,64}$")


class Service(Protocol):
    """What the HTTP server asks of the running service."""

    def alive(self) -> bool: ...

    def ready(self) -> bool: ...

    def status(self) -> dict[str, Any]: ...

    def watch(self, thread_id: str, run_id: str | None) -> bool: ...

    def unwatch(self, thread_id: str, run_id: str | None) -> None: ...


class HttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


async def _respond(send: Send, status: int, body: dict[str, Any] | str) -> None:
    if isinstance(body, dict):
        payload, ctype = json.dumps(body).encode(), b"application/json"
    else:
        payload, ctype = body.encode(), b"text/plain; charset=utf-8"
    headers = [(b"content-type", ctype), (b"content-length", str(len(payload)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


class App:
    """The ASGI application. `max_body` bounds `/v1/watch` bodies; `token` protects them when non-empty."""

    def __init__(self, service: Service, registry: CollectorRegistry, *, token: str = "", max_body: int = 16_384):
        self._service = service
        self._metrics = make_asgi_app(registry)
        self._token = token
        self._max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        path, method = scope["path"], scope["method"]
        try:
            if path == "/metrics":
                await self._metrics(scope, receive, send)
            elif path == "/healthz":
                self._only(method, "GET", "HEAD")
                ok = self._service.alive()
                await _respond(send, 200 if ok else 503, "ok\n" if ok else "poll loop stopped\n")
            elif path == "/readyz":
                self._only(method, "GET", "HEAD")
                ok = self._service.ready()
                await _respond(send, 200 if ok else 503, "ready\n" if ok else "not ready\n")
            elif path == "/v1/status":
                self._only(method, "GET")
                await _respond(send, 200, self._service.status())
            elif path == "/v1/watch":
                self._only(method, "POST", "DELETE")
                await _respond(send, *(await self._watch(scope, receive, method)))
            else:
                raise HttpError(404, "not found")
        except HttpError as exc:
            await _respond(send, exc.status, {"error": str(exc)})

    @staticmethod
    def _only(method: str, *allowed: str) -> None:
        if method not in allowed:
            raise HttpError(405, f"method {method} not allowed")

    async def _watch(self, scope: Scope, receive: Receive, method: str) -> tuple[int, dict[str, Any]]:
        if self._token:
            given = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
            if not hmac.compare_digest(given.encode(), f"Bearer {self._token}".encode()):
                raise HttpError(401, "missing or wrong bearer token")
        body = await self._read_body(receive)
        try:
            data = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise HttpError(400, "body must be JSON") from None
        if not isinstance(data, dict):
            raise HttpError(400, "body must be a JSON object")
        thread_id, run_id = data.get("thread_id"), data.get("run_id")
        if not isinstance(thread_id, str) or not THREAD_ID.match(thread_id):
            raise HttpError(400, "thread_id must look like thread_...")
        if run_id is not None and (not isinstance(run_id, str) or not RUN_ID.match(run_id)):
            raise HttpError(400, "run_id must look like run_...")
        if method == "DELETE":
            self._service.unwatch(thread_id, run_id)
            return 200, {"thread_id": thread_id, "run_id": run_id, "watching": False}
        if not self._service.watch(thread_id, run_id):
            raise HttpError(409, "another shard owns this thread")
        return 202, {"thread_id": thread_id, "run_id": run_id, "watching": True}

    async def _read_body(self, receive: Receive) -> bytes:
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise HttpError(400, "client disconnected")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self._max_body:
                raise HttpError(413, f"body larger than {self._max_body} bytes")
            chunks.append(chunk)
            if not message.get("more_body"):
                return b"".join(chunks)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return


class _QuietServer(uvicorn.Server):
    """uvicorn without its own signal handling: the service owns SIGTERM/SIGINT and shuts uvicorn down."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class HttpServer:
    """uvicorn on a pre-bound socket. `start()` binds (so errors surface at once) and returns; `shutdown()` is
    idempotent."""

    def __init__(self, app: Any, host: str, port: int) -> None:
        self._app = app
        self._host = host
        self._port = port
        self._server: _QuietServer | None = None
        self._task: asyncio.Task[None] | None = None
        self._sock: socket.socket | None = None

    @property
    def port(self) -> int:
        return self._sock.getsockname()[1] if self._sock is not None else self._port

    @property
    def started(self) -> bool:
        return self._server is not None and self._server.started

    async def start(self) -> None:
        """Bind, listen and serve; returns once uvicorn serves. An address that cannot be bound (in use, not
        local, unknown host) raises `ConfigError` naming `server.listen`, so the CLI prints one line and exits 2."""
        from stepscope.errors import ConfigError  # noqa: PLC0415 - the only user in this module

        if self._task is not None:
            return
        family = socket.AF_INET6 if ":" in self._host else socket.AF_INET
        # proto IPPROTO_TCP: only then does asyncio set TCP_NODELAY on accepted sockets; without it Nagle and
        # delayed ACKs add ~40 ms to every keep-alive response (measured on POST /v1/watch).
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self._host, self._port))
        except (OSError, OverflowError) as exc:  # OverflowError: a port outside 0..65535
            sock.close()
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            address = f"[{self._host}]:{self._port}" if family == socket.AF_INET6 else f"{self._host}:{self._port}"
            raise ConfigError(
                [
                    f"cannot listen on {address} (server.listen): {reason[:1].lower()}{reason[1:]}; "
                    "choose another address with --listen or STEPSCOPE_LISTEN"
                ]
            ) from exc
        sock.listen(128)
        sock.setblocking(False)
        self._sock = sock
        config = uvicorn.Config(
            self._app, log_config=None, access_log=False, lifespan="on", timeout_graceful_shutdown=2
        )
        self._server = _QuietServer(config)
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]), name="stepscope-http")
        for _ in range(200):  # wait until uvicorn serves (normally within milliseconds)
            if self._server.started or self._task.done():
                break
            await asyncio.sleep(0.01)
        if self._task.done():
            await self._task  # re-raise a start-up failure

    async def shutdown(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self._sock is not None:
            self._sock.close()
