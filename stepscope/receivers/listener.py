"""One way to serve an ASGI application on the running event loop: the HTTP surface and the proxy both use it.

`Listener.start()` binds first, so an address in use (or not local, or a port out of range) fails at once as a
`ConfigError` naming the setting and the fix, then runs uvicorn on that socket and returns once it serves.
`shutdown()` is idempotent and safe without `start()`. uvicorn's own signal handling is off: the sidecar owns
SIGTERM and SIGINT and shuts the listener down in its turn.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from typing import Any

import uvicorn

from stepscope.errors import ConfigError

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
"""The ASGI interface both applications implement."""


class _QuietServer(uvicorn.Server):
    """uvicorn without its own signal handling."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class Listener:
    """uvicorn serving `config.app` on `host:port`. `setting` and `fix` word the one-line error of a failed bind."""

    def __init__(self, config: uvicorn.Config, host: str, port: int, *, setting: str, fix: str, backlog: int = 128):
        self._config = config
        self._host = host
        self._port = port
        self._setting = setting
        self._fix = fix
        self._backlog = backlog
        self._server: _QuietServer | None = None
        self._task: asyncio.Task[None] | None = None
        self._sock: socket.socket | None = None

    @property
    def port(self) -> int:
        """The bound port (the real one after binding port 0)."""
        return self._sock.getsockname()[1] if self._sock is not None else self._port

    @property
    def started(self) -> bool:
        return self._server is not None and self._server.started

    async def start(self) -> None:
        if self._task is not None:
            return
        self._sock = self._bind()
        self._server = _QuietServer(self._config)
        self._task = asyncio.create_task(self._server.serve(sockets=[self._sock]), name=f"stepscope-{self._setting}")
        for _ in range(200):  # wait until uvicorn serves (normally within milliseconds)
            if self._server.started or self._task.done():
                break
            await asyncio.sleep(0.01)
        if self._task.done():
            await self._task  # re-raise a start-up failure

    def _bind(self) -> socket.socket:
        family = socket.AF_INET6 if ":" in self._host else socket.AF_INET
        # proto IPPROTO_TCP: only then does asyncio set TCP_NODELAY on accepted sockets; without it Nagle and
        # delayed ACKs add ~40 ms to every keep-alive response.
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self._host, self._port))
        except (OSError, OverflowError) as exc:  # OverflowError: a port outside 0..65535
            sock.close()
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            address = f"[{self._host}]:{self._port}" if family == socket.AF_INET6 else f"{self._host}:{self._port}"
            problem = f"cannot listen on {address} ({self._setting}): {reason[:1].lower()}{reason[1:]}; {self._fix}"
            raise ConfigError([problem]) from exc
        sock.listen(self._backlog)
        sock.setblocking(False)
        return sock

    async def stop(self, budget_s: float = 2.0) -> None:
        """The component's stop: `shutdown()`."""
        await self.shutdown()

    async def shutdown(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None
