"""The poller: a schedule per tracked unit of work, whatever the protocol.

It keeps the tracked units (runs, for the Assistants protocol) in a heap by due time, polls at most `concurrency`
of them at once through the protocol's `UnitReader`, and turns what a poll raises into what happens next: a
rate limit waits for the server's delay, a rejected credential pauses every poll, a 404 forgets the unit, a
broken bound or an outage backs off, an unparseable unit is given up after `INVALID_READS_MAX` polls in a row.
API outcomes go to `ApiHealth`. It knows nothing of runs and steps: the reader does.

Bounded: at most `max_tracked` units (overflow counted as `tracked_runs_full` and offered again by discovery), at
most `concurrency` polls in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Generic, Protocol

from stepscope.contract.vocabulary import DropReason
from stepscope.core.health import ApiHealth
from stepscope.core.records import Drops, S, UnitReader, UnitRef
from stepscope.core.store import RunProgress
from stepscope.errors import (
    AuthError,
    FatalSourceError,
    InvalidObject,
    LimitExceeded,
    RateLimited,
    SourceError,
    StoreError,
)

log = logging.getLogger("stepscope.core.poller")

AUTH_PAUSE_S = 30.0
POLLS_BUDGET_S = 2.5
"""Seconds polls in flight may take to finish at shutdown; what is left is cancelled (read again after a restart)."""
INVALID_READS_MAX = 3


class UnitStore(Protocol):
    """The checkpoint store as the poller uses it. Raises `StoreError`."""

    def active_runs(self) -> list[RunProgress]: ...

    def add_run(self, ref: UnitRef, now: float) -> None: ...

    def forget_run(self, ref: UnitRef) -> None: ...


@dataclass(frozen=True, slots=True)
class PollSchedule:
    """When to poll a unit next, as data, for every protocol's reader.

    `fast` while a unit progresses. A unit that waits (queued, or waiting for the application) is polled `fast` for
    its first `grace` polls in that status, then backs off by `backoff` per poll up to `slow`: an application usually
    acts within seconds, and what completes right after should not wait a `slow` interval to be seen, while a unit
    parked for minutes costs little. Errors use `slow`. `final_sweeps` bounds the polls of a unit that ended while
    parts of it still look open.
    """

    fast: float = 1.0
    slow: float = 4.0
    grace: int = 4
    backoff: float = 1.5
    final_sweeps: int = 3

    def waiting(self, polls: int) -> float:
        """Seconds to the next poll of a unit found waiting `polls` polls in a row (this one included)."""
        return min(self.slow, self.fast * self.backoff ** max(0, polls - self.grace))


@dataclass(slots=True)
class Tracked(Generic[S]):
    ref: UnitRef
    state: S
    invalid_reads: int = 0  # consecutive polls that met an unparseable object
    due: float = 0.0
    scheduled: bool = False
    polling: bool = False


class Poller(Generic[S]):
    """Tracks units and polls them; a component. `start()` resumes the units the store says are active and returns
    at once; `stop()` is idempotent and lets polls in flight finish within its budget.

    `slow` is the delay after a failed poll.
    """

    name = "poller"

    def __init__(
        self,
        reader: UnitReader[S],
        store: UnitStore,
        drops: Drops,
        api: ApiHealth,
        *,
        slow: float = 4.0,
        concurrency: int = 16,
        max_tracked: int = 10_000,
        wall: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._reader = reader
        self._store = store
        self._drops = drops
        self.api = api  # where poll outcomes are reported; discovery reports there too
        self._slow = slow
        self._max_tracked = max_tracked
        self._sem = asyncio.Semaphore(concurrency)
        self._wall = wall
        self._monotonic = monotonic
        self._units: dict[str, Tracked[S]] = {}
        self._heap: list[tuple[float, int, str]] = []
        self._seq = 0
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop_task: asyncio.Task[None] | None = None
        self._paused_until = 0.0
        self._full_logged = False

    # --- intake -----------------------------------------------------------------------------------------------

    @property
    def tracked_count(self) -> int:
        return len(self._units)

    def status_counts(self) -> dict[str, int]:
        """Tracked units by their last seen status (`pending` before the first read)."""
        counts: dict[str, int] = {}
        for t in self._units.values():
            status = self._reader.status(t.state)
            counts[status] = counts.get(status, 0) + 1
        return counts

    def busy_containers(self) -> set[str]:
        """Containers with a unit that keeps them from starting another (an Assistants thread's active run)."""
        return {t.ref.container_id for t in self._units.values() if self._reader.busy(t.state)}

    def is_tracked(self, run_id: str) -> bool:
        return run_id in self._units

    def resume(self, progress: Iterable[RunProgress]) -> None:
        """Re-track the active units of a previous process with their committed progress."""
        for p in progress:
            self._add(p.ref, self._reader.begin(p.ref, p.cursor, p.committed))

    def track(self, ref: UnitRef) -> bool:
        """Start tracking a unit; False when it was already tracked or the bound is reached (counted)."""
        if ref.unit_id in self._units or self._stopping.is_set():
            return False
        if len(self._units) >= self._max_tracked:
            self._drops.dropped(DropReason.TRACKED_RUNS_FULL)
            if not self._full_logged:
                log.warning("tracking %d runs, the maximum: new runs wait for a slot", self._max_tracked)
                self._full_logged = True
            return False
        self._full_logged = False
        try:
            self._store.add_run(ref, self._wall())
        except StoreError:
            log.exception("checkpoint store: cannot record run %s", ref.unit_id)
            self._drops.dropped(DropReason.STORE_ERROR)
            return False
        self._add(ref, self._reader.begin(ref, None, set()))
        return True

    def untrack(self, run_id: str) -> None:
        self._units.pop(run_id, None)

    def state_of(self, run_id: str) -> S | None:
        """The reader's state of a tracked unit, for what reports on it outside polling (the proxy's streams)."""
        t = self._units.get(run_id)
        return t.state if t is not None else None

    def poll_soon(self, run_id: str) -> None:
        """Poll a tracked unit now instead of at its scheduled time (a no-op while it is being polled)."""
        t = self._units.get(run_id)
        if t is not None and not t.polling and not self._stopping.is_set():
            self._push(t, self._monotonic())

    def _add(self, ref: UnitRef, state: S) -> None:
        t = Tracked(ref, state)
        self._units[ref.unit_id] = t
        self._push(t, self._monotonic())

    def _push(self, t: Tracked[S], due: float) -> None:
        t.due, t.scheduled = due, True
        self._seq += 1
        heapq.heappush(self._heap, (due, self._seq, t.ref.unit_id))
        self._wake.set()

    # --- lifecycle ----------------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Resume the units a previous process left active (a store that cannot be read raises `StoreError`), then
        start scheduling."""
        if self._loop_task is None:
            self.resume(self._store.active_runs())
            self._loop_task = asyncio.create_task(self._loop(), name="stepscope-poller")

    async def stop(self, budget_s: float = POLLS_BUDGET_S) -> None:
        """Stop scheduling, let polls in flight finish (up to `budget_s`, at most `POLLS_BUDGET_S`), then cancel
        what is left."""
        timeout_s = min(budget_s, POLLS_BUDGET_S)
        self._stopping.set()
        self._wake.set()
        if self._loop_task is not None:
            await asyncio.wait({self._loop_task}, timeout=timeout_s)
        pending = set(self._tasks)
        if pending:
            _, late = await asyncio.wait(pending, timeout=timeout_s)
            for task in late:
                task.cancel()
            if late:
                await asyncio.wait(late, timeout=1.0)

    @property
    def running(self) -> bool:
        """True while the scheduling loop runs (False before start, after shutdown or if it crashed)."""
        return self._loop_task is not None and not self._loop_task.done()

    async def _loop(self) -> None:
        while not self._stopping.is_set():
            now = self._monotonic()
            while self._heap and self._heap[0][0] <= now and not self._stopping.is_set():
                due, _, run_id = heapq.heappop(self._heap)
                t = self._units.get(run_id)
                if t is None or not t.scheduled or t.due != due or t.polling:
                    continue
                t.scheduled = False
                await self._sem.acquire()
                t.polling = True
                task = asyncio.create_task(self._poll(t))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            delay = (self._heap[0][0] - self._monotonic()) if self._heap else 3600.0
            self._wake.clear()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=delay)

    # --- one poll -----------------------------------------------------------------------------------------------

    async def _poll(self, t: Tracked[S]) -> None:
        next_in: float | None = None
        try:
            wait = self._paused_until - self._monotonic()
            if wait > 0:
                next_in = wait
            else:
                next_in = await self._reader.poll(t.state)
                t.invalid_reads = 0
                self.api.ok()
                if next_in is None:
                    self._units.pop(t.ref.unit_id, None)  # done: its progress is retired in the store
        except Exception as exc:  # a stage boundary: never let one unit's failure stop the others
            next_in = self._after_failure(t, exc)
        finally:
            t.polling = False
            self._sem.release()
        if next_in is not None and t.ref.unit_id in self._units and not self._stopping.is_set():
            self._push(t, self._monotonic() + next_in)

    def _after_failure(self, t: Tracked[S], exc: Exception) -> float | None:
        """What a failed poll means for the unit: seconds until the next try, or None when it is dropped."""
        run_id = t.ref.unit_id
        if isinstance(exc, RateLimited):
            self.api.failed(exc)
            return max(exc.retry_after or 0.0, self._slow)
        if isinstance(exc, AuthError):
            self._paused_until = self._monotonic() + AUTH_PAUSE_S
            self.api.failed(exc)
            return AUTH_PAUSE_S
        if isinstance(exc, LimitExceeded):
            # One unit's answer broke a bound (counted by the source) and made no progress; the API itself is fine,
            # so its state stays.
            log.warning("run %s: %s; backing off", run_id, exc)
            return self._slow
        if isinstance(exc, FatalSourceError):
            # 404 or another permanent 4xx for this unit: it cannot be polled, so it is dropped and counted.
            log.warning("run %s dropped: %s", run_id, exc)
            self._drops.dropped(DropReason.NOT_FOUND if exc.status_code == 404 else DropReason.BAD_REQUEST)
            self._forget(t)
            return None
        if isinstance(exc, SourceError):
            self.api.failed(exc)
            return self._slow
        if isinstance(exc, InvalidObject):
            # Counted and logged by the source. A unit that stays unreadable is given up, not re-read forever.
            t.invalid_reads += 1
            if t.invalid_reads < INVALID_READS_MAX:
                return self._slow
            log.warning("run %s dropped: unreadable on %d polls in a row", run_id, t.invalid_reads)
            self._drops.dropped(DropReason.RUN_INVALID)
            self._forget(t)
            return None
        if isinstance(exc, StoreError):
            log.error("checkpoint store error while polling run %s: %s", run_id, exc)
        else:
            log.error("unexpected error while polling run %s", run_id, exc_info=exc)
            self._drops.dropped(DropReason.INTERNAL_ERROR)
        return self._slow

    def _forget(self, t: Tracked[S]) -> None:
        self._units.pop(t.ref.unit_id, None)
        try:
            self._store.forget_run(t.ref)
        except StoreError:
            log.exception("checkpoint store: cannot forget run %s", t.ref.unit_id)
