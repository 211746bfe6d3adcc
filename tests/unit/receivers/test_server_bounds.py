"""Every bound of stepscope's own server: header, idle, body and send timeouts, the connection limit (and its
descriptor budget), a stop within its budget, and a port in use."""

from __future__ import annotations

import asyncio
import logging
import socket
import time

import pytest

from stepscope.errors import ConfigError
from stepscope.receivers.proxy import ProxyApp, ProxyServer
from stepscope.receivers.server import PROXY_LIMITS, AsgiServer, ServerLimits, connection_cap
from tests.kit.fakes import Counters
from tests.kit.proxy import RawClient
from tests.unit.receivers.apps import Recorder, serving

pytestmark = pytest.mark.anyio
QUICK = ServerLimits(header_timeout=0.3, idle_timeout=0.3, body_timeout=0.3, send_timeout=0.3, max_connections=4)
GET = b"GET /x HTTP/1.1\r\nHost: t\r\n\r\n"


async def test_a_head_that_does_not_arrive_in_time_is_closed_with_408() -> None:
    """A connection that sends half a head, or nothing, gets 408 and is closed after the header timeout, and each
    is counted as `request_timeout`."""
    drops = Counters()
    async with serving(Recorder(), QUICK, drops) as port:
        half, silent = await RawClient.open(port), await RawClient.open(port)
        await half.send(b"GET /x HTTP/1.1\r\nHost: t\r\nX-Slow: ")
        started = time.monotonic()
        answers = [await half.answer(within_s=2), await silent.answer(within_s=2)]
        waited = time.monotonic() - started
        closed = [await half.closed(within_s=1), await silent.closed(within_s=1)]
    assert [a.status for a in answers] == [408, 408] and closed == [True, True]
    assert 0.2 <= waited <= 1.0, waited
    assert drops.counts == {"request_timeout": 2}


async def test_an_idle_keep_alive_connection_is_closed_quietly() -> None:
    """After an answer, a connection that sends nothing more is closed after the idle timeout, without a 408 and
    without counting a drop."""
    drops = Counters()
    async with serving(Recorder(), QUICK, drops) as port:
        client = await RawClient.open(port)
        await client.send(GET)
        assert (await client.answer()).status == 200
        started = time.monotonic()
        rest = await asyncio.wait_for(client.reader.read(), 2)
        waited = time.monotonic() - started
        await client.close()
    assert rest == b"" and 0.2 <= waited <= 1.0, waited
    assert drops.counts == {}


async def test_a_body_that_stops_arriving_is_answered_408() -> None:
    """A request whose body stops short is answered 408 after the body timeout and counted; the application's
    `receive()` says the client left."""
    drops = Counters()
    app = Recorder()
    async with serving(app, QUICK, drops) as port:
        client = await RawClient.open(port)
        await client.send(b"POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nabc")
        answer = await client.answer(within_s=2)
        await client.close()
        await asyncio.sleep(0.05)
    assert answer.status == 408 and answer.json()["error"]["code"] == "request_timeout"
    assert drops.counts == {"request_timeout": 1}
    assert app.messages[-1] == {"type": "http.disconnect", "body": 0}


async def test_a_client_that_reads_nothing_cannot_hold_the_answer() -> None:
    """An application sending 20 MB to a client that reads none of it is released after the send timeout: the
    connection closes and the application finishes."""
    app = Recorder(size=20 * 1024 * 1024)
    async with serving(app, QUICK) as port:
        sock = socket.create_connection(("127.0.0.1", port))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall(b"GET /big HTTP/1.1\r\nHost: t\r\n\r\n")
        started = time.monotonic()
        while app.finished == 0:
            assert time.monotonic() - started < 3, "the application stayed blocked on a client that reads nothing"
            await asyncio.sleep(0.02)
        sock.close()


async def test_past_the_connection_limit_a_503_at_once() -> None:
    """With four connections open, a fifth is answered 503 with `Retry-After` and closed at once, and counted as
    `listener_full`; once one closes, a new connection is served again."""
    drops = Counters()
    app = Recorder()
    async with serving(app, ServerLimits(max_connections=4), drops) as port:
        held = [await RawClient.open(port) for _ in range(4)]
        await asyncio.sleep(0.05)
        extra = await RawClient.open(port)
        started = time.monotonic()
        refused = await extra.answer(within_s=2)
        took = time.monotonic() - started
        assert await extra.closed(within_s=2)
        await held.pop().close()
        await asyncio.sleep(0.05)
        again = await RawClient.open(port)
        await again.send(GET)
        served = await again.answer()
        for client in [*held, again]:
            await client.close()
    assert refused.status == 503 and refused.header("retry-after") == "1" and took < 0.5
    assert refused.json()["error"] == {"message": refused.json()["error"]["message"], "type": "proxy_error",
                                       "param": None, "code": "too_many_connections"}  # fmt: skip
    assert served.status == 200 and drops.counts == {"listener_full": 1}


ROOMY = ServerLimits(max_connections=2, reclaim_after=0.2)


async def test_at_the_limit_an_idle_connection_makes_room_quietly() -> None:
    """With the limit reached by a connection still sending its head and an idle keep-alive one, a new connection
    is served in place of the idle one (closed without a word or a count), even though the other waited longer."""
    drops = Counters()
    async with serving(Recorder(), ROOMY, drops) as port:
        unfinished = await RawClient.open(port)
        await unfinished.send(b"GET /x HTTP/1.1\r\nHost: t\r\n")
        idle = await RawClient.open(port)
        await idle.send(GET)
        assert (await idle.answer()).status == 200
        await asyncio.sleep(0.3)
        newcomer = await RawClient.open(port)
        await newcomer.send(GET)
        served = await newcomer.answer()
        idle_closed = await asyncio.wait_for(idle.reader.read(), 5)
        await unfinished.send(b"\r\n")
        finished = await unfinished.answer()
        for client in (unfinished, idle, newcomer):
            await client.close()
    assert served.status == 200 and idle_closed == b"" and finished.status == 200
    assert drops.counts == {}


async def test_at_the_limit_the_longest_unfinished_head_makes_room_with_503() -> None:
    """With the limit reached by two connections whose heads stay unfinished past `reclaim_after`, a new
    connection is served in place of the one that waited longest, which is answered 503 and counted."""
    drops = Counters()
    async with serving(Recorder(), ROOMY, drops) as port:
        older = await RawClient.open(port)
        await older.send(b"GET /x HTTP/1.1\r\n")
        await asyncio.sleep(0.05)
        younger = await RawClient.open(port)
        await younger.send(b"GET /x HTTP/1.1\r\n")
        await asyncio.sleep(0.3)
        newcomer = await RawClient.open(port)
        await newcomer.send(GET)
        served = await newcomer.answer()
        reclaimed = await older.answer()
        await younger.send(b"Host: t\r\n\r\n")
        finished = await younger.answer()
        for client in (older, younger, newcomer):
            await client.close()
    assert served.status == 200 and reclaimed.status == 503 and finished.status == 200
    assert reclaimed.json()["error"]["code"] == "too_many_connections"
    assert drops.counts == {"listener_full": 1}


async def test_at_the_limit_busy_and_young_connections_keep_their_place() -> None:
    """A connection whose request is being served is never reclaimed, however long it takes, nor one that has
    waited less than `reclaim_after`: the newcomer gets the 503."""
    drops = Counters()
    app = Recorder()
    # A longer reclaim_after than ROOMY's: "young" must stay young even if a loaded machine stalls this loop.
    async with serving(app, ServerLimits(max_connections=2, reclaim_after=0.6), drops) as port:
        busy = await RawClient.open(port)
        await busy.send(b"GET /hold HTTP/1.1\r\nHost: t\r\n\r\n")
        await asyncio.sleep(0.7)
        young = await RawClient.open(port)
        await asyncio.sleep(0.05)
        newcomer = await RawClient.open(port)
        refused = await newcomer.answer()
        app.release.set()
        held = await busy.answer()
        for client in (busy, young, newcomer):
            await client.close()
    assert refused.status == 503 and held.status == 200
    assert drops.counts == {"listener_full": 1}


def test_the_connection_cap_fits_the_descriptor_limit() -> None:
    """The proxy holds 512 connections, but 384 under a 1,024-descriptor limit (two descriptors each, 256 kept);
    the HTTP surface holds 64; never fewer than 8."""
    assert connection_cap(PROXY_LIMITS, None) == 512
    assert connection_cap(PROXY_LIMITS, 1_048_576) == 512
    assert connection_cap(PROXY_LIMITS, 1024) == 384
    assert connection_cap(ServerLimits(), 1024) == 64
    assert connection_cap(PROXY_LIMITS, 100) == 8


async def test_stop_closes_every_connection_within_its_budget(caplog: pytest.LogCaptureFixture) -> None:
    """Stopping with idle, half-sent and busy connections open returns within its budget, closes them all, lets
    the busy application's task end, and logs nothing at warning or above; a second stop is a no-op."""
    app = Recorder()
    server = AsgiServer(app, "127.0.0.1", 0, setting="test.listen", fix="-", name="test")
    await server.start()
    idle, half, busy = [await RawClient.open(server.port) for _ in range(3)]
    await idle.send(GET)
    await idle.answer()
    await half.send(b"GET /x HTTP/1.1\r\n")
    await busy.send(b"GET /hold HTTP/1.1\r\nHost: t\r\n\r\n")
    await asyncio.sleep(0.05)
    with caplog.at_level(logging.DEBUG):
        started = time.monotonic()
        await server.stop(0.5)
        took = time.monotonic() - started
        await server.stop(0.5)
    assert took < 0.8, took
    assert [await c.closed(within_s=1) for c in (idle, half, busy)] == [True, True, True]
    assert app.running == 0 and not server.started
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


async def test_an_address_in_use_is_one_config_error() -> None:
    """A proxy on a port in use fails at start with one line naming `server.proxy_listen` and the fix."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proxy = ProxyServer(ProxyApp("http://127.0.0.1:9", None, drops=Counters()), "127.0.0.1", port)
        with pytest.raises(ConfigError) as info:
            await proxy.start()
        await proxy.stop()
    assert info.value.problems == [
        f"cannot listen on 127.0.0.1:{port} (server.proxy_listen): address already in use; "
        "choose another address with STEPSCOPE_PROXY_LISTEN"
    ]
    assert not proxy.started
