"""What the proxy tells the rest of stepscope: runs created or resumed through it, and their streamed events.

`RunFeed` is the seam. The proxy calls it on the event loop that serves the application's requests, after the
bytes concerned went on to the application, and wraps every call in `SafeFeed`: a feed that raises is logged
(flood-controlled) and counted, and the response goes on. Objects are the upstream's JSON as parsed (`dict`s),
never the application's request or credentials.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

log = logging.getLogger("stepscope.receivers.proxy")

LOG_EVERY_S = 60.0
"""A failure of one kind (a failing feed, an unreachable upstream) is logged at most once per this many seconds."""


class RunFeed(Protocol):
    """Receives what the proxy sees. Implementations must not block (enqueue and return) and should not raise.

    - `run_created(run, traceparent)`: a `thread.run` object the upstream returned for a create-run,
      create-thread-and-run or `submit_tool_outputs` request (a resumed run), as soon as it answered: the JSON
      body of a non-streamed 2xx answer, or the first `thread.run.*` event of a stream. `traceparent` is the
      request's valid W3C `traceparent` header on a create request whose run carries none in its metadata, else
      None.
    - `stream_event(event, data)`: every `thread.run.*` and `thread.run.step.*` event of a streamed answer but the
      `.delta` ones (not even parsed), in order, with its object (`data`), after the event's bytes went on to the
      application.
    - `session_active(session_id)`: the upstream accepted events the application posted to an Agents API session
      (`POST .../agents/sessions/{id}/events`): a turn starts or continues there.
    - `stream_ended(thread_id, run_id, complete)`: a streamed answer ended. `complete` is True only when it ended
      with `event: done`; False when it was cut short (upstream or application gone, unreadable), so the run's
      later steps must come from polling. The ids are the last seen in the stream, else those of the request
      path (None when unknown: a create-thread-and-run cut before its first event).
    """

    def run_created(self, run: Mapping[str, Any], traceparent: str | None) -> None: ...

    def stream_event(self, event: str, data: Mapping[str, Any]) -> None: ...

    def stream_ended(self, thread_id: str | None, run_id: str | None, complete: bool) -> None: ...

    def session_active(self, session_id: str) -> None: ...


def no_count(reason: str, n: int = 1) -> None:
    """The default `dropped(reason, n)` of the proxy's parts built without a counter."""


class RareLog:
    """Logs a warning at most once per `every_s` seconds per kind, with the number left out in between.

    A failure the proxy meets on every request (an upstream down, a broken feed) is one line a minute, not one per
    request.
    """

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
        self._log.warning("%s%s", message % args, f" ({more} more failure(s) since the last report)" if more else "")


class SafeFeed:
    """Fail-open wrapper: calls the feed, and turns anything it raises into a count and a rare log line.

    `dropped(reason, n)` counts failures as `proxy_feed_error`; `monotonic` times the log flood control.
    """

    __slots__ = ("_dropped", "_failures", "_feed", "_rare")

    def __init__(
        self,
        feed: RunFeed,
        *,
        dropped: Callable[[str, int], None] = no_count,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._feed = feed
        self._dropped = dropped
        self._failures = 0
        self._rare = RareLog(log, monotonic)

    @property
    def failures(self) -> int:
        """Feed calls that raised since start."""
        return self._failures

    def run_created(self, run: Mapping[str, Any], traceparent: str | None) -> None:
        try:
            self._feed.run_created(run, traceparent)
        except Exception as exc:  # fail-open: the application's response must go on
            self._failed("run_created", exc)

    def stream_event(self, event: str, data: Mapping[str, Any]) -> None:
        try:
            self._feed.stream_event(event, data)
        except Exception as exc:  # fail-open, as above
            self._failed("stream_event", exc)

    def stream_ended(self, thread_id: str | None, run_id: str | None, complete: bool) -> None:
        try:
            self._feed.stream_ended(thread_id, run_id, complete)
        except Exception as exc:  # fail-open, as above
            self._failed("stream_ended", exc)

    def session_active(self, session_id: str) -> None:
        try:
            self._feed.session_active(session_id)
        except Exception as exc:  # fail-open, as above
            self._failed("session_active", exc)

    def _failed(self, call: str, exc: Exception) -> None:
        self._failures += 1
        with contextlib.suppress(Exception):  # a broken counter must not break the request either
            self._dropped("proxy_feed_error", 1)
        # The type and message only: a traceback per request would flood the log, and no request data is in it.
        self._rare.warning("feed", "proxy: run feed failed in %s: %s: %s", call, type(exc).__name__, exc)


@dataclass
class RecordingFeed:
    """A `RunFeed` that keeps every call, for tests: `calls` holds `(method, args)` in order."""

    calls: list[tuple[str, tuple[Any, ...]]] = field(default_factory=list)

    def run_created(self, run: Mapping[str, Any], traceparent: str | None) -> None:
        self.calls.append(("run_created", (dict(run), traceparent)))

    def stream_event(self, event: str, data: Mapping[str, Any]) -> None:
        self.calls.append(("stream_event", (event, dict(data))))

    def stream_ended(self, thread_id: str | None, run_id: str | None, complete: bool) -> None:
        self.calls.append(("stream_ended", (thread_id, run_id, complete)))

    def session_active(self, session_id: str) -> None:
        self.calls.append(("session_active", (session_id,)))

    def of(self, method: str) -> list[tuple[Any, ...]]:
        """The arguments of every call to `method`, in order."""
        return [args for name, args in self.calls if name == method]
