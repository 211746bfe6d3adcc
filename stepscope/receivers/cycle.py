"""One request of `stepscope.receivers.connection` as the application sees it: the ASGI `receive()` and `send()`.

`receive()` gives the body as it arrives (answering `Expect: 100-continue` first, unless the answer already
started), then `http.disconnect` once the client is gone or the answer is complete; a body that stops arriving
for `body_timeout` seconds ends the connection (408 when no answer started). `send()` frames the answer: with the
application's `content-length` when it gives one (the head then goes out with the first body bytes, in one
write), else chunked (close-delimited for HTTP/1.0); nothing of a body for HEAD, 204 and 304. After a 101 to an
upgrade request the cycle carries the tunnel's raw bytes (`asgi.TUNNEL`). Sending to a client that went away
is a no-op: the application learns of it from `receive()` or the `asgi.DISCONNECT` future.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from stepscope.contract.vocabulary import DropReason
from stepscope.receivers import wire
from stepscope.receivers.asgi import TUNNEL_CLOSE, TUNNEL_DATA, AbortResponse, App, Message, Scope

if TYPE_CHECKING:
    from stepscope.receivers.connection import HttpConnection

_DISCONNECT: Message = {"type": "http.disconnect"}


class RequestCycle:
    """One request on `conn`, from its head to the end of its answer (or of its tunnel)."""

    __slots__ = (
        "_delivered", "_no_body", "_waiter", "body", "body_done", "chunked", "complete", "conn", "discarding",
        "disconnected", "expect_100", "head", "keep_alive", "remaining", "scope", "started", "tunnel", "upgrade",
    )  # fmt: skip

    def __init__(
        self, conn: HttpConnection, scope: Scope, *, keep_alive: bool, expect_100: bool, upgrade: bool
    ) -> None:
        self.conn = conn
        self.scope = scope
        self.keep_alive = keep_alive
        self.expect_100 = expect_100
        self.upgrade = upgrade
        self.body = bytearray()
        self.body_done = False
        self.discarding = False  # answered: the rest of the body is read and dropped
        self._delivered = False  # the last body message went to the application
        self._waiter: asyncio.Future[None] | None = None
        self.disconnected = False
        self.started = False
        self.complete = False
        self.tunnel = False
        self.chunked = False
        self._no_body = False
        self.remaining = -1  # body bytes the declared content-length still expects; -1: none declared
        self.head: bytes | None = None  # a head held back to go out with the first body bytes

    def wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def disconnect(self) -> None:
        self.disconnected = True
        self.wake()

    async def run(self, app: App) -> None:
        """Run the application for this request; what it leaves undone (or raises) closes the connection."""
        conn = self.conn
        try:
            await app(self.scope, self.receive, self.send)
        except AbortResponse:
            conn.close()  # the answer is cut short: the client sees it end early, as the upstream's did
        except asyncio.CancelledError:
            conn.close()
            raise
        except Exception as exc:
            conn.state.failed(self.scope, exc)
            if not self.started:
                conn.refuse(wire.INTERNAL)
            else:
                conn.close()
        else:
            if not self.started and not self.disconnected:
                conn.state.failed(self.scope, RuntimeError("the application returned without answering"))
                conn.refuse(wire.INTERNAL)
        finally:
            conn.cycle_done(self)

    async def _wait(self, limit_s: float | None) -> None:
        waiter = self._waiter = self.conn.loop.create_future()
        handle = None if limit_s is None else self.conn.loop.call_later(limit_s, self._body_timed_out)
        try:
            await waiter
        finally:
            self._waiter = None
            if handle is not None:
                handle.cancel()

    def _body_timed_out(self) -> None:
        self.conn.state.count(DropReason.REQUEST_TIMEOUT)
        if self.started:
            self.conn.close()
        else:
            self.conn.refuse(wire.BODY_TIMEOUT)

    async def receive(self) -> Message:
        if self.tunnel:
            return await self._tunnel_receive()
        conn = self.conn
        if self.expect_100:
            self.expect_100 = False
            if not self.started:
                conn.write(wire.CONTINUE)
        while True:
            if self.disconnected:
                return _DISCONNECT
            if self.body or (self.body_done and not self._delivered):
                chunk = bytes(self.body)
                self.body.clear()
                self._delivered = self.body_done
                conn.body_consumed()
                return {"type": "http.request", "body": chunk, "more_body": not self.body_done}
            if self.complete:
                return _DISCONNECT
            # Waiting for body bytes is bounded; once the whole body was taken, only the client's departure (or
            # the end of the answer) ends the wait.
            await self._wait(None if self._delivered else conn.state.limits.body_timeout)

    async def _tunnel_receive(self) -> Message:
        conn = self.conn
        while True:
            if conn.tunnel_in:
                data = bytes(conn.tunnel_in)
                conn.tunnel_in.clear()
                conn.resume_reading()
                return {"type": TUNNEL_DATA, "data": data}
            if self.disconnected:
                return _DISCONNECT
            await self._wait(None)  # bounded by the tunnel's idle timer, which closes the connection

    async def send(self, message: Message) -> None:
        kind = message["type"]
        conn = self.conn
        if kind == "http.response.body":
            if not self.started or self.complete or self.tunnel:
                raise RuntimeError(f"unexpected ASGI message {kind!r} in this state")
            body: bytes = message.get("body", b"")
            more: bool = message.get("more_body", False)
            if self._no_body:
                data = b""
            elif self.chunked:
                data = b"%x\r\n%b\r\n" % (len(body), body) if body else b""
                if not more:
                    data += b"0\r\n\r\n"
            else:
                if self.remaining >= 0:
                    if len(body) > self.remaining:
                        raise RuntimeError("the answer is longer than its content-length")
                    self.remaining -= len(body)
                data = body
            if self.head is not None:
                data, self.head = self.head + data, None
            if data and not self.disconnected:
                conn.write(data)
            if not more:
                self.complete = True
                if self.remaining > 0:
                    self.keep_alive = False  # shorter than declared: the client must see the connection end
                self.wake()
            elif conn.writing_paused:
                await conn.drain(conn.state.limits.send_timeout)
        elif kind == "http.response.start":
            if self.started:
                raise RuntimeError("http.response.start sent twice")
            self._start(message)
        elif kind == TUNNEL_DATA:
            if not self.tunnel:
                raise RuntimeError("tunnel.data before a 101 answer")
            data = message["data"]
            if data and not self.disconnected:
                conn.write(data)
                conn.tunnel_at = conn.loop.time()
            if conn.writing_paused:
                await conn.drain(conn.state.limits.tunnel_idle_timeout)
        elif kind == TUNNEL_CLOSE:
            self.complete = True
            conn.close()
        else:
            raise RuntimeError(f"unexpected ASGI message {kind!r}")

    def _start(self, message: Message) -> None:
        status: int = message["status"]
        lines = [wire.status_line(status)]
        close = False
        for name, value in message.get("headers") or ():
            if not wire.valid_field(name, value):
                raise RuntimeError("invalid response header")
            lower = name.lower()
            if lower == b"content-length":
                if not value.isdigit():
                    raise RuntimeError("invalid content-length")
                self.remaining = int(value)
            elif lower == b"transfer-encoding":
                self.chunked = True  # the application asks for chunks: the server frames them
            elif lower == b"connection" and b"close" in value.lower():
                close = True
            lines.append(b"%s: %s\r\n" % (name, value))
        self.started = True
        self.expect_100 = False
        if status == 101:
            if not self.upgrade:
                raise RuntimeError("101 answers only an upgrade request")
            lines.append(b"\r\n")
            self.tunnel = True
            self.conn.write(b"".join(lines))
            self.conn.start_tunnel()
            return
        if self.chunked and self.remaining >= 0:
            raise RuntimeError("both content-length and transfer-encoding")
        self._no_body = self.scope["method"] == "HEAD" or status in (204, 304) or status < 200
        if self._no_body:
            self.chunked, self.remaining = False, -1
        elif self.remaining < 0 and not self.chunked:
            if self.scope["http_version"] == "1.1":
                self.chunked = True
                lines.append(b"transfer-encoding: chunked\r\n")
            else:
                self.keep_alive = False  # HTTP/1.0 without a length: the body ends with the connection
        if close:
            self.keep_alive = False
        elif not self.keep_alive:
            lines.append(b"connection: close\r\n")
        lines.append(b"\r\n")
        head = b"".join(lines)
        if self.remaining >= 0:
            self.head = head  # a body of known length follows at once: one write for both
        else:
            self.conn.write(head)
