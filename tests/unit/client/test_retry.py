"""The retry policy, retry-after parsing, Go durations and the request budget, as pure functions."""

from __future__ import annotations

import asyncio
import dataclasses
import email.utils

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stepscope.client.retry import (
    RequestBudget,
    RetryPolicy,
    SystemClock,
    parse_go_duration,
    parse_retry_after,
    stop_aware_sleep,
)

NOW = 1_780_000_000.0


class TestShouldRetry:
    @pytest.mark.parametrize("status", [408, 409, 429, 500, 502, 503, 504, 507, 599])
    def test_retryable_statuses(self, status: int) -> None:
        """408, 409, 429 and every 5xx are retried by default, as the SDK does."""
        assert RetryPolicy().should_retry(status, {}) is True

    @pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
    def test_client_errors_are_final(self, status: int) -> None:
        """Other 4xx statuses are not retried by default."""
        assert RetryPolicy().should_retry(status, {}) is False

    def test_header_forces_retry(self) -> None:
        """`x-should-retry: true` makes a 400 retryable."""
        assert RetryPolicy().should_retry(400, {"x-should-retry": "true"}) is True

    def test_header_forbids_retry(self) -> None:
        """`x-should-retry: false` (any case) stops a 503 from being retried."""
        assert RetryPolicy().should_retry(503, {"x-should-retry": " FALSE "}) is False

    def test_header_garbage_is_ignored(self) -> None:
        """An unreadable `x-should-retry` value falls back to the status table."""
        assert RetryPolicy().should_retry(503, {"x-should-retry": "maybe"}) is True

    def test_policy_is_frozen(self) -> None:
        """The policy is immutable data."""
        with pytest.raises(dataclasses.FrozenInstanceError):
            RetryPolicy().max_retries = 5  # type: ignore[misc]


class TestRetryDelay:
    def test_retry_after_ms_wins(self) -> None:
        """`retry-after-ms` is used in preference to `retry-after`."""
        assert RetryPolicy().retry_delay(0, {"retry-after-ms": "1500", "retry-after": "9"}, 0.0) == 1.5

    def test_retry_after_seconds(self) -> None:
        """An integer or float `retry-after` is a delay in seconds."""
        policy = RetryPolicy()
        assert policy.retry_delay(0, {"retry-after": "3"}, 0.0) == 3.0
        assert policy.retry_delay(0, {"retry-after": "2.5"}, 0.0) == 2.5

    def test_retry_after_http_date(self) -> None:
        """An HTTP-date `retry-after` is measured from the injected wall clock."""
        date = email.utils.formatdate(NOW + 10, usegmt=True)
        assert RetryPolicy().retry_delay(0, {"retry-after": date}, 0.0, now=NOW) == pytest.approx(10.0)

    def test_http_date_without_now_is_ignored(self) -> None:
        """Without a wall clock a date cannot be interpreted, so backoff applies."""
        date = email.utils.formatdate(NOW + 10, usegmt=True)
        assert RetryPolicy().retry_delay(1, {"retry-after": date}, 0.0) == 1.0

    @pytest.mark.parametrize("value", ["121", "-1", "nan", "soon", "Mon, 99 Foo 2026 00:00:00"])
    def test_out_of_range_or_unreadable_falls_back(self, value: str) -> None:
        """A retry-after outside 0..120 s or unreadable is ignored in favour of backoff."""
        assert RetryPolicy().retry_delay(2, {"retry-after": value}, 0.0, now=NOW) == 2.0

    def test_bad_ms_falls_through_to_seconds(self) -> None:
        """An unreadable `retry-after-ms` does not hide a valid `retry-after`."""
        assert RetryPolicy().retry_delay(0, {"retry-after-ms": "x", "retry-after": "4"}, 0.0) == 4.0

    def test_naive_date_is_ignored(self) -> None:
        """A date without a zone is not trusted."""
        assert parse_retry_after({"retry-after": "Mon, 01 Jun 2026 00:00:00"}, now=NOW) is None

    def test_backoff_doubles_then_caps(self) -> None:
        """Backoff is 0.5 * 2**n seconds without jitter, capped at 8 s."""
        policy = RetryPolicy()
        assert [policy.retry_delay(n, {}, 0.0) for n in range(6)] == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0]
        assert policy.backoff(10_000, 0.0) == 8.0

    @given(attempt=st.integers(min_value=0, max_value=200), rand=st.floats(min_value=0.0, max_value=0.999999))
    def test_jitter_bounds(self, attempt: int, rand: float) -> None:
        """Jitter keeps every delay within (0.75, 1] times the capped base and never above 8 s."""
        policy = RetryPolicy()
        base = min(0.5 * 2.0**attempt, 8.0)
        delay = policy.backoff(attempt, rand)
        assert 0.75 * base < delay <= base <= 8.0


class TestGoDuration:
    @pytest.mark.parametrize(
        ("text", "seconds"),
        [("1s", 1.0), ("6m0s", 360.0), ("12ms", 0.012), ("1h2m3.5s", 3723.5), ("500us", 0.0005), ("2", 2.0)],
    )
    def test_parses(self, text: str, seconds: float) -> None:
        """Go-style durations and bare seconds convert to seconds."""
        assert parse_go_duration(text) == pytest.approx(seconds)

    @pytest.mark.parametrize("text", [None, "", "  ", "abc", "1x", "-1", "1s junk", "s1", "1sx2s"])
    def test_rejects(self, text: str | None) -> None:
        """Anything that is not a whole duration is None."""
        assert parse_go_duration(text) is None


def _headers(remaining: int, limit: int | None = 100, reset: str | None = "10s") -> dict[str, str]:
    headers = {"x-ratelimit-remaining-requests": str(remaining)}
    if limit is not None:
        headers["x-ratelimit-limit-requests"] = str(limit)
    if reset is not None:
        headers["x-ratelimit-reset-requests"] = reset
    return headers


class TestRequestBudget:
    def test_unknown_budget_never_waits(self) -> None:
        """Without rate-limit headers requests go at once."""
        budget = RequestBudget()
        budget.update({}, 0.0)
        assert [budget.acquire(0.0) for _ in range(3)] == [0.0, 0.0, 0.0]

    def test_comfortable_budget_never_waits(self) -> None:
        """At or above half of the limit remaining, nothing is delayed."""
        budget = RequestBudget()
        budget.update(_headers(50), 0.0)
        assert budget.spacing(0.0) == 0.0
        assert [budget.acquire(0.0) for _ in range(3)] == [0.0, 0.0, 0.0]

    def test_low_budget_spaces_requests(self) -> None:
        """Below half, requests are spaced reset / (remaining - reserve) apart."""
        budget = RequestBudget()
        budget.update(_headers(30), 0.0)  # reserve 20, 10 left to share over 10 s
        assert budget.spacing(0.0) == pytest.approx(1.0)
        assert budget.acquire(0.0) == 0.0
        assert budget.acquire(0.0) == pytest.approx(1.0)
        assert budget.acquire(0.0) == pytest.approx(2.0)

    def test_reserve_waits_for_reset_and_no_longer(self) -> None:
        """At or under the reserve the next request waits for the reset, never beyond it."""
        budget = RequestBudget()
        budget.update(_headers(20, reset="6s"), 0.0)
        assert budget.acquire(0.0) == pytest.approx(6.0)
        assert budget.acquire(1.0) == pytest.approx(5.0)
        assert budget.acquire(7.0) == 0.0

    def test_zero_reset_still_waits_a_moment(self) -> None:
        """A spent budget with a rounded-down `0ms` reset still waits briefly instead of bursting."""
        budget = RequestBudget()
        budget.update(_headers(0, reset="0ms"), 5.0)
        assert budget.acquire(5.0) == pytest.approx(0.01)

    def test_window_end_restores_full_speed(self) -> None:
        """Once the window has reset, stale low numbers no longer delay anything."""
        budget = RequestBudget()
        budget.update(_headers(1, reset="2s"), 0.0)
        assert budget.spacing(2.5) == 0.0
        assert budget.acquire(2.5) == 0.0

    def test_missing_limit_and_reset_use_fallbacks(self) -> None:
        """Without a limit header the largest remaining seen is the limit; without a reset, `default_reset`."""
        budget = RequestBudget(default_reset=4.0)
        budget.update(_headers(100, limit=None, reset=None), 0.0)
        budget.update(_headers(30, limit=None, reset=None), 0.0)
        assert budget.spacing(0.0) == pytest.approx(4.0 / 10)

    @pytest.mark.parametrize("remaining", ["-3", "many"])
    def test_unreadable_remaining_is_ignored(self, remaining: str) -> None:
        """A negative or non-numeric remaining count leaves the budget unknown."""
        budget = RequestBudget()
        budget.update({"x-ratelimit-remaining-requests": remaining}, 0.0)
        assert budget.spacing(0.0) == 0.0

    def test_bad_fractions_rejected(self) -> None:
        """The reserve must not exceed the slow-down threshold."""
        with pytest.raises(ValueError, match="reserve_fraction"):
            RequestBudget(reserve_fraction=0.6, slow_fraction=0.5)

    def test_repr_shows_state(self) -> None:
        """The repr shows the current numbers for debugging."""
        budget = RequestBudget()
        budget.update(_headers(7), 0.0)
        assert "remaining=7" in repr(budget)


class TestStopAwareSleep:
    @pytest.mark.anyio
    async def test_stop_interrupts(self) -> None:
        """Setting the stop event ends a long sleep at once."""
        stop = asyncio.Event()
        stop.set()
        loop = asyncio.get_running_loop()
        started = loop.time()
        await stop_aware_sleep(stop)(30.0)
        assert loop.time() - started < 1.0

    @pytest.mark.anyio
    async def test_sleeps_without_stop(self) -> None:
        """Without a stop event (or with one never set) it sleeps the given time."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        await stop_aware_sleep(None)(0.01)
        await stop_aware_sleep(asyncio.Event())(0.01)
        await stop_aware_sleep(None)(0.0)
        assert loop.time() - started >= 0.02


def test_system_clock_reads_real_time() -> None:
    """The default clock gives a current Unix time and a non-decreasing monotonic time."""
    clock = SystemClock()
    first = clock.monotonic()
    assert clock.time() > 1_700_000_000
    assert clock.monotonic() >= first
