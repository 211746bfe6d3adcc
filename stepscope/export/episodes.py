"""Failure episodes of the OTLP exporters, told in a few lines instead of one per attempt.

A backend that is down fails every export attempt, and the SDK's OTLP exporters log every retry inside an attempt
(a few hundred characters each). For one signal, `SdkLogGate` takes the SDK exporter's own records off the log
(a logging filter on its loggers) and keeps what they say went wrong, as a short reason
(`ConnectionRefusedError`, `HTTP 503 Service Unavailable`, `UNAVAILABLE`); `Episode` counts the failed attempts
between two successes and says when a line is due: at the first failure, then at most once per `every_s` with the
attempts since the last line, and once when exports recover. The exporters word the lines; the counters and the
backlog gauges say the rest.

Example, with a collector that is not running:

    span export failing (ConnectionRefusedError): 745 span(s) kept in the backlog, retried with backoff
    span export failing: 12 attempts in the last 61s, 1340 span(s) kept in the backlog (ConnectionRefusedError)
    span export recovered after 2m05s (25 attempts failed); delivering the backlog (1402 span(s))
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

ANY_RECORD: frozenset[str] = frozenset()
"""A logger whose every record is about the gate's signal (the SDK's HTTP exporters log per signal)."""
EVERY_S = 60.0
"""At most one line per episode this often."""
_REASON_CHARS = 80


@dataclass(frozen=True, slots=True)
class Report:
    """A line due about a failing episode: the first one (`first`), or one after `every_s` with the `attempts`
    failed over the last `seconds`; `reason` is the latest failure's, if any was known."""

    first: bool
    attempts: int
    seconds: float
    reason: str | None


@dataclass(frozen=True, slots=True)
class Recovery:
    """The end of an episode: `attempts` failed over `seconds` in all."""

    attempts: int
    seconds: float


class Episode:
    """The failed attempts between two successes, and when to say so.

    `failed(reason)` after each failed attempt returns the `Report` due now, or None: the first failure of an
    episode at once, later ones once `every_s` passed since the last report, with the attempts since it.
    `succeeded()` after each successful attempt returns the episode's `Recovery` once, None when nothing was
    failing. Called from one thread (the exporter's); `clock` is monotonic seconds.
    """

    __slots__ = ("_attempts", "_clock", "_every", "_reason", "_reported_at", "_since", "_total", "failing")

    def __init__(self, *, every_s: float = EVERY_S, clock: Callable[[], float] = time.monotonic) -> None:
        self._every = every_s
        self._clock = clock
        self.failing = False
        self._since = self._reported_at = 0.0
        self._attempts = self._total = 0
        self._reason: str | None = None

    def failed(self, reason: str | None = None) -> Report | None:
        now = self._clock()
        self._reason = reason or self._reason
        self._attempts += 1
        self._total += 1
        if not self.failing:
            self.failing, self._since, self._reported_at = True, now, now
            self._attempts = 0
            return Report(True, 1, 0.0, self._reason)
        if now - self._reported_at < self._every:
            return None
        report = Report(False, self._attempts, now - self._reported_at, self._reason)
        self._reported_at, self._attempts = now, 0
        return report

    def succeeded(self) -> Recovery | None:
        if not self.failing:
            return None
        recovery = Recovery(self._total, self._clock() - self._since)
        self.failing, self._attempts, self._total, self._reason = False, 0, 0, None
        return recovery


def lasted(seconds: float) -> str:
    """`45s`, `2m05s`, `3h02m`: how long, for a log line."""
    whole = int(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"


def attempts(n: int) -> str:
    return f"{n} attempt" if n == 1 else f"{n} attempts"


class SdkLogGate(logging.Filter):
    """Takes the SDK exporter's own records about one signal off the log, keeping their reason for `take()`.

    `loggers` maps each SDK logger name to the words (`"traces"`, `"metrics"`) one of a record's arguments must be
    for the record to be about this signal, or `ANY_RECORD` when the logger serves this signal alone (the gRPC
    exporters share one logger). Records about another signal pass untouched; with the `stepscope` logger at
    DEBUG every record passes, for whoever is chasing the cause. `attach()` and `detach()` are idempotent.
    """

    def __init__(self, loggers: Mapping[str, frozenset[str]], *, ours: str = "stepscope") -> None:
        super().__init__()
        self._loggers = dict(loggers)
        self._ours = logging.getLogger(ours)
        self._lock = threading.Lock()
        self._reason: str | None = None
        self._from_error = False
        self._attached = False

    def attach(self) -> None:
        if not self._attached:
            self._attached = True
            for name in self._loggers:
                logging.getLogger(name).addFilter(self)

    def detach(self) -> None:
        if self._attached:
            self._attached = False
            for name in self._loggers:
                logging.getLogger(name).removeFilter(self)

    def take(self) -> str | None:
        """The reason the records since the last `take()` gave, and forget it."""
        with self._lock:
            reason, self._reason, self._from_error = self._reason, None, False
        return reason

    def filter(self, record: logging.LogRecord) -> bool:
        words = self._loggers.get(record.name)
        if words is None or (words and not _mentions(record, words)):
            return True
        error, reason = _reason(record)
        with self._lock:
            # An exception names the cause best; the SDK's closing "max retries" line must not replace it.
            if reason is not None and (error or not self._from_error):
                self._reason, self._from_error = reason, error
        return self._ours.isEnabledFor(logging.DEBUG)


def _mentions(record: logging.LogRecord, words: frozenset[str]) -> bool:
    args = record.args if isinstance(record.args, tuple) else ()
    return any(isinstance(arg, str) and arg in words for arg in args)


def _reason(record: logging.LogRecord) -> tuple[bool, str | None]:
    """`(from an exception, reason)` of an SDK exporter record: the innermost cause's type of an exception
    argument; else an HTTP status with its reason phrase, or a gRPC status code's name; else None."""
    args = record.args if isinstance(record.args, tuple) else ()
    for arg in args:
        if isinstance(arg, BaseException):
            return True, type(_innermost(arg)).__name__
    for i, arg in enumerate(args):
        if isinstance(arg, int) and not isinstance(arg, bool) and 100 <= arg <= 599:
            phrase = args[i + 1] if i + 1 < len(args) and isinstance(args[i + 1], str) else ""
            return False, f"HTTP {arg} {phrase}".strip()[:_REASON_CHARS]
        if isinstance(arg, enum.Enum):
            return False, arg.name
    return False, None


def _innermost(exc: BaseException) -> BaseException:
    """Follow `__cause__`, `__context__`, urllib3's `reason` and requests' wrapped first argument to the end."""
    seen = {id(exc)}
    while True:
        reason = getattr(exc, "reason", None)
        first = exc.args[0] if exc.args else None
        inner = next((e for e in (exc.__cause__, exc.__context__, reason, first) if isinstance(e, BaseException)), None)
        if inner is None or id(inner) in seen:
            return exc
        seen.add(id(inner))
        exc = inner
