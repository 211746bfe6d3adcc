"""The proxy never gets in the application's way: an application that leaves frees its upstream request at once,
one route cannot take the whole upstream pool, and observing answers never holds up relaying them."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from stepscope.protocols.base import Route
from stepscope.receivers.proxy import GuardedObserver
from stepscope.receivers.proxy.observations import ObservationQueue
from stepscope.testing import eventually
from tests.kit.fakes import Counters
from tests.kit.proxy import RawClient
from tests.unit.receivers.apps import Observer, RawUpstream, hang, ok, proxy_to, trickle

pytestmark = pytest.mark.anyio


async def test_an_application_that_leaves_before_the_answer_frees_the_upstream_at_once() -> None:
    """When the application disconnects while the upstream has not answered, the proxy's upstream connection is
    closed within a fraction of a second, and nothing is logged for it."""
    async with RawUpstream({"/v1/hang": hang}) as upstream, proxy_to(upstream.url) as (proxy, _):
        client = await RawClient.open(proxy.port)
        await client.send(b"GET /v1/hang HTTP/1.1\r\nHost: t\r\n\r\n")
        await upstream.wait_open(1)
        started = time.monotonic()
        await client.close()
        await upstream.wait_open(0, within_s=1)
        freed = time.monotonic() - started
        assert proxy.app.left == 1
    assert freed < 0.3, freed


async def test_an_application_that_leaves_a_stream_frees_the_upstream_at_once() -> None:
    """When the application disconnects in the middle of a streamed answer, the upstream connection is closed
    within a fraction of a second and the observed stream ends incomplete."""
    observer = Observer()
    async with RawUpstream({"/v1/watched": trickle}) as upstream, proxy_to(upstream.url, observer=observer) as (
        proxy, _
    ):  # fmt: skip
        client = await RawClient.open(proxy.port)
        await client.send(b"POST /v1/watched/stream HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n")
        await asyncio.wait_for(client.reader.readuntil(b"tick"), 5)
        started = time.monotonic()
        await client.close()
        await upstream.wait_open(0, within_s=1)
        freed = time.monotonic() - started
        await eventually(lambda: any(name == "ended" for name, _ in observer.sink.calls))
    assert freed < 0.3, freed
    assert observer.sink.calls[-1] == ("ended", (False, True))
    assert ("event", ("tick", {"n": 0})) in observer.sink.calls


async def test_one_route_cannot_take_the_whole_upstream_pool() -> None:
    """With two requests of one route waiting for the upstream (its share), a third of that route is answered 503
    `upstream_busy` at once and counted, while another route is answered normally."""
    async with RawUpstream({"/v1/threads": hang, "/v1/ok": ok}) as upstream, proxy_to(upstream.url, route_share=2) as (
        proxy, drops
    ):  # fmt: skip
        waiting = [await RawClient.open(proxy.port) for _ in range(2)]
        for i, client in enumerate(waiting):
            await client.send(f"GET /v1/threads/thread_{i}a/runs HTTP/1.1\r\nHost: t\r\n\r\n".encode())
        await upstream.wait_open(2)
        third, other = await RawClient.open(proxy.port), await RawClient.open(proxy.port)
        started = time.monotonic()
        await third.send(b"GET /v1/threads/thread_9z/runs HTTP/1.1\r\nHost: t\r\n\r\n")
        refused = await third.answer(within_s=2)
        took = time.monotonic() - started
        await other.send(b"GET /v1/ok HTTP/1.1\r\nHost: t\r\n\r\n")
        served = await other.answer(within_s=2)
        for client in [*waiting, third, other]:
            await client.close()
    assert refused.status == 503 and refused.json()["error"]["code"] == "upstream_busy" and took < 0.5
    assert refused.header("retry-after") == "1"
    assert served.status == 200 and served.json() == {"ok": True}
    assert drops.counts == {"proxy_upstream_busy": 1}


async def test_an_answer_that_overflows_the_observation_queue_is_given_up_whole() -> None:
    """Chunks queued faster than the observation task reads them, past the queue's bound, are dropped and counted
    once; that answer is read no further and its sink is told it ended incomplete, never given half a body; the
    next answer is observed whole."""
    drops = Counters()
    observer = Observer()
    queue = ObservationQueue(GuardedObserver(observer, drops=drops), drops=drops, max_items=3)
    answer = queue.begin(Route("watched"), None, content_type="application/json")
    body = json.dumps({"id": "x" * 100}).encode()
    queue.chunk(answer, body[:10])
    await asyncio.sleep(0.01)  # the task makes the sink and reads the first chunk
    for i in range(10, len(body), 10):
        queue.chunk(answer, body[i : i + 10])
    queue.end(answer, True)
    await asyncio.sleep(0.01)
    other = queue.begin(Route("watched"), None, content_type="application/json")
    queue.chunk(other, b'{"ok": 1}')
    queue.end(other, True)
    await queue.aclose()
    assert drops.counts == {"proxy_feed_full": 1}
    assert observer.sink.calls == [("ended", (False, False)), ("body", {"ok": 1}), ("ended", (True, False))]
    assert len(queue) == 0


async def test_a_routed_answer_reaches_the_sink_after_the_application_got_it() -> None:
    """A routed JSON answer goes to the application unchanged, and its sink gets the parsed body and a complete
    end from the observation task."""
    observer = Observer()
    body = b'{"id": "run_1", "status": "queued"}'

    async def run(head: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readexactly(2)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%b"
                     % (len(body), body))  # fmt: skip
        await writer.drain()

    async with RawUpstream({"/v1/watched": run}) as upstream, proxy_to(upstream.url, observer=observer) as (proxy, _):
        client = await RawClient.open(proxy.port)
        await client.send(b"POST /v1/watched/runs HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\n{}")
        answer = await client.answer()
        await client.close()
        await eventually(lambda: any(name == "ended" for name, _ in observer.sink.calls))
    assert answer.status == 200 and answer.body == body
    assert observer.sink.calls == [("body", {"id": "run_1", "status": "queued"}), ("ended", (True, False))]
