"""One listening socket and its accept loop, for both of stepscope's listeners (the HTTP surface and the proxy).

`Listener.bind()` binds first, so an address in use (or not local, or a port out of range) fails at once as a
`ConfigError` naming the setting and the fix, in one line. `accept()` then runs its own accept loop rather than
asyncio's, so that it can bound what it holds and say what went wrong once rather than once per attempt:

- at its connection cap (`server.connection_cap`), a connection takes the place of one the server reclaims (one
  that has waited long for a request: `ServerLimits.reclaim_after`); failing that it is answered 503 and closed
  at once, never queued; the answer goes out before the close and what the client sent is read and dropped for up
  to a second, so the client reads the 503 rather than a reset;
- out of descriptors (EMFILE, ENFILE), it closes a spare descriptor it keeps for that moment, accepts, answers
  503 and closes, then takes the spare again, so waiting clients are answered rather than left in the backlog;
- each of those is counted (`listener_full`) and logged as an episode: one warning when it starts (at most one a
  minute) and one line with the number of refused connections when it ends. No traceback per attempt.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
import time
from collections.abc import Callable

from stepscope.contract.vocabulary import DropReason
from stepscope.errors import ConfigError
from stepscope.receivers import wire

log = logging.getLogger("stepscope.receivers.listener")

_OUT_OF_DESCRIPTORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
_LINGER_S = 1.0  # how long a refused connection is read and dropped before it is closed
_LINGERING_MAX = 64  # refused connections lingering at once; past it they are closed at once
_EPISODE_LOG_S = 60.0


class _Refuser(asyncio.Protocol):
    """A refused connection: the 503 goes out, then the write side closes; what the client sends is dropped."""

    def __init__(self, listener: Listener) -> None:
        self._listener = listener
        self._timer: asyncio.TimerHandle | None = None
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._listener.refusers.add(self)
        transport.write(wire.FULL.bytes)
        transport.write_eof()
        self._timer = asyncio.get_running_loop().call_later(_LINGER_S, transport.abort)

    def data_received(self, data: bytes) -> None:
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._listener.lingering -= 1
        self._listener.refusers.discard(self)

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()


class Listener:
    """A socket bound to `host:port`. `setting` and `fix` word the one-line error of a failed bind; `name` (the
    listener's, for log lines) and `count` (where refusals are counted) serve the accept loop."""

    def __init__(
        self, host: str, port: int, *, setting: str, fix: str, name: str, count: Callable[[DropReason], None],
        backlog: int = 512,
    ) -> None:  # fmt: skip
        self.host = host
        self._port = port
        self._setting = setting
        self._fix = fix
        self.name = name
        self._count = count
        self._backlog = backlog
        self._sock: socket.socket | None = None
        self._spare: int | None = None
        self.lingering = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self.refusers: set[_Refuser] = set()
        self.refused = 0  # connections refused in the current episode
        self._episode: str | None = None  # "full" or "descriptors" while an episode lasts
        self._episode_logged = False
        self._logged_at = float("-inf")

    @property
    def port(self) -> int:
        """The bound port (the real one after binding port 0)."""
        return int(self._sock.getsockname()[1]) if self._sock is not None else self._port

    @property
    def bound(self) -> bool:
        return self._sock is not None

    def bind(self) -> None:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        # proto IPPROTO_TCP: accepted sockets inherit it, and only then does asyncio set TCP_NODELAY on their
        # transports; without it Nagle and delayed ACKs add ~40 ms to every keep-alive answer.
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self._port))
        except (OSError, OverflowError) as exc:  # OverflowError: a port outside 0..65535
            sock.close()
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            address = f"[{self.host}]:{self._port}" if family == socket.AF_INET6 else f"{self.host}:{self._port}"
            problem = f"cannot listen on {address} ({self._setting}): {reason[:1].lower()}{reason[1:]}; {self._fix}"
            raise ConfigError([problem]) from exc
        sock.listen(self._backlog)
        sock.setblocking(False)
        self._sock = sock
        with contextlib.suppress(OSError):
            self._spare = os.open(os.devnull, os.O_RDONLY)

    async def accept(
        self, protocol: Callable[[], asyncio.Protocol], open_count: Callable[[], int], cap: int,
        reclaim: Callable[[], bool] = lambda: False,
    ) -> None:  # fmt: skip
        """Accept until cancelled: a connection gets `protocol()` while fewer than `cap` are open or `reclaim()`
        closed one to make room, else a 503."""
        sock = self._sock
        assert sock is not None
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, _ = await loop.sock_accept(sock)
            except OSError as exc:
                if exc.errno in _OUT_OF_DESCRIPTORS:
                    self._begin("descriptors", f"out of file descriptors ({exc.strerror}; ulimit -n): answering 503")
                    shed = self._shed(sock)
                    if shed is None:
                        await asyncio.sleep(0.1)  # no spare descriptor to answer with: let some close first
                    elif not shed:
                        # Linux fails accept() with EMFILE even with nobody waiting: wait for someone, not spin.
                        await _readable(loop, sock)
                    continue
                if exc.errno in (errno.ECONNABORTED, errno.EPROTO, errno.EPERM):
                    continue  # the client gave up before it was accepted
                raise
            conn.setblocking(False)
            if open_count() >= cap and not reclaim():
                self._begin("full", f"{cap} connections open, its limit: answering 503")
                self._refuse(loop, conn)
                continue
            self._end()
            try:
                await loop.connect_accepted_socket(protocol, conn)
            except OSError:  # the connection failed between accept and setup: nothing to serve
                conn.close()

    def _refuse(self, loop: asyncio.AbstractEventLoop, conn: socket.socket) -> None:
        self.refused += 1
        self._count(DropReason.LISTENER_FULL)
        if self.lingering >= _LINGERING_MAX:
            _answer_and_close(conn)
            return
        self.lingering += 1
        task = loop.create_task(self._linger(loop, conn))
        self._tasks.add(task)  # held until done: the loop keeps only a weak reference
        task.add_done_callback(self._tasks.discard)

    async def _linger(self, loop: asyncio.AbstractEventLoop, conn: socket.socket) -> None:
        try:
            await loop.connect_accepted_socket(lambda: _Refuser(self), conn)
        except (OSError, asyncio.CancelledError):  # gone before it was set up (or the server stops): just close
            conn.close()
            self.lingering -= 1

    def _shed(self, sock: socket.socket) -> bool | None:
        """Answer one waiting connection with the spare descriptor: True when one was answered, False when nobody
        was waiting, None when there is no spare."""
        if self._spare is None:
            return None
        os.close(self._spare)
        self._spare = None
        answered = False
        try:
            conn, _ = sock.accept()
        except OSError:
            pass
        else:
            answered = True
            self.refused += 1
            self._count(DropReason.LISTENER_FULL)
            _answer_and_close(conn)
        with contextlib.suppress(OSError):
            self._spare = os.open(os.devnull, os.O_RDONLY)
        return answered

    def _begin(self, kind: str, what: str) -> None:
        if self._episode == kind:
            return
        self._end()
        self._episode = kind
        now = time.monotonic()
        self._episode_logged = now - self._logged_at >= _EPISODE_LOG_S
        if self._episode_logged:
            self._logged_at = now
            log.warning("%s (%s): %s until connections close", self.name, self._setting, what)

    def _end(self) -> None:
        if self._episode is None:
            return
        self._episode = None
        if self._episode_logged:  # else the count goes into the next episode's line: one report a minute at most
            log.info("%s (%s): accepting again; %d connection(s) were answered 503 since the last report",
                     self.name, self._setting, self.refused)  # fmt: skip
            self.refused = 0

    def close(self) -> None:
        """Stop listening; refused connections still lingering are closed now."""
        for refuser in list(self.refusers):
            refuser.abort()
        for task in list(self._tasks):
            task.cancel()
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._spare is not None:
            os.close(self._spare)
            self._spare = None


async def _readable(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
    """Wait until a connection waits on the listening socket."""
    ready: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(sock.fileno(), wake)
    try:
        await ready
    finally:
        loop.remove_reader(sock.fileno())


def _answer_and_close(conn: socket.socket) -> None:
    """The 503 on a socket not handed to asyncio: one non-blocking send (it fits any socket buffer), then close."""
    with contextlib.suppress(OSError):
        conn.send(wire.FULL.bytes)
        conn.shutdown(socket.SHUT_WR)
    conn.close()
