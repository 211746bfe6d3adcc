"""HTTP/1.1 as stepscope's own server speaks it: keep-alive, pipelining, chunked bodies both ways, HEAD,
100-continue, flow control, disconnects, and what it refuses before any application code runs."""

from __future__ import annotations

import asyncio
import json

import pytest

from stepscope.receivers.server import ServerLimits
from tests.kit.proxy import RawClient
from tests.unit.receivers.apps import Recorder, serving

pytestmark = pytest.mark.anyio


def _get(path: str, *extra: str) -> bytes:
    return ("\r\n".join([f"GET {path} HTTP/1.1", "Host: t", *extra]) + "\r\n\r\n").encode()


def _post(path: str, body: bytes, *extra: str) -> bytes:
    head = "\r\n".join([f"POST {path} HTTP/1.1", "Host: t", f"Content-Length: {len(body)}", *extra])
    return head.encode() + b"\r\n\r\n" + body


async def test_keep_alive_serves_many_requests_on_one_connection() -> None:
    """Three requests one after another on one connection are all answered, each with its length, and the
    connection stays open after them."""
    app = Recorder()
    async with serving(app) as port:
        client = await RawClient.open(port)
        answers = []
        for i in range(3):
            await client.send(_post(f"/n{i}?q={i}", b"x" * i))
            answers.append(await client.answer())
        assert not await client.closed(within_s=0.2)
        await client.close()
    assert [a.status for a in answers] == [200, 200, 200]
    assert [(a.json()["path"], a.json()["query"], a.json()["body"]) for a in answers] == [
        ("/n0", "q=0", 0), ("/n1", "q=1", 1), ("/n2", "q=2", 2)
    ]  # fmt: skip
    assert len({a.json()["client_port"] for a in answers}) == 1
    assert all(a.header("content-length") and not a.chunked for a in answers)


async def test_pipelined_requests_are_answered_in_order_one_at_a_time() -> None:
    """Requests sent in one write are served one at a time, the slow first one first, and answered in order."""
    app = Recorder()
    async with serving(app) as port:
        client = await RawClient.open(port)
        await client.send(_post("/slow-read", b"a" * 10) + _get("/second") + _post("/third", b"bb"))
        answers = [await client.answer() for _ in range(3)]
        await client.close()
    assert [a.json()["path"] for a in answers] == ["/slow-read", "/second", "/third"]
    assert [a.json()["body"] for a in answers] == [10, 0, 2]
    assert app.most_running == 1


async def test_chunked_request_body_and_chunked_answer() -> None:
    """A chunked request body reaches the application whole, and an answer without a length goes out chunked."""
    app = Recorder()
    body = b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    async with serving(app) as port:
        client = await RawClient.open(port)
        await client.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n" + body)
        echoed = await client.answer()
        await client.send(_get("/stream"))
        streamed = await client.answer()
        await client.close()
    assert echoed.json()["body"] == 11
    assert streamed.chunked and streamed.body == b"one,two,three"
    assert streamed.header("content-length") is None


async def test_head_answer_carries_the_length_but_no_body() -> None:
    """A HEAD answer keeps its content-length but sends no body bytes, so the next request on the connection
    reads its own answer."""
    app = Recorder()
    async with serving(app) as port:
        client = await RawClient.open(port)
        await client.send(_get("/x").replace(b"GET", b"HEAD", 1) + _get("/after"))
        head = await client.answer(head=True)
        after = await client.answer()
        await client.close()
    assert head.status == 200 and int(head.header("content-length") or 0) > 0 and head.body == b""
    assert after.json()["path"] == "/after"


async def test_expect_100_continue_is_answered_before_the_body() -> None:
    """With `Expect: 100-continue` the server says `100 Continue` once the application reads, then the client's
    body arrives whole."""
    app = Recorder()
    async with serving(app) as port:
        client = await RawClient.open(port)
        await client.send(b"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n")
        interim = await asyncio.wait_for(client.reader.readuntil(b"\r\n\r\n"), 2)
        await client.send(b"data")
        final = await client.answer()
        await client.close()
    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
    assert final.status == 200 and final.json()["body"] == 4


async def test_a_slow_reader_holds_back_the_body_not_memory() -> None:
    """A 4 MB upload to an application that reads slowly arrives whole, in messages of at most a few hundred KB:
    reading pauses while the application has not consumed."""
    app = Recorder()
    size = 4 * 1024 * 1024
    async with serving(app) as port:
        client = await RawClient.open(port)
        await client.send(_post("/slow-read", b"z" * size))
        answer = await client.answer(within_s=20)
        await client.close()
    sizes = [m["body"] for m in app.messages]
    assert answer.json()["body"] == size and sum(sizes) == size
    assert max(sizes) <= 320 * 1024, max(sizes)


async def test_the_application_learns_that_the_client_left() -> None:
    """When the client goes away, the waiting application receives `http.disconnect` and the connection's
    disconnect future is done."""
    app = Recorder()
    async with serving(app) as port:
        client = await RawClient.open(port)
        await client.send(_get("/gone"))
        await asyncio.sleep(0.1)
        await client.close()
        await asyncio.wait_for(app.disconnected.wait(), 2)
    assert app.messages[-1] == {"type": "http.disconnect"}


async def test_http_1_0_without_a_length_closes_the_connection() -> None:
    """An HTTP/1.0 request gets its answer delimited by the connection's end, then the connection closes."""
    app = Recorder()
    async with serving(app) as port:
        client = await RawClient.open(port)
        await client.send(b"GET /stream HTTP/1.0\r\n\r\n")
        answer = await client.answer()
        await client.close()
    assert answer.body == b"one,two,three" and answer.header("connection") == "close"


@pytest.mark.parametrize(
    ("request_bytes", "status", "code"),
    [
        (b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n", 405, "method_not_allowed"),
        (b"GET http://example.com/v1/models HTTP/1.1\r\nHost: example.com\r\n\r\n", 400, "absolute_form_refused"),
        (b"GET * HTTP/1.1\r\nHost: t\r\n\r\n", 400, "absolute_form_refused"),
        (b"GET / HTTP/1.1\r\nHost: t\r\nContent-Length: x\r\n\r\n", 400, "invalid_request"),
        (b"NOT HTTP AT ALL\r\n\r\n", 400, "invalid_request"),
        (b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\n\r\n", 431, "request_header_fields_too_large"),
        (b"GET / HTTP/1.1\r\nHost: t\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n", 501,
         "upgrade_not_supported"),
    ],
)  # fmt: skip
async def test_refused_before_any_application_code(request_bytes: bytes, status: int, code: str) -> None:
    """CONNECT, targets that are not origin-form, malformed requests, oversized heads and (on a listener that does
    not relay them) upgrades get an OpenAI-shaped error and a closed connection; the application never runs."""
    app = Recorder()
    async with serving(app, ServerLimits(tunnels=False)) as port:
        client = await RawClient.open(port)
        await client.send(request_bytes)
        answer = await client.answer()
        closed = await client.closed(within_s=2)
        await client.close()
    assert answer.status == status and answer.header("connection") == "close"
    assert answer.json() == {"error": {"message": answer.json()["error"]["message"], "type": "proxy_error",
                                       "param": None, "code": code}}  # fmt: skip
    assert closed and app.calls == []


async def test_an_application_that_raises_gets_a_500_and_one_log_line(caplog: pytest.LogCaptureFixture) -> None:
    """An exception in the application is a JSON 500 for the client and one logged traceback; a second one within
    the minute is counted for the next report, not logged."""
    app = Recorder()
    async with serving(app) as port:
        answers = []
        for _ in range(2):
            client = await RawClient.open(port)
            await client.send(_get("/boom"))
            answers.append(await client.answer())
            await client.close()
    assert [a.status for a in answers] == [500, 500]
    assert json.loads(answers[0].body)["error"]["code"] == "internal_error"
    failures = [r for r in caplog.records if "serving GET /boom failed" in r.getMessage()]
    assert len(failures) == 1 and failures[0].exc_info is not None
