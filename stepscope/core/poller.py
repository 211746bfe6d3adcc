"""The poller: a schedule per tracked unit of work, whatever the protocol.

It keeps the tracked units in a heap by due time, polls at most `concurrency` of them at once through the
protocol's `UnitReader`, and turns what a poll raises into what happens next: a rate limit waits for the server's
delay, a rejected credential pauses every poll, a 404 forgets the unit, an outage backs off, a listing that breaks
a bound backs off further each time and is given up after `BOUND_BREAKS_MAX` polls in a row, an unparseable unit
is given up after `INVALID_READS_MAX`. API outcomes go to `ApiHealth`. It knows nothing of runs, turns or
responses: the reader does. The store learns of a unit before its first read, off the event loop.

Bounded: at most `max_tracked` units; past that, up to `max_waiting` more wait in arrival order and are tracked as
room frees (beyond that they are counted as `tracked_runs_full` and left to discovery); at most `concurrency` polls
in flight.
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
from stepscope.core.supervision import Beats
from stepscope.errors import (
    AuthError,
    FatalSourceError,
    InvalidObject,
    LimitExceeded,
    RateLimited,
    SourceError,
    StoreError,
    UnitAbandoned,
)

log = logging.getLogger("stepscope.core.poller")

AUTH_PAUSE_S = 30.0
POLLS_BUDGET_S = 2.5
"""Seconds polls in flight may take to finish at shutdown; what is left is cancelled (read again after a restart)."""
INVALID_READS_MAX = 3
BOUND_BREAKS_MAX = 5
"""Polls in a row whose listing broke a bound before the unit is given up: waits of 1, 2, 4 and 8 times `slow`
come between them, about a minute at the default 4 s."""
BOUND_BACKOFF_MAX_S = 300.0
TICK_S = 5.0
"""The scheduling loop wakes at least this often, so a stalled loop shows as missing beats."""


class UnitStore(Protocol):
    """The checkpoint store as the poller uses it, off the event loop (`AsyncStore`). Raises `StoreError`."""

    async def active_runs(self) -> list[RunProgress]: ...

    async def add_run(self, ref: UnitRef, now: float) -> None: ...

    async def forget_run(self, ref: UnitRef) -> None: ...


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
    bound_breaks: int = 0  # consecutive polls whose listing broke a bound (page cap, repeated cursor, deadline)
    recorded: bool = False  # the store knows the unit (written before its first read)
    due: float = 0.0
    scheduled: bool = False
    polling: bool = False


class Poller(Generic[S]):
    """Tracks units and polls them; a component. `start()` resumes the units the store says are active and returns
    at once; `stop()` is idempotent and lets polls in flight finish within its budget.

    `slow` is the delay after a failed poll.
    """

    name = "poller"
    allowed_s = 12 * TICK_S
    """How long the scheduling loop may go without a round before it counts as stalled."""

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
        max_waiting: int | None = None,
        wall: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        beats: Beats | None = None,
    ) -> None:
        self._reader = reader
        self._beats = beats
        self._store = store
        self._drops = drops
        self.api = api  # where poll outcomes are reported; discovery reports there too
        self._slow = slow
        self._max_tracked = max_tracked
        self._sem = asyncio.Semaphore(concurrency)
        self._wall = wall
        self._monotonic = monotonic
        self._units: dict[str, Tracked[S]] = {}
        self._waiting: dict[str, UnitRef] = {}  # units past the bound, oldest first, tracked as room frees
        self._max_waiting = max_tracked if max_waiting is None else max_waiting
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
            self._add(p.ref, self._reader.begin(p.ref, p.cursor, p.committed), recorded=True)

    def track(self, ref: UnitRef) -> bool:
        """Start tracking a unit; False when it was already tracked, or when the tracking bound is reached: then it
        waits in a bounded queue and is tracked as room frees (past that queue's bound it is counted as
        `tracked_runs_full` and left to discovery). Never blocks: the store learns of the unit before its first
        read."""
        tracked = self._units.get(ref.unit_id)
        if tracked is not None and tracked.ref.container_id != ref.container_id:
            self._drops.dropped(DropReason.UNIT_ID_COLLISION)
            log.warning("%s in %s has the id of a unit tracked in %s: only the first is followed", ref.unit_id,
                        ref.container_id, tracked.ref.container_id)  # fmt: skip
        if tracked is not None or self._stopping.is_set():
            return False
        if len(self._units) >= self._max_tracked:
            if ref.unit_id not in self._waiting and len(self._waiting) < self._max_waiting:
                self._waiting[ref.unit_id] = ref
            elif ref.unit_id not in self._waiting:
                self._drops.dropped(DropReason.TRACKED_RUNS_FULL)
            if not self._full_logged:
                log.warning("tracking %d units, the maximum: new ones wait for a slot", self._max_tracked)
                self._full_logged = True
            return False
        self._full_logged = False
        self._add(ref, self._reader.begin(ref, None, set()))
        return True

    @property
    def waiting_count(self) -> int:
        """Units waiting for a tracking slot."""
        return len(self._waiting)

    def untrack(self, run_id: str) -> None:
        self._units.pop(run_id, None)
        self._waiting.pop(run_id, None)
        self._admit_waiting()

    def _admit_waiting(self) -> None:
        """Track the waiting units, oldest first, while there is room."""
        while self._waiting and len(self._units) < self._max_tracked and not self._stopping.is_set():
            ref = self._waiting.pop(next(iter(self._waiting)))
            if ref.unit_id not in self._units:
                self._add(ref, self._reader.begin(ref, None, set()))

    def state_of(self, run_id: str) -> S | None:
        """The reader's state of a tracked unit, for what reports on it outside polling (the proxy's streams)."""
        t = self._units.get(run_id)
        return t.state if t is not None else None

    def poll_soon(self, run_id: str) -> None:
        """Poll a tracked unit now instead of at its scheduled time (a no-op while it is being polled)."""
        t = self._units.get(run_id)
        if t is not None and not t.polling and not self._stopping.is_set():
            self._push(t, self._monotonic())

    def _add(self, ref: UnitRef, state: S, *, recorded: bool = False) -> None:
        t = Tracked(ref, state, recorded=recorded)
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
            self.resume(await self._store.active_runs())
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
        """Schedule polls until stopped; a round that raises is logged once, counted and retried after a second,
        so the loop never ends on its own. It beats (`beats`) at least every `TICK_S`."""
        failures = 0
        while not self._stopping.is_set():
            try:
                await self._round()
            except Exception as exc:  # a stage boundary: the schedule must outlive a bug
                failures += 1
                self._drops.dropped(DropReason.TASK_FAILED)
                if failures == 1:
                    log.error("poller round failed (%s: %s); retrying", type(exc).__name__, exc, exc_info=exc)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), timeout=1.0)
            else:
                failures = 0

    async def _round(self) -> None:
        """Start the polls that are due, then wait for the next due time, a wake-up, or `TICK_S`."""
        if self._beats is not None:
            self._beats.beat(self.name)
        now = self._monotonic()
        while self._heap and self._heap[0][0] <= now and not self._stopping.is_set():
            due, _, run_id = heapq.heappop(self._heap)
            t = self._units.get(run_id)
            if t is None or not t.scheduled or t.due != due or t.polling:
                continue
            t.scheduled = False
            await self._slot()
            t.polling = True
            task = asyncio.create_task(self._poll(t))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        delay = min(TICK_S, (self._heap[0][0] - self._monotonic()) if self._heap else TICK_S)
        self._wake.clear()
        if delay > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=delay)

    async def _slot(self) -> None:
        """Take a poll slot; while every slot is busy (a slow API), keep beating: the loop is alive, only saturated."""
        while True:
            try:
                await asyncio.wait_for(self._sem.acquire(), timeout=TICK_S)
                return
            except TimeoutError:
                if self._beats is not None:
                    self._beats.beat(self.name)

    # --- one poll -----------------------------------------------------------------------------------------------

    async def _poll(self, t: Tracked[S]) -> None:
        next_in: float | None = None
        try:
            wait = self._paused_until - self._monotonic()
            if wait > 0:
                next_in = wait
            else:
                if not t.recorded:
                    await self._store.add_run(t.ref, self._wall())
                    t.recorded = True
                next_in = await self._reader.poll(t.state)
                t.invalid_reads = t.bound_breaks = 0
                self.api.ok()
                if next_in is None:
                    self._units.pop(t.ref.unit_id, None)  # done: its progress is retired in the store
                    self._admit_waiting()
        except Exception as exc:  # a stage boundary: never let one unit's failure stop the others
            next_in = await self._after_failure(t, exc)
        finally:
            t.polling = False
            self._sem.release()
        if next_in is not None and t.ref.unit_id in self._units and not self._stopping.is_set():
            self._push(t, self._monotonic() + next_in)

    async def _after_failure(self, t: Tracked[S], exc: Exception) -> float | None:
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
            # so its state stays. Each break in a row doubles the wait; a unit that keeps breaking is given up.
            t.bound_breaks += 1
            if t.bound_breaks >= BOUND_BREAKS_MAX:
                log.warning("%s dropped: its listing broke a bound on %d polls in a row (%s)", run_id,
                            t.bound_breaks, exc.reason)  # fmt: skip
                self._drops.dropped(DropReason.LISTING_UNBOUNDED)
                await self._forget(t)
                return None
            delay: float = min(BOUND_BACKOFF_MAX_S, self._slow * 2.0 ** (t.bound_breaks - 1))
            level = logging.WARNING if t.bound_breaks == 1 else logging.DEBUG  # one line for the episode
            log.log(level, "%s: %s; backing off %.1fs, longer each time it happens again", run_id, exc, delay)
            return delay
        if isinstance(exc, UnitAbandoned):
            log.warning("%s given up: %s", run_id, exc)
            self._drops.dropped(DropReason(exc.reason))
            await self._forget(t)
            return None
        if isinstance(exc, FatalSourceError):
            # 404 or another permanent 4xx for this unit: it cannot be polled, so it is dropped and counted.
            log.warning("run %s dropped: %s", run_id, exc)
            self._drops.dropped(DropReason.NOT_FOUND if exc.status_code == 404 else DropReason.BAD_REQUEST)
            await self._forget(t)
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
            await self._forget(t)
            return None
        if isinstance(exc, StoreError):
            pass  # logged once per episode by the store; the unit is read again later
        else:
            log.error("unexpected error while polling run %s", run_id, exc_info=exc)
            self._drops.dropped(DropReason.INTERNAL_ERROR)
        return self._slow

    async def _forget(self, t: Tracked[S]) -> None:
        self._units.pop(t.ref.unit_id, None)
        self._admit_waiting()
        with contextlib.suppress(StoreError):  # logged by the store; a forgotten unit left behind is pruned later
            await self._store.forget_run(t.ref)
