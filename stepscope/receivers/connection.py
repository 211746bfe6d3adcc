"""One HTTP/1.1 connection of `stepscope.receivers.server`: httptools' public parser fed by an asyncio protocol.

A connection serves one request at a time. Requests pipelined behind it are parsed and queued (reading pauses
until the current one is done); the next starts when the application's task has ended. Request bodies go to
`receive()` as they arrive, and reading pauses while more than `_HIGH_WATER` bytes wait for the application.

Refused before any application code runs, each with a whole answer of the server's own and the connection
closed: `CONNECT` (405) and any target that is not origin-form, such as `GET http://elsewhere/` (400); a malformed
request (400); a head past `max_head` bytes (431); an `Upgrade:` request on a listener that does not relay them
(501). A head not complete within `header_timeout` gets 408; see `server.ServerLimits` for every other bound.
"""

from __future__ import annotations

import asyncio
import collections
import urllib.parse
from collections.abc import Callable
from typing import TYPE_CHECKING

import httptools

from stepscope.contract.vocabulary import DropReason
from stepscope.receivers import wire
from stepscope.receivers.asgi import ASGI_VERSION, DISCONNECT, TUNNEL, Scope
from stepscope.receivers.cycle import RequestCycle

if TYPE_CHECKING:
    from stepscope.receivers.server import ServerState

_HIGH_WATER = 64 * 1024
"""Bytes of request body (or of a tunnel's inbound stream) buffered for the application before reading pauses."""
_DISCARD_MAX = 16 * 1024 * 1024
"""Bytes of an unread request body dropped after its answer went out, to keep the connection; past it, closed."""


class _Refused(Exception):
    """Raised in a parser callback to stop parsing and answer `refusal` instead."""

    def __init__(self, refusal: wire.Refusal) -> None:
        super().__init__(refusal.code)
        self.refusal = refusal


class HttpConnection(asyncio.Protocol):
    """The protocol of one accepted connection; `state` is its server's."""

    def __init__(self, state: ServerState) -> None:
        self.state = state
        self.loop = state.loop
        self.transport: asyncio.Transport | None = None
        self.lost: asyncio.Future[None] = self.loop.create_future()
        self._parser = httptools.HttpRequestParser(self)
        self._peer: tuple[str, int] | None = None
        self._local: tuple[str, int] | None = None
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._expect = False
        self._in_head = False
        self._head_bytes = 0  # what the parser reported of the head: request target and headers
        self._head_raw = 0  # bytes received while a head was incomplete
        self._parsing: RequestCycle | None = None  # the request whose body the parser is reading
        self.active: RequestCycle | None = None  # the request the application serves
        self._queue: collections.deque[RequestCycle] = collections.deque()
        self._timer: asyncio.TimerHandle | None = None
        self._idle = False  # between requests on a keep-alive connection (the idle timer runs)
        self._waiting_at: float | None = None  # loop time it began to wait for a request; None while it serves one
        self._upgraded = False  # an upgrade request's head was read: what follows is the new protocol's
        self._read_paused = False
        self._writable: asyncio.Future[None] | None = None  # set while the transport's buffer is full
        self.tunnel_in = bytearray()
        self.tunnel_at = 0.0  # monotonic time of a tunnel's last byte either way
        self.tunneling = False
        self._discarded = 0  # bytes of an answered request's body dropped so far

    # --- asyncio protocol ------------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self._peer = _address(transport.get_extra_info("peername"))
        self._local = _address(transport.get_extra_info("sockname"))
        self.state.connections.add(self)
        self._waiting_at = self.loop.time()
        self._arm(self.state.limits.header_timeout, self._head_timed_out)

    def connection_lost(self, exc: Exception | None) -> None:
        self.state.connections.discard(self)
        self._disarm()
        if not self.lost.done():
            self.lost.set_result(None)
        for cycle in (self.active, *self._queue):
            if cycle is not None:
                cycle.disconnect()
        self.resume_writing()  # a sender waiting to drain goes on (its sends are dropped now)

    def eof_received(self) -> bool | None:
        return None  # the client is done: close (an HTTP client that half-closes gets no answer, as with uvicorn)

    @property
    def writing_paused(self) -> bool:
        return self._writable is not None

    def pause_writing(self) -> None:
        if self._writable is None:
            self._writable = self.loop.create_future()

    def resume_writing(self) -> None:
        if self._writable is not None:
            if not self._writable.done():
                self._writable.set_result(None)
            self._writable = None

    def data_received(self, data: bytes) -> None:
        if self._upgraded:
            self.tunnel_at = self.loop.time()
            self.tunnel_in += data
            if len(self.tunnel_in) > _HIGH_WATER:
                self.pause_reading()
            if self.active is not None:
                self.active.wake()
            return
        counted = self._in_head
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            # The head of an upgrade request ended at this offset; what follows belongs to the new protocol.
            self._upgraded = True
            self.tunnel_in += data[upgrade.args[0] :]
            return
        except httptools.HttpParserError as exc:
            refused = exc.__context__
            self.refuse(refused.refusal if isinstance(refused, _Refused) else wire.MALFORMED)
            return
        if counted:
            self._head_raw += len(data)
        if self._in_head and self._head_raw > self.state.limits.max_head:
            self.refuse(wire.HEAD_TOO_LARGE)  # a head that never ends: httptools would buffer it all

    # --- parser callbacks --------------------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = []
        self._expect = False
        self._in_head = True
        self._head_bytes = 0
        self._head_raw = 0
        if self._idle:
            # A new request on an idle keep-alive connection: its head now has header_timeout to arrive.
            self._waiting_at = self.loop.time()
            self._arm(self.state.limits.header_timeout, self._head_timed_out)

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._head_bytes += len(url)
        if self._head_bytes > self.state.limits.max_head:
            raise _Refused(wire.HEAD_TOO_LARGE)

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        value = value.rstrip(b" \t")  # llhttp keeps trailing whitespace, which RFC 9110 excludes from the value
        if name == b"expect" and value.lower() == b"100-continue":
            self._expect = True
        self._headers.append((name, value))
        self._head_bytes += len(name) + len(value) + 4
        if self._head_bytes > self.state.limits.max_head:
            raise _Refused(wire.HEAD_TOO_LARGE)

    def on_headers_complete(self) -> None:
        self._in_head = False
        parser = self._parser
        method = parser.get_method()
        if method == b"CONNECT":
            raise _Refused(wire.CONNECT)
        url = self._url
        if url[:1] != b"/":
            raise _Refused(wire.ABSOLUTE_FORM)
        upgrade = parser.should_upgrade()
        if upgrade and not self.state.limits.tunnels:
            raise _Refused(wire.NO_UPGRADE)
        raw_path, _, query = url.partition(b"?")
        path = raw_path.decode("latin-1")
        if "%" in path:
            path = urllib.parse.unquote(path)
        version = parser.get_http_version()
        extensions: dict[str, object] = {DISCONNECT: self.lost}
        if upgrade:
            extensions[TUNNEL] = {}
        scope: Scope = {
            "type": "http", "asgi": ASGI_VERSION, "http_version": version, "server": self._local,
            "client": self._peer, "scheme": "http", "method": method.decode("latin-1"), "root_path": "",
            "path": path, "raw_path": raw_path, "query_string": query, "headers": self._headers, "state": {},
            "extensions": extensions,
        }  # fmt: skip
        keep_alive = parser.should_keep_alive() and not upgrade
        cycle = RequestCycle(self, scope, keep_alive=keep_alive, expect_100=self._expect, upgrade=upgrade)
        self._parsing = cycle
        if self.active is None:
            self._disarm()
            self._start(cycle)
        else:
            self._queue.append(cycle)
            self.pause_reading()  # one request at a time: the rest waits in the socket

    def on_body(self, body: bytes) -> None:
        cycle = self._parsing
        if cycle is not None and cycle.discarding:
            self._discarded += len(body)
            if self._discarded > _DISCARD_MAX:
                self.close()
        elif cycle is not None:
            cycle.body += body
            if len(cycle.body) > _HIGH_WATER:
                self.pause_reading()
            cycle.wake()

    def on_message_complete(self) -> None:
        cycle = self._parsing
        if cycle is not None:
            cycle.body_done = True
            self._parsing = None
            cycle.wake()
            if cycle.discarding:
                self._disarm()
                self._next()

    # --- the request cycle -------------------------------------------------------------------------------------

    def _start(self, cycle: RequestCycle) -> None:
        self.active = cycle
        self._waiting_at = None
        task = self.loop.create_task(cycle.run(self.state.app))
        self.state.tasks.add(task)
        task.add_done_callback(self.state.tasks.discard)

    def cycle_done(self, cycle: RequestCycle) -> None:
        """The application's task for `cycle` ended: close, or serve the next request, or wait for one."""
        self.active = None
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if not (cycle.complete and cycle.keep_alive) or self.state.stopping:
            transport.close()  # an answer cut short leaves the connection unusable
            return
        if not cycle.body_done:
            # Answered before the body was all read (a 413, say): read the rest and drop it, within bounds, so that
            # the client, still sending, reads the answer rather than a reset.
            cycle.discarding = True
            cycle.body.clear()
            self._discarded = 0
            self._arm(self.state.limits.body_timeout, self.close)
            self.resume_reading()
            return
        self._next()

    def _next(self) -> None:
        if self._queue:
            self._start(self._queue.popleft())
        elif self._in_head:
            self._waiting_at = self.loop.time()
            self._arm(self.state.limits.header_timeout, self._head_timed_out)
        else:
            self._waiting_at = self.loop.time()
            self._arm(self.state.limits.idle_timeout, self.close)
            self._idle = True
        if not self._queue:
            self.resume_reading()

    def body_consumed(self) -> None:
        """The application took the buffered body: read on, unless a pipelined request waits."""
        if not self._queue:
            self.resume_reading()

    def start_tunnel(self) -> None:
        """The application answered 101: from now on the bytes are the application's, bounded by idleness."""
        self.tunneling = True
        self.tunnel_at = self.loop.time()
        self._arm(self.state.limits.tunnel_idle_timeout, self._tunnel_check)

    def _tunnel_check(self) -> None:
        # One timer for the tunnel's life: it re-arms for what is left rather than on every byte.
        left = self.tunnel_at + self.state.limits.tunnel_idle_timeout - self.loop.time()
        if left > 0:
            self._arm(left, self._tunnel_check)
        else:
            self.abort()

    async def drain(self, limit_s: float) -> None:
        """Wait until the transport takes writes again; close the connection after `limit_s` seconds."""
        waiter = self._writable
        if waiter is None:
            return
        handle = self.loop.call_later(limit_s, self.abort)  # close() would wait for the very flush that is stuck
        try:
            await asyncio.shield(waiter)
        finally:
            handle.cancel()

    # --- room for others at the connection limit ----------------------------------------------------------------

    @property
    def idle(self) -> bool:
        """Between requests on a keep-alive connection, with no byte of the next one yet."""
        return self._idle

    def waiting_since(self) -> float | None:
        """Since when (loop time) this connection waits for a request, idle or with its head unfinished, with
        nothing left to send; None while it serves a request, tunnels, drops a body, flushes or closes."""
        transport = self.transport
        if self._waiting_at is None or transport is None or transport.is_closing():
            return None
        return self._waiting_at if transport.get_write_buffer_size() == 0 else None

    def reclaim(self) -> None:
        """Give this waiting connection's place to a new one: closed quietly when idle (its client opens another
        when it needs one), else answered 503 and counted as `listener_full`."""
        self._waiting_at = None
        if self._idle:
            self.close()
        else:
            self.state.count(DropReason.LISTENER_FULL)
            self.refuse(wire.FULL)

    # --- flow control, timers, closing -------------------------------------------------------------------------

    def pause_reading(self) -> None:
        if not self._read_paused and self.transport is not None:
            self._read_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self._read_paused and self.transport is not None:
            self._read_paused = False
            self.transport.resume_reading()

    def _arm(self, delay: float, callback: Callable[[], object]) -> None:
        self._disarm()
        self._timer = self.loop.call_later(delay, callback)

    def _disarm(self) -> None:
        self._idle = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _head_timed_out(self) -> None:
        self._timer = None
        self.state.count(DropReason.REQUEST_TIMEOUT)
        self.refuse(wire.HEAD_TIMEOUT)

    def refuse(self, refusal: wire.Refusal) -> None:
        """Answer `refusal` and close: for what the server refuses itself, before any application code ran."""
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(refusal.bytes)
            transport.close()

    def write(self, data: bytes) -> None:
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(data)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def shutdown(self) -> None:
        """The server is stopping: close an idle connection now, a busy one once its answer is complete, and a
        tunnel now (the application's `receive()` then says the client went away)."""
        if self.active is None or self.tunneling:
            self.close()


def _address(value: object) -> tuple[str, int] | None:
    if isinstance(value, tuple) and len(value) >= 2:
        return str(value[0]), int(value[1])
    return None
