"""Upgrades: the server's tunnel (early bytes, echo, idle bound), the proxy's byte-for-byte splice to an upstream
that switches protocols, and the WebSocket frame reader that observes it."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import time

import pytest

from stepscope.receivers.proxy.websocket import WebSocketReader
from stepscope.receivers.server import ServerLimits
from stepscope.testing import eventually
from tests.kit.fakes import Counters
from tests.kit.proxy import RawClient
from tests.unit.receivers.apps import Observer, RawUpstream, Recorder, Sink, proxy_to, serving

pytestmark = pytest.mark.anyio
UPGRADE = b"GET /upgrade HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n"


def frame(opcode: int, payload: bytes, *, fin: bool = True, rsv: int = 0, mask: bytes = b"") -> bytes:
    """One RFC 6455 frame (masked when `mask` is given)."""
    head = bytes([(0x80 if fin else 0) | rsv | opcode])
    size = len(payload)
    bit = 0x80 if mask else 0
    if size < 126:
        head += bytes([bit | size])
    elif size < 65536:
        head += bytes([bit | 126]) + size.to_bytes(2, "big")
    else:
        head += bytes([bit | 127]) + size.to_bytes(8, "big")
    if mask:
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return head + mask + payload


def text(data: object) -> bytes:
    return frame(0x1, json.dumps(data).encode())


async def test_a_tunnel_carries_bytes_both_ways_from_the_first() -> None:
    """After a 101, bytes the client sent with its head, and later ones, reach the application, its bytes reach
    the client, and the client's departure ends the application's `receive()`."""
    app = Recorder()
    async with serving(app, ServerLimits(tunnels=True)) as port:
        client = await RawClient.open(port)
        await client.send(UPGRADE + b"early,")
        head = await asyncio.wait_for(client.reader.readuntil(b"\r\n\r\n"), 5)
        first = await asyncio.wait_for(client.reader.readexactly(6), 5)
        await client.send(b"later")
        second = await asyncio.wait_for(client.reader.readexactly(5), 5)
        await client.close()
        await asyncio.wait_for(app.disconnected.wait(), 5)
    assert head == b"HTTP/1.1 101 Switching Protocols\r\nupgrade: echo\r\nconnection: upgrade\r\n\r\n"
    assert (first, second) == (b"EARLY,", b"LATER")
    assert app.messages[-1] == {"type": "http.disconnect"}


async def test_an_idle_tunnel_is_closed() -> None:
    """A tunnel that carries no byte either way for its idle timeout is closed on both sides."""
    app = Recorder()
    async with serving(app, ServerLimits(tunnels=True, tunnel_idle_timeout=0.3)) as port:
        client = await RawClient.open(port)
        await client.send(UPGRADE)
        await asyncio.wait_for(client.reader.readuntil(b"\r\n\r\n"), 5)
        started = time.monotonic()
        assert await client.closed(within_s=3)
        waited = time.monotonic() - started
        await asyncio.wait_for(app.disconnected.wait(), 5)
    assert 0.2 <= waited <= 1.5, waited


EVENTS = (frame(0x1, b'{"type": "response.cr', fin=False) + frame(0x9, b"hb") + frame(0x0, b'eated", "n": 1}')
          + text({"type": "response.completed", "n": 2}))  # fmt: skip
"""What the WebSocket upstream sends first: two events, one fragmented around a ping."""


def _websocket_upstream(extensions: bytes = b"") -> RawUpstream:
    """An upstream that switches to WebSocket, sends `EVENTS`, echoes what the client sends back as binary frames,
    and closes on the client's close frame."""

    async def websocket(head: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        switch = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        writer.write(switch + b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n" + extensions + b"\r\n" + EVENTS)
        await writer.drain()
        while data := await reader.read(65536):
            upstream.received += data
            if b"\x88" in data:
                writer.write(frame(0x8, b"\x03\xe8"))
                await writer.drain()
                raise ConnectionError  # the WebSocket is over: the upstream closes its connection
            writer.write(frame(0x2, data))
            await writer.drain()

    upstream = RawUpstream({"/v1/responses": websocket})
    return upstream


async def test_the_proxy_splices_a_websocket_unchanged_and_observes_its_events() -> None:
    """Through the proxy, a WebSocket's bytes pass unchanged both ways, and the route's sink gets each JSON event
    (a fragmented one whole) and a complete end once the upstream closed."""
    observer = Observer()
    async with _websocket_upstream() as upstream, proxy_to(upstream.url, observer=observer) as (proxy, _):
        client = await RawClient.open(proxy.port)
        key = b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
        await client.send(
            b"GET /v1/responses HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n" + key + b"\r\n"
        )
        head = await asyncio.wait_for(client.reader.readuntil(b"\r\n\r\n"), 5)
        sent = frame(0x1, b'{"type": "response.create"}', mask=os.urandom(4))
        await client.send(sent)
        echo = frame(0x2, sent)
        received = await asyncio.wait_for(client.reader.readexactly(len(EVENTS) + len(echo)), 5)
        await client.send(frame(0x8, b"\x03\xe8", mask=b"abcd"))
        close = await asyncio.wait_for(client.reader.read(), 5)
        await client.close()
        await eventually(lambda: any(name == "ended" for name, _ in observer.sink.calls))
    assert head.startswith(b"HTTP/1.1 101 ") and b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" in head
    assert received == EVENTS + echo and close == frame(0x8, b"\x03\xe8")
    assert bytes(upstream.received).startswith(sent)
    assert b"sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n" in upstream.heads[0]
    assert observer.sink.calls == [
        ("event", ("response.created", {"type": "response.created", "n": 1})),
        ("event", ("response.completed", {"type": "response.completed", "n": 2})),
        ("ended", (True, True)),
    ]


async def test_a_compressed_websocket_is_relayed_unobserved() -> None:
    """A WebSocket whose handshake negotiated `permessage-deflate` is relayed, but never read: no sink call, and
    one `proxy_unreadable`."""
    observer = Observer()
    deflate = b"Sec-WebSocket-Extensions: permessage-deflate\r\n"
    async with _websocket_upstream(deflate) as upstream, proxy_to(upstream.url, observer=observer) as (proxy, drops):
        client = await RawClient.open(proxy.port)
        await client.send(b"GET /v1/responses HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
        await asyncio.wait_for(client.reader.readuntil(b"\r\n\r\n"), 5)
        events = await asyncio.wait_for(client.reader.readexactly(len(EVENTS)), 5)
        await client.close()
        await eventually(lambda: bool(drops.counts))
    assert events == EVENTS
    assert observer.sink.calls == [] and drops.counts == {"proxy_unreadable": 1}


async def test_an_upgrade_the_upstream_refuses_is_relayed_as_an_answer() -> None:
    """An upgrade the upstream answers 401 reaches the application as that 401, body and all."""

    async def refuse(head: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        body = b'{"error": {"code": "invalid_api_key"}}'
        writer.write(b"HTTP/1.1 401 Unauthorized\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%b"
                     % (len(body), body))  # fmt: skip
        await writer.drain()

    async with RawUpstream({"/v1/responses": refuse}) as upstream, proxy_to(upstream.url) as (proxy, _):
        client = await RawClient.open(proxy.port)
        await client.send(b"GET /v1/responses HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
        answer = await client.answer()
        closed = await client.closed(within_s=2)
    assert answer.status == 401 and answer.json() == {"error": {"code": "invalid_api_key"}} and closed


def _read(stream: bytes, cuts: list[int], max_message: int = 1024) -> tuple[Sink, Counters, WebSocketReader]:
    sink, drops = Sink(), Counters()
    reader = WebSocketReader(sink, max_message=max_message, drops=drops)
    edges = [0, *cuts, len(stream)]
    for start, end in itertools.pairwise(edges):
        reader.chunk(stream[start:end])
    return sink, drops, reader


def test_frames_cut_anywhere_give_the_same_events() -> None:
    """A fragmented text message around a ping, a binary message, a message without `type` and a close give the
    same sink calls whichever byte the stream is cut at."""
    fragmented = frame(0x1, b'{"type": "a", ', fin=False) + frame(0x9, b"") + frame(0x0, b'"v": 1}')
    stream = fragmented + frame(0x2, b"\x00\x01") + text({"no": "type"}) + text({"type": "b"}) + frame(0x8, b"\x03\xe8")
    expected = [("event", ("a", {"type": "a", "v": 1})), ("event", ("b", {"type": "b"})), ("ended", (True, True))]
    for cut in range(len(stream) + 1):
        sink, drops, reader = _read(stream, [cut])
        reader.finish(True)
        assert (sink.calls, drops.counts) == (expected, {}), cut


def test_unwanted_oversized_and_unreadable_messages() -> None:
    """An unwanted event is not parsed (a broken one counts nothing); an oversized message is skipped and counted
    and the next one read; text that is not JSON is counted; without a close frame the end is incomplete."""
    stream = (frame(0x1, b'{"type": "unwanted", broken') + text({"type": "after", "x": "y" * 10})
              + frame(0x1, json.dumps({"type": "big", "x": "y" * 2000}).encode()) + text({"type": "next"})
              + frame(0x1, b"not json"))  # fmt: skip
    sink, drops, reader = _read(stream, [3, 700, 1500])
    reader.finish(True)
    assert sink.calls == [("event", ("after", {"type": "after", "x": "y" * 10})), ("event", ("next", {"type": "next"})),
                          ("ended", (False, True))]  # fmt: skip
    assert drops.counts == {"proxy_body_too_large": 1, "proxy_unreadable": 1}


def test_an_extension_frame_stops_the_reading() -> None:
    """A frame with an RSV bit set (an extension the handshake did not show) stops the reading, counted once; later
    frames are not read and the end is incomplete."""
    stream = text({"type": "a"}) + frame(0x1, b"\x00compressed", rsv=0x40) + text({"type": "b"}) + frame(0x8, b"")
    sink, drops, reader = _read(stream, [])
    reader.finish(True)
    assert sink.calls == [("event", ("a", {"type": "a"})), ("ended", (False, True))]
    assert drops.counts == {"proxy_unreadable": 1}
