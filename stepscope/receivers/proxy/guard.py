"""Fail-open around what the proxy asks of a protocol: nothing a protocol's observer or sink raises may reach the
application's request.

`GuardedObserver` wraps the protocol's `ProxyObserver` and every `AnswerSink` it returns: a call that raises is
counted (`proxy_observer_error`) and logged at most once a minute per kind (`RareLog`), and the answer goes on
unobserved. `RareLog` is also the proxy's own flood control for failures it meets on every request (an upstream
down), so they are one line a minute, not one per request.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from stepscope.contract.vocabulary import DropReason
from stepscope.core.records import Drops
from stepscope.protocols.base import AnswerSink, ProxyObserver, Route

log = logging.getLogger("stepscope.proxy")

LOG_EVERY_S = 60.0
"""A failure of one kind is logged at most once per this many seconds."""


class RareLog:
    """Logs a warning at most once per `every_s` seconds per kind, with the number left out in between."""

    __slots__ = ("_every_s", "_log", "_logged", "_monotonic", "_unlogged")

    def __init__(self, logger: logging.Logger, monotonic: Callable[[], float], every_s: float = LOG_EVERY_S) -> None:
        self._log = logger
        self._monotonic = monotonic
        self._every_s = every_s
        self._logged: dict[str, float] = {}
        self._unlogged: dict[str, int] = {}

    def warning(self, kind: str, message: str, *args: object) -> None:
        now = self._monotonic()
        if now - self._logged.get(kind, float("-inf")) < self._every_s:
            self._unlogged[kind] = self._unlogged.get(kind, 0) + 1
            return
        more = self._unlogged.pop(kind, 0)
        self._logged[kind] = now
        self._log.warning("%s%s", message % args, f" ({more} more since the last report)" if more else "")


class GuardedObserver:
    """`observer` with every call, and every call on the sinks it returns, made fail-open (see the module
    docstring). `failures` counts the calls that raised."""

    def __init__(self, observer: ProxyObserver, *, drops: Drops, monotonic: Callable[[], float] = time.monotonic):
        self._observer = observer
        self._drops = drops
        self._rare = RareLog(log, monotonic)
        self.failures = 0

    def route(self, method: str, path: str) -> Route | None:
        try:
            return self._observer.route(method, path)
        except Exception as exc:  # fail-open: the request is relayed unobserved
            self.failed("route", exc)
            return None

    def answer(self, route: Route, traceparent: str | None) -> AnswerSink | None:
        try:
            sink = self._observer.answer(route, traceparent)
        except Exception as exc:  # fail-open, as above
            self.failed("answer", exc)
            return None
        return _GuardedSink(sink, self) if sink is not None else None

    def failed(self, call: str, exc: BaseException) -> None:
        self.failures += 1
        with contextlib.suppress(Exception):  # a broken counter must not break the request either
            self._drops.dropped(DropReason.PROXY_OBSERVER_ERROR)
        # The type and message only: a traceback per request would flood the log, and no request data is in it.
        self._rare.warning("observer", "proxy: observing an answer failed in %s: %s: %s", call, type(exc).__name__, exc)


class _GuardedSink:
    __slots__ = ("_guard", "_sink")

    def __init__(self, sink: AnswerSink, guard: GuardedObserver) -> None:
        self._sink = sink
        self._guard = guard

    def wants(self, event: str) -> bool:
        try:
            return self._sink.wants(event)
        except Exception as exc:  # fail-open
            self._guard.failed("wants", exc)
            return False

    def event(self, event: str, data: Mapping[str, Any] | None) -> None:
        try:
            self._sink.event(event, data)
        except Exception as exc:  # fail-open
            self._guard.failed("event", exc)

    def body(self, data: object) -> None:
        try:
            self._sink.body(data)
        except Exception as exc:  # fail-open
            self._guard.failed("body", exc)

    def ended(self, complete: bool, stream: bool) -> None:
        try:
            self._sink.ended(complete, stream)
        except Exception as exc:  # fail-open
            self._guard.failed("ended", exc)
