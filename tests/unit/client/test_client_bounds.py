"""AssistantsClient under hostile answers: capped bodies, a deadline per request, listings that end, plain errors.

Bodies and deadlines are checked against a raw HTTP/1.1 server on 127.0.0.1 that misbehaves on some paths and
answers normally on the others, so the bounds are exercised over real sockets, chunked encoding included, through
the HTTP client `serve` uses (`connect.http_client`: httpx on aiohttp's transport).
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import logging
import socket
import time
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest

from stepscope.client import BearerAuth, RetryPolicy
from stepscope.client.connect import http_client
from stepscope.core.records import UnitRef
from stepscope.errors import LimitExceeded, RetryableSourceError, Unavailable
from stepscope.protocols.assistants.client import AssistantsClient
from tests.kit.client import (
    NO_RETRY,
    REF,
    SECRET,
    THREAD,
    Recorder,
    collect,
    harness,
    page,
    reply,
    run_obj,
    step_obj,
)

MiB = 1024 * 1024
CHUNK = b" " * 65536  # JSON whitespace: the body is garbage only because it never ends
Answer = Callable[[asyncio.StreamWriter], Awaitable[None]]


# --- a raw HTTP server on loopback -------------------------------------------------------------------------------


def head(status: str = "200 OK", **headers: str) -> bytes:
    lines = [f"HTTP/1.1 {status}", "content-type: application/json", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def send_chunks(writer: asyncio.StreamWriter, total: float, chunk: bytes = CHUNK, pause: float = 0.0) -> None:
    """Send `total` bytes (inf: forever) as HTTP chunks of `chunk`, waiting for the socket between chunks."""
    sent = 0
    frame = f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
    while sent < total:
        writer.write(frame)
        await writer.drain()
        sent += len(chunk)
        if pause:
            await asyncio.sleep(pause)
    writer.write(b"0\r\n\r\n")
    await writer.drain()


def json_answer(body: Any) -> Answer:
    async def answer(writer: asyncio.StreamWriter) -> None:
        data = json.dumps(body).encode()
        writer.write(head(**{"content-length": str(len(data))}) + data)
        await writer.drain()

    return answer


class HostileServer:
    """Answers each request with the `Answer` of the longest matching path prefix; counts bytes it got out."""

    def __init__(self, answers: dict[str, Answer]) -> None:
        self.answers = answers
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def __aenter__(self) -> HostileServer:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._tasks:
            task.cancel()
        for writer in self._writers:
            writer.close()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        try:
            while True:  # keep-alive: the client may reuse the connection for the next request
                request = await reader.readuntil(b"\r\n\r\n")
                path = request.split(b" ", 2)[1].decode()
                prefix = max((p for p in self.answers if path.startswith(p)), key=len)
                await self.answers[prefix](writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        finally:
            writer.close()


@contextlib.asynccontextmanager
async def client_for(server: HostileServer, **options: Any) -> AsyncIterator[tuple[AssistantsClient, Recorder]]:
    """A client on the real network stack, with a per-read timeout far longer than any deadline under test."""
    observer = Recorder()
    options.setdefault("retry", NO_RETRY)
    async with http_client(timeout=httpx.Timeout(60.0), limits=httpx.Limits()) as http:
        yield (
            AssistantsClient(http, base_url=server.url, auth=BearerAuth(SECRET), observer=observer, **options),
            observer,
        )


HEALTHY = json_answer(run_obj("run_ok"))
BAD = "/v1/threads/thread_bad/"
OK_REF = UnitRef("thread_ok", "run_ok")
BAD_REF = UnitRef("thread_bad", "run_bad")


async def drain(iterator: AsyncIterator[Any]) -> tuple[list[Any], LimitExceeded]:
    """Every item a listing yields before it fails with LimitExceeded, and that error."""
    items: list[Any] = []
    try:
        async for item in iterator:
            items.append(item)
    except LimitExceeded as exc:
        return items, exc
    raise AssertionError("the listing ended without LimitExceeded")


async def traced_peak(work: Awaitable[Any]) -> tuple[int, BaseException | None]:
    """Peak bytes Python allocated above the baseline while `work` ran, and what it raised."""
    tracemalloc.start()
    try:
        base, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        raised: BaseException | None = None
        try:
            await work
        except Exception as exc:  # returned for the test to assert on
            raised = exc
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak - base, raised


# --- bodies ------------------------------------------------------------------------------------------------------


class TestBodyCap:
    @pytest.mark.anyio
    async def test_100_mb_chunked_body_stays_bounded(self) -> None:
        """A 100 MB chunked body is abandoned at the default 8 MiB cap, with peak memory growth far below 100 MB."""

        async def huge(writer: asyncio.StreamWriter) -> None:
            writer.write(head(**{"transfer-encoding": "chunked"}))
            await send_chunks(writer, 100 * MiB)

        async with HostileServer({"/": HEALTHY, BAD: huge}) as server, client_for(server) as (client, observer):
            peak, raised = await traced_peak(client.get_run(BAD_REF))
            healthy = await client.get_run(OK_REF)
        assert isinstance(raised, LimitExceeded)
        assert raised.reason == "too_large"
        assert str(raised) == "get_run: HTTP 200: body over 8 MiB (STEPSCOPE_API_MAX_BODY)"
        assert peak < 40 * MiB, f"peak growth {peak / MiB:.1f} MiB"
        assert healthy.id == "run_ok"
        assert [c for _, c, _ in observer.requests] == ["too_large", "200"]

    @pytest.mark.anyio
    async def test_endless_chunked_body_stays_bounded(self) -> None:
        """A chunked body that never ends is abandoned at the cap instead of growing memory forever."""

        async def endless(writer: asyncio.StreamWriter) -> None:
            writer.write(head(**{"transfer-encoding": "chunked"}))
            await send_chunks(writer, float("inf"))

        async with HostileServer({"/": HEALTHY, BAD: endless}) as server:
            async with client_for(server, max_body=2 * MiB) as (client, observer):
                peak, raised = await traced_peak(client.get_run(BAD_REF))
        assert isinstance(raised, LimitExceeded)
        assert raised.reason == "too_large"
        assert peak < 20 * MiB, f"peak growth {peak / MiB:.1f} MiB"
        assert [c for _, c, _ in observer.requests] == ["too_large"]

    @pytest.mark.anyio
    async def test_declared_length_over_cap_is_not_read(self) -> None:
        """A Content-Length of 100 MB is refused on the headers alone, even though the body never arrives."""

        async def declared(writer: asyncio.StreamWriter) -> None:
            writer.write(head(**{"content-length": str(100 * MiB)}))
            await writer.drain()
            await asyncio.sleep(3600)  # the body would take forever: only the headers can have decided

        async with HostileServer({"/": HEALTHY, BAD: declared}) as server, client_for(server) as (client, observer):
            with pytest.raises(LimitExceeded, match="body over 8 MiB"):
                await client.get_run(BAD_REF)
        assert [c for _, c, _ in observer.requests] == ["too_large"]

    @pytest.mark.anyio
    async def test_body_over_cap_is_not_retried(self) -> None:
        """An over-cap body fails the call at once as a retryable error; the same request is not sent again."""
        async with harness([reply(b" " * 1025)], max_body=1024) as h:
            with pytest.raises(RetryableSourceError) as info:
                await h.client.get_run(REF)
        assert isinstance(info.value, LimitExceeded)
        assert (info.value.status_code, info.value.run_id) == (200, "run_abc")
        assert str(info.value) == "get_run: HTTP 200: body over 1024 bytes (STEPSCOPE_API_MAX_BODY)"
        assert len(h.requests) == 1
        assert [c for _, c, _ in h.observer.requests] == ["too_large"]

    @pytest.mark.anyio
    async def test_body_at_cap_is_read(self) -> None:
        """A body of exactly `max_body` bytes is still accepted."""
        data = json.dumps(run_obj("run_abc")).encode()
        async with harness([reply(data.ljust(2048))], max_body=2048) as h:
            run = await h.client.get_run(REF)
        assert run.id == "run_abc"

    @pytest.mark.anyio
    async def test_cap_applies_after_decompression(self) -> None:
        """A small gzip body that inflates past the cap is refused: the cap counts decoded bytes."""
        bomb = gzip.compress(b" " * (4 * MiB))
        assert len(bomb) < 64 * 1024
        async with harness([reply(bomb, headers={"content-encoding": "gzip"})], max_body=MiB) as h:
            with pytest.raises(LimitExceeded, match="body over 1 MiB"):
                await h.client.get_run(REF)

    @pytest.mark.anyio
    async def test_huge_error_body_keeps_its_status(self) -> None:
        """An error answer with an oversized body is still mapped by its status, without the server's message."""
        body = json.dumps({"error": {"message": "x" * MiB}}).encode()
        async with harness([reply(body, 503)], retry=NO_RETRY) as h:
            with pytest.raises(Unavailable) as info:
                await h.client.get_run(REF)
        assert not isinstance(info.value, LimitExceeded)
        assert str(info.value) == "get_run: HTTP 503"
        assert [c for _, c, _ in h.observer.requests] == ["503"]

    def test_bounds_must_be_positive(self) -> None:
        """A zero cap, deadline or page cap is a configuration error naming each setting."""
        from stepscope.errors import ConfigError  # noqa: PLC0415

        with pytest.raises(ConfigError) as info:
            AssistantsClient(
                httpx.AsyncClient(), base_url="https://x", auth=BearerAuth(SECRET), max_body=0, deadline=0, max_pages=0
            )
        assert info.value.problems == [
            "api.max_body: must be > 0",
            "api.deadline: must be > 0",
            "api.max_pages: must be > 0",
        ]


# --- deadlines ---------------------------------------------------------------------------------------------------


class TestDeadline:
    @pytest.mark.anyio
    async def test_trickling_body_ends_at_deadline(self) -> None:
        """A body that trickles a byte at a time forever ends at the request deadline, with bounded memory."""

        async def trickle(writer: asyncio.StreamWriter) -> None:
            writer.write(head(**{"transfer-encoding": "chunked"}))
            await send_chunks(writer, float("inf"), chunk=b" ", pause=0.02)

        async with HostileServer({"/": HEALTHY, BAD: trickle}) as server:
            async with client_for(server, deadline=0.5) as (client, observer):
                started = time.monotonic()
                peak, raised = await traced_peak(client.get_run(BAD_REF))
                elapsed = time.monotonic() - started
                healthy = await client.get_run(OK_REF)
        assert isinstance(raised, LimitExceeded)
        assert raised.reason == "deadline"
        assert str(raised) == f"get_run: no complete answer from {server.url} within 0.5s"
        assert elapsed < 10.0  # the per-read timeout is 60 s and never fires: only the deadline ends it
        assert peak < 10 * MiB
        assert healthy.id == "run_ok"
        assert [c for _, c, _ in observer.requests] == ["deadline", "200"]

    @pytest.mark.anyio
    async def test_silent_server_ends_at_deadline(self) -> None:
        """A server that accepts the request and never answers ends at the deadline, not at the 60 s read timeout."""

        async def silent(writer: asyncio.StreamWriter) -> None:
            await asyncio.sleep(3600)

        async with HostileServer({"/": silent}) as server, client_for(server, deadline=0.3) as (client, observer):
            with pytest.raises(LimitExceeded, match=r"within 0\.3s") as info:
                await client.list_runs(THREAD).__anext__()
        assert info.value.reason == "deadline"
        assert observer.requests[0][:2] == ("list_runs", "deadline")

    @pytest.mark.anyio
    async def test_deadline_is_retried_like_a_timeout(self) -> None:
        """A request past its deadline is retried under the policy, and the call succeeds when the server recovers."""
        calls: list[int] = []

        async def handler(request: httpx.Request) -> httpx.Response:
            calls.append(1)
            if len(calls) == 1:
                await asyncio.sleep(3600)
            return httpx.Response(200, json=run_obj("run_abc"))

        async def no_sleep(seconds: float) -> None:
            return None

        observer = Recorder()
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
            client = AssistantsClient(
                http,
                base_url="https://api.example.test/v1",
                auth=BearerAuth(SECRET),
                observer=observer,
                deadline=0.05,
                sleep=no_sleep,
                retry=RetryPolicy(max_retries=1),
            )
            run = await client.get_run(REF)
        assert run.id == "run_abc"
        assert [c for _, c, _ in observer.requests] == ["deadline", "200"]


# --- paging ------------------------------------------------------------------------------------------------------


def fresh_pages() -> Callable[[httpx.Request], httpx.Response]:
    """A listing that always has more, with a new last id on every page."""
    counter = iter(range(1_000_000))

    def answer(request: httpx.Request) -> httpx.Response:
        return reply(page([step_obj(f"step_{next(counter)}")], True))

    return answer


class TestPagingEnds:
    @pytest.mark.anyio
    async def test_alternating_cursors_end(self) -> None:
        """Cursors alternating A, B, A end the listing at the first cursor seen twice, after yielding A and B once."""
        replies = [reply(page([step_obj("step_a")], True)), reply(page([step_obj("step_b")], True))] * 50
        async with harness(replies) as h:
            steps, error = await drain(h.client.list_steps(REF))
        assert [s.id for s in steps] == ["step_a", "step_b"]
        assert len(h.requests) == 3
        assert error.reason == "repeated_cursor"
        assert str(error) == "list_steps: listing stopped: the server returned cursor step_a again after 3 page(s)"
        assert (error.thread_id, error.run_id) == (THREAD, "run_abc")

    @pytest.mark.anyio
    async def test_starting_cursor_counts_as_seen(self) -> None:
        """A first page whose last id is the caller's own cursor ends the listing before yielding its items."""
        async with harness([reply(page([step_obj("step_0")], True))]) as h:
            with pytest.raises(LimitExceeded, match="cursor step_0 again after 1 page"):
                await collect(h.client.list_steps(REF, after="step_0"))
        assert len(h.requests) == 1

    @pytest.mark.anyio
    async def test_fresh_cursors_end_at_the_default_page_cap(self) -> None:
        """Never-repeating cursors end after 100 pages by default, every page's items yielded."""
        async with harness([fresh_pages()]) as h:
            steps, error = await drain(h.client.list_steps(REF))
        assert len(h.requests) == len(steps) == 100
        assert error.reason == "page_cap"
        assert str(error) == (
            "list_steps: listing stopped: the server still has more after 100 pages (STEPSCOPE_MAX_PAGES)"
        )

    @pytest.mark.anyio
    async def test_runs_listing_is_capped_too(self) -> None:
        """Listing runs obeys a configured page cap the same way."""
        counter = iter(range(1000))
        answer: Callable[[httpx.Request], httpx.Response] = lambda _: reply(  # noqa: E731
            page([run_obj(f"run_{next(counter)}")], True)
        )
        async with harness([answer], max_pages=3) as h:
            with pytest.raises(LimitExceeded, match="after 3 pages"):
                await collect(h.client.list_runs(THREAD))
        assert len(h.requests) == 3

    @pytest.mark.anyio
    async def test_listing_that_ends_at_the_cap_is_whole(self) -> None:
        """A listing whose last page is exactly the cap-th ends normally."""
        replies = [reply(page([step_obj("step_1")], True)), reply(page([step_obj("step_2")], False))]
        async with harness(replies, max_pages=2) as h:
            steps = await collect(h.client.list_steps(REF))
        assert [s.id for s in steps] == ["step_1", "step_2"]

    @pytest.mark.anyio
    async def test_runaway_listing_is_counted(self) -> None:
        """Each listing stopped for a repeated cursor or the page cap is observed as an invalid `list`."""
        async with harness([reply(page([step_obj("step_1")], True))], max_pages=1) as h:
            for _ in range(2):
                with pytest.raises(RetryableSourceError):
                    await collect(h.client.list_steps(REF))
        assert [(e.kind, e.reason) for e in h.observer.invalid] == [("list", "listing stopped: page_cap")] * 2


# --- connection errors name the URL, never a secret --------------------------------------------------------------


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


class TestConnectionErrors:
    @pytest.mark.anyio
    async def test_refused_names_the_url(self) -> None:
        """A refused connection names the base URL it tried, in one line."""
        url = f"http://127.0.0.1:{closed_port()}/v1"
        async with http_client(timeout=httpx.Timeout(5.0), limits=httpx.Limits()) as http:
            client = AssistantsClient(http, base_url=url, auth=BearerAuth(SECRET), retry=NO_RETRY)
            with pytest.raises(Unavailable) as info:
                await client.get_run(REF)
        assert str(info.value) == f"get_run: cannot reach {url} (connection refused)"

    @pytest.mark.anyio
    async def test_userinfo_is_never_sent_nor_shown(self, caplog: pytest.LogCaptureFixture) -> None:
        """Credentials in the base URL are dropped: the request carries the key, not `Authorization: Basic`, and
        neither the user nor the password shows in errors, logs or the client's repr."""
        caplog.set_level(logging.DEBUG)
        seen: list[httpx.Request] = []

        def answer(request: httpx.Request) -> httpx.Response:
            seen.append(request)
            return httpx.Response(500, json={"error": {"message": "down"}})

        async with httpx.AsyncClient(transport=httpx.MockTransport(answer)) as http:
            url = "http://proxyuser:hunter2-pw@api.example.test/v1"
            client = AssistantsClient(http, base_url=url, auth=BearerAuth(SECRET), retry=NO_RETRY)
            with pytest.raises(Unavailable) as info:
                await client.get_run(REF)
        assert [r.headers["authorization"] for r in seen] == [f"Bearer {SECRET}"]
        assert str(seen[0].url).startswith("http://api.example.test/v1/")
        text = " ".join([str(info.value), repr(client), *(r.getMessage() for r in caplog.records)])
        assert "hunter2" not in text and "proxyuser" not in text

    @pytest.mark.anyio
    async def test_tls_failure_is_named(self) -> None:
        """An https URL answered by a plain-HTTP server fails as a named TLS problem at that URL."""

        async def plain(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(head("400 Bad Request", **{"content-length": "0"}))  # to the TLS ClientHello
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(plain, "127.0.0.1", 0)
        url = f"https://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1"
        try:
            async with http_client(timeout=httpx.Timeout(5.0), limits=httpx.Limits()) as http:
                client = AssistantsClient(http, base_url=url, auth=BearerAuth(SECRET), retry=NO_RETRY)
                with pytest.raises(Unavailable) as info:
                    await client.get_run(REF)
        finally:
            server.close()
            await server.wait_closed()
        assert str(info.value).startswith(f"get_run: cannot reach {url} (TLS: ")

    @pytest.mark.anyio
    async def test_dns_failure_is_named(self) -> None:
        """A name that does not resolve is reported as such, with the URL (the resolver's error is injected)."""
        error = httpx.ConnectError("[Errno -2] Name or service not known")
        error.__cause__ = socket.gaierror(-2, "Name or service not known")
        async with harness([error], retry=NO_RETRY, base_url="https://api.nowhere.test/v1") as h:
            with pytest.raises(Unavailable) as info:
                await h.client.get_run(REF)
        assert (
            str(info.value)
            == "get_run: cannot reach https://api.nowhere.test/v1 (name not resolved: Name or service not known)"
        )
