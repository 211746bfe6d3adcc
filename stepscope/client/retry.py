"""Retry policy and request budget for the Assistants API client, as data plus pure functions.

The policy copies the official OpenAI Python SDK's: retry 408, 409, 429 and any 5xx unless the server
says `x-should-retry: false` (or forces a retry with `true`); wait `retry-after-ms`, else `retry-after` (seconds or
an HTTP date) when it lies within 0..`max_retry_after`, else `initial_delay * 2**attempt` capped at `max_delay`,
times a jitter factor in `(1 - jitter, 1]`.

`RequestBudget` keeps stepscope from eating the application's rate limit: it reads the
`x-ratelimit-*-requests` headers and spaces requests out once the remaining share of the window runs low.
Nothing here sleeps or reads a clock: callers pass `now` and do the waiting.
"""

from __future__ import annotations

import asyncio
import email.utils
import math
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

_MIN_RESET = 0.01
RETRYABLE_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504})

SleepFn = Callable[[float], Awaitable[None]]
"""Waits about `seconds`; may return early when the client is being stopped."""

_GO_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_GO_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryPolicy:
    """How often and how long to retry one API request.

    `max_retries` counts retries after the first attempt (the SDK default is 2). `total_timeout` bounds the
    whole call, waits included (None: unbounded). A retry-after outside `0..max_retry_after` seconds is ignored
    by `retry_delay`, which then falls back to exponential backoff.
    """

    retryable_statuses: frozenset[int] = field(default=RETRYABLE_STATUSES)
    max_retries: int = 2
    initial_delay: float = 0.5
    max_delay: float = 8.0
    jitter: float = 0.25
    max_retry_after: float = 120.0
    total_timeout: float | None = 600.0

    def should_retry(self, status: int, headers: Mapping[str, str]) -> bool:
        """Whether a response with this status may be retried; `x-should-retry: true|false` overrides the table."""
        override = headers.get("x-should-retry", "").strip().lower()
        if override == "true":
            return True
        if override == "false":
            return False
        return status in self.retryable_statuses or status >= 500

    def backoff(self, attempt: int, rand: float) -> float:
        """Exponential backoff for retry number `attempt` (0-based), with `rand` in [0, 1) as the jitter draw."""
        base = min(self.initial_delay * math.pow(2.0, min(attempt, 64)), self.max_delay)
        return max(base * (1.0 - self.jitter * rand), 0.0)

    def retry_delay(self, attempt: int, headers: Mapping[str, str], rand: float, *, now: float | None = None) -> float:
        """Seconds to wait before retry number `attempt` (0-based).

        The server's delay wins when it is within `0..max_retry_after`; `now` (Unix seconds) is needed only to
        interpret an HTTP-date `retry-after`.
        """
        server = parse_retry_after(headers, now=now)
        if server is not None and 0.0 <= server <= self.max_retry_after:
            return server
        return self.backoff(attempt, rand)


def parse_retry_after(headers: Mapping[str, str], *, now: float | None = None) -> float | None:
    """The server's requested delay in seconds, or None when absent or unreadable.

    Reads `retry-after-ms` first (milliseconds, the OpenAI extension), then `retry-after` as seconds or as an
    HTTP date (relative to `now`, Unix seconds; without `now` a date is ignored). May be negative or huge: range
    checks are the caller's business.
    """
    ms = headers.get("retry-after-ms")
    if ms is not None:
        value = _float(ms)
        if value is not None:
            return value / 1000.0
    raw = headers.get("retry-after")
    if raw is None:
        return None
    value = _float(raw)
    if value is not None:
        return value
    if now is None:
        return None
    try:
        when = email.utils.parsedate_to_datetime(raw.strip())
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # RFC 9110 dates are GMT; a naive result means the zone was missing
        return None
    return when.timestamp() - now


def _float(text: str) -> float | None:
    try:
        value = float(text.strip())
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def parse_go_duration(text: str | None) -> float | None:
    """Seconds in a Go-style duration (`1s`, `6m0s`, `12ms`, `1h2m3.5s`) or a bare number of seconds."""
    if text is None:
        return None
    text = text.strip()
    if not text:
        return None
    plain = _float(text)
    if plain is not None:
        return plain if plain >= 0 else None
    total = 0.0
    pos = 0
    for match in _GO_DURATION.finditer(text):
        if match.start() != pos:
            return None
        total += float(match.group(1)) * _GO_UNITS[match.group(2)]
        pos = match.end()
    return total if pos == len(text) else None


def _int(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        return int(text.strip())
    except ValueError:
        return None


class RequestBudget:
    """Spaces requests so that stepscope leaves the application most of a shared request rate limit.

    Fed with every response's headers (`update`). While `remaining` is at least `slow_fraction` of the limit it
    never delays. Below that, requests are spaced `time_to_reset / max(remaining - reserve, 1)` apart, where
    `reserve = reserve_fraction * limit`; at or under the reserve the next request waits for the window's reset.
    No wait ever extends past the reset. Without a `limit` header the largest `remaining` seen stands in for it;
    without a reset header the window is taken as `default_reset` seconds. Times are monotonic seconds.
    """

    __slots__ = (
        "_default_reset",
        "_last_slot",
        "_limit",
        "_remaining",
        "_reserve_fraction",
        "_slow_fraction",
        "_window_end",
    )

    def __init__(
        self, *, reserve_fraction: float = 0.2, slow_fraction: float = 0.5, default_reset: float = 1.0
    ) -> None:
        if not 0.0 <= reserve_fraction <= slow_fraction <= 1.0:
            raise ValueError("need 0 <= reserve_fraction <= slow_fraction <= 1")
        self._reserve_fraction = reserve_fraction
        self._slow_fraction = slow_fraction
        self._default_reset = default_reset
        self._limit: int | None = None
        self._remaining: int | None = None
        self._window_end: float | None = None
        self._last_slot: float | None = None

    def __repr__(self) -> str:
        return f"RequestBudget(remaining={self._remaining}, limit={self._limit}, window_end={self._window_end})"

    def update(self, headers: Mapping[str, str], now: float) -> None:
        """Take the rate-limit state from one response; responses without the headers change nothing."""
        remaining = _int(headers.get("x-ratelimit-remaining-requests"))
        if remaining is None or remaining < 0:
            return
        limit = _int(headers.get("x-ratelimit-limit-requests"))
        if limit is not None and limit > 0:
            self._limit = limit
        elif self._limit is None or remaining > self._limit:
            self._limit = max(remaining, 1)
        self._remaining = remaining
        reset = parse_go_duration(headers.get("x-ratelimit-reset-requests"))
        # Servers round resets down ("0ms" a moment before the window turns); a floor keeps a spent budget from
        # reading as an already-reset one and bursting into 429s.
        self._window_end = now + max(reset if reset is not None else self._default_reset, _MIN_RESET)

    def spacing(self, now: float) -> float:
        """The gap to keep between requests right now (0 when the budget is comfortable or unknown)."""
        if self._remaining is None or self._limit is None or self._window_end is None or now >= self._window_end:
            return 0.0
        if self._remaining >= self._limit * self._slow_fraction:
            return 0.0
        left = self._window_end - now
        reserve = self._limit * self._reserve_fraction
        if self._remaining <= reserve:
            return left
        return left / max(self._remaining - reserve, 1.0)

    def acquire(self, now: float) -> float:
        """Reserve the next send slot and return how long to wait before sending (never past the reset)."""
        gap = self.spacing(now)
        if self._window_end is None or gap == 0.0:
            slot = now
        elif gap >= self._window_end - now:  # nothing left to share before the reset: wait for it
            slot = self._window_end
        else:
            slot = now if self._last_slot is None else min(max(now, self._last_slot + gap), self._window_end)
        self._last_slot = slot
        return slot - now


class SystemClock:
    """The real clocks: `time.time()` for wall time, `time.monotonic()` for intervals."""

    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()


def stop_aware_sleep(stop: asyncio.Event | None) -> SleepFn:
    """A sleep that returns as soon as `stop` is set (the caller checks `stop` afterwards)."""

    async def sleep(seconds: float) -> None:
        if seconds <= 0:
            return
        if stop is None:
            await asyncio.sleep(seconds)
            return
        try:
            await asyncio.wait_for(stop.wait(), seconds)
        except TimeoutError:
            return

    return sleep
