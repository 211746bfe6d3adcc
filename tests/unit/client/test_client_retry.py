"""AssistantsClient retries, the client-wide retry-after rule, the request budget and interruptible waits."""

from __future__ import annotations

import asyncio
import email.utils
import logging

import httpx
import pytest

from stepscope.client import RequestBudget, RetryPolicy
from stepscope.errors import AuthError, BadRequest, NotFound, RateLimited, Unavailable
from stepscope.testing import FakeClock
from tests.kit.client import REF, THREAD, error_body, harness, page, reply, run_obj

OK = reply(run_obj("run_abc"))


def limited(retry_after: str | None = None, **headers: str) -> httpx.Response:
    if retry_after is not None:
        headers["retry-after"] = retry_after
    return reply(error_body("Rate limit reached for requests", "rate_limit_exceeded"), 429, headers)


def unavailable(**headers: str) -> httpx.Response:
    return reply(error_body("The server had an error"), 503, headers)


class TestRetries:
    @pytest.mark.anyio
    async def test_transient_error_then_success(self) -> None:
        """A 503 is retried after the 0.5 s initial backoff and the call then succeeds."""
        async with harness([unavailable(), OK]) as h:
            run = await h.client.get_run(REF)
        assert run.id == "run_abc"
        assert h.sleeps == [0.5]
        assert [c for _, c, _ in h.observer.requests] == ["503", "200"]

    @pytest.mark.anyio
    async def test_gives_up_after_max_retries(self) -> None:
        """Two retries (the SDK default) with doubling backoff, then the last error is raised."""
        async with harness([unavailable()]) as h:
            with pytest.raises(Unavailable, match="HTTP 503"):
                await h.client.get_run(REF)
        assert len(h.requests) == 3
        assert h.sleeps == [0.5, 1.0]

    @pytest.mark.anyio
    async def test_jitter_shortens_backoff(self) -> None:
        """The injected random draw scales the backoff by (1 - 0.25 * rand)."""
        async with harness([unavailable(), OK], rng=lambda: 0.8) as h:
            await h.client.get_run(REF)
        assert h.sleeps == [pytest.approx(0.5 * 0.8)]

    @pytest.mark.anyio
    async def test_should_retry_false(self) -> None:
        """`x-should-retry: false` stops a 503 from being retried."""
        async with harness([unavailable(**{"x-should-retry": "false"}), OK]) as h:
            with pytest.raises(Unavailable):
                await h.client.get_run(REF)
        assert len(h.requests) == 1

    @pytest.mark.anyio
    async def test_should_retry_true(self) -> None:
        """`x-should-retry: true` makes even a 404 retryable."""
        gone = reply(error_body("not yet"), 404, {"x-should-retry": "true"})
        async with harness([gone, OK]) as h:
            assert (await h.client.get_run(REF)).id == "run_abc"
        assert len(h.requests) == 2

    @pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
    @pytest.mark.anyio
    async def test_fatal_statuses_not_retried(self, status: int) -> None:
        """Client errors are raised after a single attempt."""
        async with harness([reply(error_body("no"), status), OK]) as h:
            with pytest.raises((AuthError, BadRequest, NotFound)):
                await h.client.get_run(REF)
        assert len(h.requests) == 1

    @pytest.mark.anyio
    async def test_transport_error_and_truncated_body_retried(self) -> None:
        """Dropped connections and truncated JSON are retried like 5xx."""
        async with harness([httpx.RemoteProtocolError("peer closed"), reply(b'{"id": "run_a'), OK]) as h:
            assert (await h.client.get_run(REF)).id == "run_abc"
        assert [c for _, c, _ in h.observer.requests] == ["error", "invalid_body", "200"]

    @pytest.mark.anyio
    async def test_total_timeout_caps_retries(self) -> None:
        """No retry starts when its wait would pass the total timeout."""
        policy = RetryPolicy(max_retries=5, total_timeout=1.2)
        async with harness([unavailable()], retry=policy) as h:
            with pytest.raises(Unavailable):
                await h.client.get_run(REF)
        assert h.sleeps == [0.5]
        assert len(h.requests) == 2

    @pytest.mark.anyio
    async def test_paging_retries_one_page(self) -> None:
        """A failed page is retried with the same cursor and paging continues."""
        replies = [reply(page([run_obj("run_2")], True)), unavailable(), reply(page([run_obj("run_1")], False))]
        async with harness(replies) as h:
            runs = [r.id async for r in h.client.list_runs(THREAD)]
        assert runs == ["run_2", "run_1"]
        assert [p.get("after") for p in h.params] == [None, "run_2", "run_2"]


class TestRetryAfter:
    @pytest.mark.anyio
    async def test_seconds(self) -> None:
        """A 429 with retry-after: 2 waits exactly 2 s before the retry."""
        async with harness([limited("2"), OK]) as h:
            await h.client.get_run(REF)
        assert h.sleeps == [2.0]
        assert h.sent_at[1] - h.sent_at[0] == pytest.approx(2.0)

    @pytest.mark.anyio
    async def test_milliseconds(self) -> None:
        """retry-after-ms is preferred and converted to seconds."""
        async with harness([limited("9", **{"retry-after-ms": "1500"}), OK]) as h:
            await h.client.get_run(REF)
        assert h.sleeps == [1.5]

    @pytest.mark.anyio
    async def test_http_date(self) -> None:
        """An HTTP-date retry-after is measured against the injected wall clock."""
        date = email.utils.formatdate(FakeClock().time() + 7, usegmt=True)
        async with harness([limited(date), OK]) as h:
            await h.client.get_run(REF)
        assert h.sleeps == [pytest.approx(7.0)]

    @pytest.mark.anyio
    async def test_past_http_date_means_backoff(self) -> None:
        """A retry-after date in the past is ignored: plain backoff, no delay reported."""
        date = email.utils.formatdate(FakeClock().time() - 60, usegmt=True)
        async with harness([limited(date)], retry=RetryPolicy(max_retries=1)) as h:
            with pytest.raises(RateLimited) as info:
                await h.client.get_run(REF)
        assert h.sleeps == [0.5]
        assert info.value.retry_after is None

    @pytest.mark.anyio
    async def test_exhausted_429_carries_retry_after(self) -> None:
        """After the last retry a 429 raises RateLimited with the server's delay for the poller."""
        async with harness([limited("3")]) as h:
            with pytest.raises(RateLimited) as info:
                await h.client.get_run(REF)
        assert info.value.retry_after == 3.0
        assert info.value.status_code == 429
        assert h.sleeps == [3.0, 3.0]

    @pytest.mark.anyio
    async def test_429_without_retry_after(self) -> None:
        """A 429 without retry-after backs off exponentially and reports no delay."""
        async with harness([limited()], retry=RetryPolicy(max_retries=1)) as h:
            with pytest.raises(RateLimited) as info:
                await h.client.get_run(REF)
        assert info.value.retry_after is None
        assert h.sleeps == [0.5]

    @pytest.mark.anyio
    async def test_not_before_applies_to_every_request(self) -> None:
        """After a 429 with retry-after: 5, no request of any endpoint is sent for 5 s."""
        async with harness([limited("5"), reply(page([], False))], retry=RetryPolicy(max_retries=0)) as h:
            with pytest.raises(RateLimited):
                await h.client.get_run(REF)
            steps = [s async for s in h.client.list_steps(REF)]
        assert steps == []
        assert h.sent_at[1] - h.sent_at[0] >= 5.0
        assert h.sleeps == [5.0]

    @pytest.mark.anyio
    async def test_concurrent_requests_respect_not_before(self) -> None:
        """Concurrent calls all wait out the retry-after, whichever saw the 429."""
        async with harness([limited("4"), OK]) as h:
            await asyncio.gather(h.client.get_run(REF), h.client.get_run(REF))
        assert all(t - h.sent_at[0] >= 4.0 for t in h.sent_at[1:])

    @pytest.mark.anyio
    async def test_long_retry_after_fails_fast(self) -> None:
        """A retry-after beyond 120 s is not slept through: RateLimited now, and later calls fail without sending."""
        async with harness([limited("300"), OK]) as h:
            with pytest.raises(RateLimited) as first:
                await h.client.get_run(REF)
            h.clock.advance(100)
            with pytest.raises(RateLimited) as second:
                await h.client.get_run(REF)
            h.clock.advance(200)
            await h.client.get_run(REF)
        assert first.value.retry_after == 300.0
        assert second.value.retry_after == pytest.approx(200.0)
        assert h.sleeps == []
        assert len(h.requests) == 2

    @pytest.mark.anyio
    async def test_503_retry_after_also_respected(self) -> None:
        """A 503 with retry-after sets the same not-before instant."""
        async with harness([unavailable(**{"retry-after": "3"}), OK]) as h:
            await h.client.get_run(REF)
        assert h.sent_at[1] - h.sent_at[0] >= 3.0


class TestBudget:
    @pytest.mark.anyio
    async def test_low_remaining_slows_requests(self) -> None:
        """With 30 of 100 requests left for 10 s, requests are spaced 1 s apart."""
        headers = {
            "x-ratelimit-limit-requests": "100",
            "x-ratelimit-remaining-requests": "30",
            "x-ratelimit-reset-requests": "10s",
        }
        async with harness([reply(run_obj("run_abc"), headers=headers)]) as h:
            for _ in range(3):
                await h.client.get_run(REF)
        assert h.sleeps == [pytest.approx(1.0), pytest.approx(1.0)]

    @pytest.mark.anyio
    async def test_comfortable_budget_is_free(self) -> None:
        """With plenty of requests left nothing waits."""
        headers = {"x-ratelimit-limit-requests": "100", "x-ratelimit-remaining-requests": "99"}
        async with harness([reply(run_obj("run_abc"), headers=headers)], budget=RequestBudget()) as h:
            for _ in range(3):
                await h.client.get_run(REF)
        assert h.sleeps == []


class TestStopAndLogging:
    @pytest.mark.anyio
    async def test_stop_interrupts_retry_wait(self) -> None:
        """With the real stop-aware sleep, a set stop event ends a 30 s retry wait with the last error."""
        stop = asyncio.Event()
        stop.set()
        async with harness([limited("30"), OK], sleep=None, stop=stop) as h:
            loop = asyncio.get_running_loop()
            started = loop.time()
            with pytest.raises(RateLimited):
                await h.client.get_run(REF)
            assert loop.time() - started < 1.0
            with pytest.raises(RateLimited, match="rate limited for another"):
                await h.client.get_run(REF)
        assert len(h.requests) == 1

    @pytest.mark.anyio
    async def test_stop_while_pacing(self) -> None:
        """A stop during a budget wait raises instead of sending."""
        stop = asyncio.Event()
        headers = {"x-ratelimit-limit-requests": "10", "x-ratelimit-remaining-requests": "1"}
        async with harness([reply(run_obj("run_abc"), headers=headers)], stop=stop) as h:
            await h.client.get_run(REF)
            stop.set()
            with pytest.raises(RateLimited, match="stopped while pacing"):
                await h.client.get_run(REF)
        assert len(h.requests) == 1

    @pytest.mark.anyio
    async def test_give_up_logged_once_per_change(self, caplog: pytest.LogCaptureFixture) -> None:
        """Nothing above DEBUG (the poller and discovery report API state); one give-up line per status change."""
        caplog.set_level(logging.DEBUG, logger="stepscope.client")
        replies = [unavailable(), unavailable(), reply(error_body("gone"), 404), OK]
        async with harness(replies, retry=RetryPolicy(max_retries=0)) as h:
            for _ in range(3):
                with pytest.raises((Unavailable, NotFound)):
                    await h.client.get_run(REF)
            await h.client.get_run(REF)
        assert all(r.levelno == logging.DEBUG for r in caplog.records)
        give_ups = [r.getMessage() for r in caplog.records if "giving up" in r.getMessage()]
        assert len(give_ups) == 2
        assert "HTTP 503" in give_ups[0]
        assert "HTTP 404" in give_ups[1]
        assert any("succeed again" in r.getMessage() for r in caplog.records)
