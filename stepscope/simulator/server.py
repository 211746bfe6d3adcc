"""`SimulatorServer`: the simulator under uvicorn in a background thread, for tests, demos and the CLI.

The listening socket is bound in the constructor's caller thread (port 0 picks a free port), so `url` is known
before `start()` returns, and an address that cannot be bound raises `ConfigError` at once. Dropped-connection
faults are honoured by a thin transport wrapper that aborts the socket when the app marks a response with
`x-sim-drop`, before any byte of it is written.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from types import TracebackType
from typing import Any

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from stepscope.errors import ConfigError
from stepscope.simulator.api import DROP_HEADER
from stepscope.simulator.core import Simulator

log = logging.getLogger(__name__)
_DROP_MARK = b"\r\n" + DROP_HEADER + b": 1\r\n"


def _bind_reason(exc: BaseException) -> str:
    """Why a bind failed, as a lower-case phrase: "address already in use", "name or service not known"."""
    text = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    return text[:1].lower() + text[1:]


class _DroppingTransport:
    """Delegates to the real transport, but aborts it instead of writing a response marked for dropping."""

    def __init__(self, inner: asyncio.Transport) -> None:
        self._inner = inner
        self._dropped = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._dropped:
            return
        if _DROP_MARK in bytes(data[:4096]):
            self._dropped = True
            self._inner.abort()
            return
        self._inner.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class DroppingH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with `_DroppingTransport` around each connection."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(_DroppingTransport(transport))  # type: ignore[arg-type]


def http_protocol() -> type[asyncio.Protocol]:
    """The fastest available HTTP/1.1 protocol with drop support: httptools when installed, else h11.

    httptools roughly doubles list-steps throughput (see tests/benchmarks/bench_simulator.py).
    """
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol  # noqa: PLC0415 - optional dependency
    except ImportError:
        return DroppingH11Protocol

    class DroppingHttpToolsProtocol(HttpToolsProtocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            super().connection_made(_DroppingTransport(transport))  # type: ignore[arg-type]

    return DroppingHttpToolsProtocol


class SimulatorServer:
    """Serve `simulator.app` on `host:port` from a daemon thread; a context manager. `shutdown()` is idempotent."""

    def __init__(self, simulator: Simulator, host: str = "127.0.0.1", port: int = 0, *, log_level: str = "warning"):
        self.simulator = simulator
        # proto must be IPPROTO_TCP: asyncio enables TCP_NODELAY on accepted sockets only then, and without it
        # Nagle plus delayed ACKs add ~40 ms to every keep-alive response.
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self._sock.bind((host, port))
        except (OSError, OverflowError) as exc:  # OverflowError: a port outside 0..65535
            self._sock.close()
            raise ConfigError([f"cannot listen on {host}:{port}: {_bind_reason(exc)}"]) from exc
        self.host, self.port = self._sock.getsockname()[:2]
        config = uvicorn.Config(
            simulator.app,
            http=http_protocol(),
            lifespan="on",
            access_log=False,
            log_level=log_level,
            timeout_graceful_shutdown=2,
        )
        self._server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    @property
    def root_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def url(self) -> str:
        """Base URL of the API: `.../v1` (OpenAI) or `.../api/projects/{project}` (Azure)."""
        return self.root_url + self.simulator.base_path

    def start(self, timeout: float = 10.0) -> SimulatorServer:
        """Start serving; returns once the server listens. Raises `RuntimeError` if it did not come up."""
        if self._thread is not None:
            return self
        self._thread = threading.Thread(target=self._run, name="stepscope-simulator", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("simulator server did not start")
            time.sleep(0.01)
        return self

    def _run(self) -> None:
        self._server.run(sockets=[self._sock])

    def run_forever(self) -> None:
        """Serve in the calling thread until `shutdown()` (or uvicorn's own signal handling) stops it."""
        self._server.run(sockets=[self._sock])

    def shutdown(self, timeout: float = 10.0) -> None:
        self._server.should_exit = True
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout)
        self._sock.close()

    def __enter__(self) -> SimulatorServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.shutdown()
