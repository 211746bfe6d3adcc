"""Span delivery: the durable backlog, drained into the trace backend at least once, oldest first.

The pipeline appends a step's encoded spans to the backlog in the transaction that commits the step, so metrics
never wait for traces. `SpanDelivery` owns one daemon thread that reads the oldest spans in batches, exports them
with the SDK exporter and deletes them once the backend took them. A refused or failed batch stays and is retried
with exponential backoff and jitter; a span that cannot be encoded at all is isolated and dropped with a count, so
it never holds back its batch. The backlog is bounded by size and age (`BacklogLimits`): the oldest spans beyond
either bound are dropped and counted (`backlog_full`, `backlog_expired`). Ids are deterministic, so a batch that
reached the backend just before a crash is sent again with the same ids, never as new spans.

The thread is a daemon on purpose: an export stuck on a hanging collector must not hold the process past its
shutdown deadline. What it has not delivered by then stays in the backlog for the next start.

A backend that is down is one failure episode (`export/episodes.py`): the SDK exporter's own log records are kept
off the log and give the reason, and delivery logs one line when exports start failing, at most one a minute while
they fail (the attempts since the last line, the spans kept), and one when they recover.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from stepscope.client.retry import RetryPolicy
from stepscope.contract.vocabulary import DropReason
from stepscope.core import spancodec
from stepscope.core.records import Drops, RelayedSpan
from stepscope.core.supervision import Beats
from stepscope.errors import StoreError
from stepscope.export.episodes import Episode, SdkLogGate, attempts, lasted
from stepscope.export.otlp import TRACE_LOGGERS, readable_span
from stepscope.export.relay import RelayError, relayed_readable

log = logging.getLogger("stepscope.delivery")

DROP_FULL = DropReason.BACKLOG_FULL
DROP_EXPIRED = DropReason.BACKLOG_EXPIRED
DROP_UNENCODABLE = DropReason.SPAN_UNENCODABLE
TRIM_EVERY_S = 5.0
EXPORT_BACKOFF = RetryPolicy(initial_delay=1.0, max_delay=30.0, jitter=0.5)
"""Waits between failed export attempts: 1 s doubling to 30 s, each shortened by up to half at random."""


class SpanBacklog(Protocol):
    """The store's side of the backlog. Every method may raise `StoreError`."""

    def backlog(self, limit: int) -> list[tuple[int, bytes]]: ...

    def delete_backlog(self, seqs: Sequence[int]) -> None: ...

    def trim_backlog(self, max_spans: int, added_before: float) -> tuple[int, int]: ...

    def backlog_stats(self) -> tuple[int, float | None]: ...

    def oldest_backlog(self) -> float | None: ...


class DeliveryHealth(Drops, Protocol):
    """Where delivery reports: drops, spans the backend refused, and the lag of each delivered record's span."""

    def export_failed(self, n: int = 1) -> None: ...

    def observe_export_lag(self, seconds: float) -> None: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class BacklogLimits:
    """At most `max_spans` spans wait, none older than `max_age_s`; beyond either the oldest are dropped."""

    max_spans: int = 500_000
    max_age_s: float = 86_400.0


class SpanDelivery:
    """Drains the backlog into `exporter` on its own thread. `exporter=None` (traces off) only trims the backlog.

    `start()` returns at once; `notify(n)` tells it `n` spans were committed; `shutdown(timeout_s)` delivers what
    it can within the deadline, stops, and returns how many spans stay in the backlog. Idempotent. `retry` paces
    the attempts after a failed export; `monotonic` times the failure episodes' lines.
    """

    def __init__(
        self,
        backlog: SpanBacklog,
        exporter: SpanExporter | None,
        *,
        resource: Resource,
        health: DeliveryHealth,
        limits: BacklogLimits = BacklogLimits(),
        batch_size: int = 512,
        delay_s: float = 0.1,
        wall: Callable[[], float] = time.time,
        beats: Beats | None = None,
        retry: RetryPolicy = EXPORT_BACKOFF,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._backlog = backlog
        self._beats = beats
        self._exporter = exporter
        self._resource = resource
        self._health = health
        self._limits = limits
        self._batch = max(1, batch_size)
        self._delay = max(0.0, delay_s)
        self._wall = wall
        self._wake = threading.Event()
        self._flushing = threading.Event()
        self._stop = threading.Event()
        self._idle = threading.Event()
        self._lock = threading.Lock()
        self._pending = 0
        self._notified = 0  # notify() calls so far: an empty read clears the counts only if none came meanwhile
        self._next_trim = 0.0
        self._oldest: float | None = None
        self._failures = 0
        self._retry = retry
        self._episode = Episode(clock=monotonic)
        self._gate = SdkLogGate(TRACE_LOGGERS)
        self._reason: str | None = None  # why the last export raised, when it did
        self._thread: threading.Thread | None = None
        self._done = False
        self.state = "unknown" if exporter is not None else "off"

    # --- what others read ---------------------------------------------------------------------------------------

    @property
    def pending(self) -> int:
        """Spans in the backlog (exact after every delivery and trim, counted up by `notify` in between)."""
        with self._lock:
            return self._pending

    def oldest_age(self) -> float:
        """Seconds since the oldest waiting span was committed; 0 when none waits or the store cannot say.

        Read at every scrape, on the event loop: it reads what the delivery thread last saw, never the store.
        """
        oldest = self._oldest
        return max(0.0, self._wall() - oldest) if oldest is not None else 0.0

    def _see_oldest(self) -> None:
        """Remember when the oldest waiting span was committed (the delivery thread's view, for `oldest_age`)."""
        try:
            self._oldest = self._backlog.oldest_backlog()
        except StoreError:
            self._oldest = None

    # --- lifecycle ----------------------------------------------------------------------------------------------

    name = "delivery"
    allowed_s = 120.0
    """How long the thread may go without a round before it counts as stalled: rounds end within an export's
    timeout and `TRIM_EVERY_S`."""
    spans_kept = 0
    """Spans left in the backlog by the last `stop()`."""

    @property
    def running(self) -> bool:
        """True while the delivery thread runs."""
        return self._thread is not None and self._thread.is_alive()

    async def start(self) -> None:
        """The component's start: `begin()`."""
        self.begin()

    async def stop(self, budget_s: float = 2.0) -> None:
        """The component's stop: `shutdown()` on a worker thread, keeping a second of the budget for what stops
        after it; the spans kept are in `spans_kept`."""
        self.spans_kept = await asyncio.to_thread(self.shutdown, max(0.5, budget_s - 1.0))

    def begin(self) -> None:
        """Count what an earlier process left in the backlog and start the thread."""
        if self._thread is not None:
            return
        with contextlib.suppress(StoreError):  # logged by the store; the first trim corrects the count
            self._pending, self._oldest = self._backlog.backlog_stats()
        if self._pending and self._exporter is not None:
            log.info("%d span(s) kept from an earlier start: delivering them first", self._pending)
        if self._exporter is not None:
            self._gate.attach()
        self._thread = threading.Thread(target=self._run, name="stepscope-delivery", daemon=True)
        self._thread.start()

    def notify(self, n: int) -> None:
        """`n` spans were appended to the backlog; safe from any thread."""
        with self._lock:
            self._pending += n
            self._notified += 1
            if self._oldest is None:
                self._oldest = self._wall()  # just committed: the thread reads the exact time on its next round
        self._wake.set()

    def shutdown(self, timeout_s: float) -> int:
        """Deliver until the backlog is empty or `timeout_s` passed, then stop; returns the spans kept."""
        if not self._done:
            self._done = True
            thread = self._thread
            deadline = time.monotonic() + max(0.0, timeout_s)
            if self.state == "failing":
                self._stop.set()  # the backend refuses already: keep the backlog for the next start, at once
            if thread is not None and self._exporter is not None:
                self._idle.clear()  # set again only by a read that finds the backlog empty
                self._flushing.set()
                self._wake.set()
                if not self._stop.is_set():
                    self._idle.wait(max(0.0, deadline - time.monotonic() - 0.2))
            self._stop.set()
            self._wake.set()
            if self._exporter is not None:
                try:
                    self._exporter.shutdown()  # ends the exporter's own retry waits
                except Exception:
                    log.exception("span exporter shutdown failed")
            if thread is not None:
                thread.join(max(0.05, deadline - time.monotonic()))
            self._gate.detach()
        return self._kept()

    def _kept(self) -> int:
        """The spans in the backlog as the store counts them: `pending` may not yet count spans committed a moment
        ago (their `notify` comes after the commit). `pending` when the store cannot say."""
        try:
            return self._backlog.backlog_stats()[0]
        except StoreError:
            return self.pending

    # --- the thread ---------------------------------------------------------------------------------------------

    def _run(self) -> None:
        """The thread: rounds of delivery until stopped. A round that raises (a bug) is logged once per episode,
        counted as `task_failed` and retried after a second, so the thread never dies on its own."""
        failures = 0
        while not self._stop.is_set():
            try:
                if self._round():
                    return
            except Exception as exc:  # a stage boundary: delivery must outlive a bug
                failures += 1
                self._health.dropped(DropReason.TASK_FAILED)
                if failures == 1:
                    log.error("delivery round failed (%s: %s); retrying", type(exc).__name__, exc, exc_info=exc)
                self._stop.wait(1.0)
            else:
                failures = 0

    def _round(self) -> bool:
        """One round: trim when due, then deliver one batch (or wait for spans). True when delivery must end."""
        if self._beats is not None:
            self._beats.beat(self.name)
        if time.monotonic() >= self._next_trim:
            self._trim()
            self._see_oldest()
            self._next_trim = time.monotonic() + TRIM_EVERY_S
        if self._exporter is None:
            self._wait(TRIM_EVERY_S)
            return False
        with self._lock:
            notified = self._notified
        try:
            rows = self._backlog.backlog(self._batch)
        except StoreError:  # logged once per episode by the store
            if self._stop.is_set():
                return True
            self._wait(TRIM_EVERY_S)
            return False
        if not rows:
            with self._lock:
                quiet = self._notified == notified  # else spans were committed after the read: they are pending
                if quiet:
                    self._pending, self._oldest = 0, None
            if quiet:
                self._idle.set()
            self._wait(TRIM_EVERY_S)
            if not self._flushing.is_set():
                self._pause(self._delay)  # let a batch gather after the first new span
            return False
        self._idle.clear()
        self._see_oldest()  # before the export, which may take a collector's whole timeout
        delivered = self._deliver(rows)
        self._see_oldest()
        if delivered:
            self._failures = 0
            if len(rows) < self._batch:
                self._pause(self._delay)
        elif self._flushing.is_set():
            self._idle.set()  # shutting down and the backend still refuses: keep the rest for the next start
            return True
        else:
            delay = self._retry.backoff(self._failures, random.random())
            self._failures += 1
            self._flushing.wait(delay)  # a shutdown ends the wait and tries once more
        return False

    def _wait(self, seconds: float) -> None:
        self._wake.wait(seconds)
        self._wake.clear()

    def _pause(self, seconds: float) -> None:
        if seconds:
            self._flushing.wait(seconds)  # a shutdown ends the pause: it delivers what waits now

    def _deliver(self, rows: list[tuple[int, bytes]]) -> bool:
        """Export one batch; True when it left the backlog (delivered, or its bad spans dropped)."""
        spans: list[ReadableSpan] = []
        seqs: list[int] = []
        ends: list[int] = []
        bad: list[int] = []
        for seq, data in rows:
            try:
                record = spancodec.decode(data)
                if isinstance(record, RelayedSpan):
                    spans.append(relayed_readable(record))
                else:
                    spans.append(readable_span(record, self._resource))
                    ends.append(record.end_ns)  # every span the mapping made is timed by its record's end
            except (ValueError, RelayError) as exc:
                log.warning("dropping a span that cannot be exported: %s", exc)
                bad.append(seq)
                continue
            seqs.append(seq)
        if bad and not self._remove(bad, DROP_UNENCODABLE):
            return False
        if not spans:
            return True
        if self._export(spans):
            if not self._remove(seqs, None):
                return False
            now_ns = self._wall() * 1e9
            for end_ns in ends:
                self._health.observe_export_lag(max(0.0, (now_ns - end_ns) / 1e9))
            self._succeeded()
            return True
        if not _encodable(spans):  # isolate the span(s) the encoder rejects; the rest go out on the next pass
            return self._remove([seq for seq, span in zip(seqs, spans, strict=True) if not _encodable([span])],
                                DROP_UNENCODABLE)  # fmt: skip
        self._health.export_failed(len(spans))
        self._failed()
        return False

    def _export(self, spans: list[ReadableSpan]) -> bool:
        assert self._exporter is not None
        self._reason = None
        try:
            return self._exporter.export(spans) is SpanExportResult.SUCCESS
        except Exception as exc:  # the episode's lines say it; every attempt does not
            log.debug("span exporter raised; the batch stays in the backlog: %s", exc)
            self._reason = type(exc).__name__
            return False

    def _remove(self, seqs: list[int], reason: DropReason | None) -> bool:
        try:
            self._backlog.delete_backlog(seqs)
        except StoreError:  # logged once per episode by the store; the spans are sent again, with the same ids
            return False
        with self._lock:
            self._pending = max(0, self._pending - len(seqs))
        if reason is not None:
            self._health.dropped(reason, len(seqs))
        return True

    def _trim(self) -> None:
        try:
            expired, over = self._backlog.trim_backlog(self._limits.max_spans, self._wall() - self._limits.max_age_s)
            count = self._backlog.backlog_stats()[0]
        except StoreError:  # logged once per episode by the store; trimmed on a later round
            return
        with self._lock:
            self._pending = count
        for reason, n, why in (
            (DROP_EXPIRED, expired, "older than the age limit"),
            (DROP_FULL, over, "over the size limit"),
        ):
            if n:
                self._health.dropped(reason, n)
                log.warning("dropped the %d oldest undelivered span(s): %s of the backlog", n, why)

    def _failed(self) -> None:
        """An export failed: `failing`, and the episode's line when one is due."""
        self.state = "failing"
        report = self._episode.failed(self._gate.take() or self._reason)
        if report is None:
            return
        why = f" ({report.reason})" if report.reason else ""
        if report.first:
            log.warning("span export failing%s: %d span(s) kept in the backlog, retried with backoff", why,
                        self._kept())  # fmt: skip
        else:
            log.warning("span export failing: %s in the last %s, %d span(s) kept in the backlog%s",
                        attempts(report.attempts), lasted(report.seconds), self._kept(), why)  # fmt: skip

    def _succeeded(self) -> None:
        """An export succeeded: `ok`, and the recovery line when an episode ends."""
        self._gate.take()  # a retry inside the export may have failed first: that is no reason for a later failure
        self.state = "ok"
        recovery = self._episode.succeeded()
        if recovery is not None:
            log.info("span export recovered after %s (%s failed); delivering the backlog (%d span(s))",
                     lasted(recovery.seconds), attempts(recovery.attempts), self._kept())  # fmt: skip


def _encodable(spans: list[ReadableSpan]) -> bool:
    """Whether OTLP can encode these spans at all (checked only after a failed export, so it costs nothing else)."""
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans  # noqa: PLC0415

    try:
        encode_spans(spans).SerializeToString()
    except Exception:
        return False
    return True
