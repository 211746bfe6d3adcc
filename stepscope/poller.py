"""The poller: a schedule per tracked run, reading new and unfinished steps and committing the finished ones.

Per run it keeps the committed cursor (every step up to it is committed), steps committed past it and steps seen
unfinished (`open`). One poll lists steps in ascending order *after the cursor*, so a single request returns both
the unfinished steps and the new ones; the run itself is re-read only when no step is open or the run waits. Newly
terminal steps are committed by the pipeline at once (counted, their spans kept for delivery), so a step is read
from the API once whatever the trace backend does. A terminal run gets a final sweep, then its run span is committed
and the run is forgotten.

A run whose early step stays open while later ones finish would make every listing after the cursor longer; once
`TAIL_MODE_AT` steps are committed past an open one, the poller lists only after the newest step it has seen and
re-reads the open steps one by one (at most `MAX_OPEN_READS` a poll).

Bounded: at most `max_tracked_runs` runs (overflow counted as `tracked_runs_full` and retried by discovery), at most
`concurrency` polls in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

from stepscope.errors import (
    AuthError,
    FatalSourceError,
    InvalidObject,
    LimitExceeded,
    NotFound,
    RateLimited,
    SourceError,
    StoreError,
)
from stepscope.models import Run, RunRef, RunStep
from stepscope.store import RunProgress
from stepscope.types import StepSource

log = logging.getLogger("stepscope.poller")

WAITING = frozenset({"queued", "requires_action"})
AUTH_PAUSE_S = 30.0
INVALID_READS_MAX = 3
TAIL_MODE_AT = 20
MAX_OPEN_READS = 8
ASSISTANT_MISS_TTL_S = 600.0


@dataclass(frozen=True, slots=True)
class PollSchedule:
    """When to poll a run next, as data.

    `fast` while steps run. A run that waits (queued, requires_action) is polled `fast` for its first `grace` polls
    in that status, then backs off by `backoff` per poll up to `slow`: an application usually submits tool outputs
    within seconds, and the step that completes right after should not wait a `slow` interval to be seen, while a
    run parked for minutes costs little. Errors use `slow`.
    """

    fast: float = 1.0
    slow: float = 4.0
    grace: int = 4
    backoff: float = 1.5
    final_sweeps: int = 3  # polls of a terminal run whose steps still look open before they are given up

    def interval(self, run: Run | None, waiting_polls: int = 0) -> float:
        """`waiting_polls`: consecutive polls that found the run in the same waiting status, this one included."""
        if run is None or run.status not in WAITING:
            return self.fast
        return min(self.slow, self.fast * self.backoff ** max(0, waiting_polls - self.grace))


class Committer(Protocol):
    """Where terminal steps and runs go (the pipeline). True when committed; must not block or raise."""

    def commit_steps(self, run: Run, steps: list[RunStep], cursor: str | None) -> bool: ...

    def finish_run(self, run: Run, assistant_name: str | None) -> bool: ...


class RunStore(Protocol):
    """The checkpoint store as the poller uses it. Raises `StoreError`."""

    def add_run(self, ref: RunRef, now: float) -> None: ...

    def forget_run(self, ref: RunRef) -> None: ...


class PollerHealth(Protocol):
    def dropped(self, reason: str, n: int = 1) -> None: ...


@dataclass(slots=True)
class TrackedRun:
    ref: RunRef
    run: Run | None = None
    cursor: str | None = None
    committed: set[str] = field(default_factory=set)  # committed steps past the cursor
    open: list[str] = field(default_factory=list)  # unfinished steps, creation order
    newest: str | None = None  # the newest step id seen, where tail-mode listings start
    sweeps_after_end: int = 0
    waiting_polls: int = 0
    invalid_reads: int = 0  # consecutive polls that met an unparseable run or step
    due: float = 0.0
    scheduled: bool = False
    polling: bool = False


class Poller:
    """Tracks runs and polls them. `start()` returns at once; `shutdown()` is idempotent and waits for polls."""

    def __init__(
        self,
        source: StepSource,
        store: RunStore,
        sink: Committer,
        health: PollerHealth,
        *,
        schedule: PollSchedule,
        concurrency: int = 16,
        max_tracked_runs: int = 10_000,
        wall: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._source = source
        self._store = store
        self._sink = sink
        self._health = health
        self._schedule = schedule
        self._max_tracked = max_tracked_runs
        self._sem = asyncio.Semaphore(concurrency)
        self._wall = wall
        self._monotonic = monotonic
        self._runs: dict[str, TrackedRun] = {}
        self._heap: list[tuple[float, int, str]] = []
        self._seq = 0
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop_task: asyncio.Task[None] | None = None
        self._assistant_names: dict[str, tuple[str | None, float]] = {}  # id -> (name, monotonic expiry)
        self._paused_until = 0.0
        self.api_state = "unknown"
        self.last_success: float | None = None
        self.last_error: str | None = None
        self._full_logged = False

    # --- intake -----------------------------------------------------------------------------------------------

    @property
    def tracked_count(self) -> int:
        return len(self._runs)

    def status_counts(self) -> dict[str, int]:
        """Tracked runs by their last seen status (`pending` before the first read)."""
        counts: dict[str, int] = {}
        for t in self._runs.values():
            status = t.run.status if t.run is not None else "pending"
            counts[status] = counts.get(status, 0) + 1
        return counts

    def busy_threads(self) -> set[str]:
        """Threads with a tracked run not known to be terminal: they cannot start another run meanwhile."""
        return {t.ref.thread_id for t in self._runs.values() if t.run is None or not t.run.is_terminal}

    def is_tracked(self, run_id: str) -> bool:
        return run_id in self._runs

    def resume(self, progress: Iterable[RunProgress]) -> None:
        """Re-track the active runs of a previous process with their committed progress."""
        for p in progress:
            self._add(TrackedRun(p.ref, cursor=p.cursor, committed=set(p.committed)))

    def track(self, ref: RunRef) -> bool:
        """Start tracking a run; False when it was already tracked or the bound is reached (counted)."""
        if ref.run_id in self._runs or self._stopping.is_set():
            return False
        if len(self._runs) >= self._max_tracked:
            self._health.dropped("tracked_runs_full")
            if not self._full_logged:
                log.warning("tracking %d runs, the maximum: new runs wait for a slot", self._max_tracked)
                self._full_logged = True
            return False
        self._full_logged = False
        try:
            self._store.add_run(ref, self._wall())
        except StoreError:
            log.exception("checkpoint store: cannot record run %s", ref.run_id)
            self._health.dropped("store_error")
            return False
        self._add(TrackedRun(ref))
        return True

    def untrack(self, run_id: str) -> None:
        self._runs.pop(run_id, None)

    def _add(self, tracked: TrackedRun) -> None:
        self._runs[tracked.ref.run_id] = tracked
        self._push(tracked, self._monotonic())

    def _push(self, t: TrackedRun, due: float) -> None:
        t.due, t.scheduled = due, True
        self._seq += 1
        heapq.heappush(self._heap, (due, self._seq, t.ref.run_id))
        self._wake.set()

    # --- lifecycle ----------------------------------------------------------------------------------------------

    async def start(self) -> None:
        if self._loop_task is None:
            self._loop_task = asyncio.create_task(self._loop(), name="stepscope-poller")

    async def shutdown(self, timeout_s: float = 5.0) -> None:
        """Stop scheduling, let polls in flight finish (up to `timeout_s`), then cancel what is left."""
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

    async def _loop(self) -> None:
        while not self._stopping.is_set():
            now = self._monotonic()
            while self._heap and self._heap[0][0] <= now and not self._stopping.is_set():
                due, _, run_id = heapq.heappop(self._heap)
                t = self._runs.get(run_id)
                if t is None or not t.scheduled or t.due != due or t.polling:
                    continue
                t.scheduled = False
                await self._sem.acquire()
                t.polling = True
                task = asyncio.create_task(self._poll_guarded(t))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            delay = (self._heap[0][0] - self._monotonic()) if self._heap else 3600.0
            self._wake.clear()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=delay)

    # --- one poll -----------------------------------------------------------------------------------------------

    async def _poll_guarded(self, t: TrackedRun) -> None:
        next_in: float | None = None
        try:
            wait = self._paused_until - self._monotonic()
            if wait > 0:
                next_in = wait
            else:
                next_in = await self._poll(t)
                t.invalid_reads = 0
                self.api_ok()
        except RateLimited as exc:
            next_in = max(exc.retry_after or 0.0, self._schedule.slow)
            self.api_failed("rate_limited", exc)
        except AuthError as exc:
            self._paused_until = self._monotonic() + AUTH_PAUSE_S
            next_in = AUTH_PAUSE_S
            self.api_failed("auth_failed", exc)
        except LimitExceeded as exc:
            # One run's listing broke a bound (counted by the source); the API itself is fine, so its state stays.
            # A listing cut at the page cap was committed as far as it went: carry on from there at once.
            log.warning("run %s: %s; backing off", t.ref.run_id, exc)
            next_in = self._schedule.fast if exc.reason == "page_cap" else self._schedule.slow
        except FatalSourceError as exc:
            # 404 or another permanent 4xx for this run: it cannot be polled, so it is dropped and counted.
            log.warning("run %s dropped: %s", t.ref.run_id, exc)
            self._health.dropped("not_found" if exc.status_code == 404 else "bad_request")
            self._forget(t)
        except SourceError as exc:
            next_in = self._schedule.slow
            self.api_failed("unavailable", exc)
        except InvalidObject:
            # Counted and logged by the source. A run that stays unreadable is given up, not re-read forever.
            t.invalid_reads += 1
            if t.invalid_reads >= INVALID_READS_MAX:
                log.warning("run %s dropped: unreadable on %d polls in a row", t.ref.run_id, t.invalid_reads)
                self._health.dropped("run_invalid")
                self._forget(t)
            else:
                next_in = self._schedule.slow
        except StoreError:
            log.exception("checkpoint store error while polling run %s", t.ref.run_id)
            next_in = self._schedule.slow
        except Exception:  # a stage boundary: never let one run's bug stop the others
            log.exception("unexpected error while polling run %s", t.ref.run_id)
            self._health.dropped("internal_error")
            next_in = self._schedule.slow
        finally:
            t.polling = False
            self._sem.release()
        if next_in is not None and t.ref.run_id in self._runs and not self._stopping.is_set():
            self._push(t, self._monotonic() + next_in)

    async def _poll(self, t: TrackedRun) -> float | None:
        """Poll one run; return seconds until the next poll, or None when nothing is left to poll."""
        previous = t.run.status if t.run is not None else None
        if t.run is None or not t.open or t.run.status != "in_progress":
            t.run = await self._source.get_run(t.ref)
        run = t.run
        # A waiting run's steps cannot change until the application acts, so only the run is re-read; the steps
        # are listed once on the way in, to catch those that finished just before the wait.
        if (run.status not in WAITING or run.status != previous) and not await self._read_steps(t, run):
            return self._schedule.slow  # the commit failed (counted by the pipeline): read them again later
        if not run.is_terminal:
            t.waiting_polls = t.waiting_polls + 1 if run.status in WAITING and run.status == previous else 1
            return self._schedule.interval(run, t.waiting_polls)
        if t.open:
            t.sweeps_after_end += 1
            if t.sweeps_after_end <= self._schedule.final_sweeps:
                return self._schedule.fast
            log.warning("run %s ended but %d step(s) never finished; exporting the run without them",
                        run.id, len(t.open))  # fmt: skip
            self._health.dropped("step_unfinished", len(t.open))
            t.open.clear()
        name = await self._assistant_name(run.assistant_id)
        if not self._sink.finish_run(run, name):
            return self._schedule.slow
        self._runs.pop(run.id, None)
        return None

    async def _read_steps(self, t: TrackedRun, run: Run) -> bool:
        """Read the run's new and unfinished steps and commit the newly terminal ones; False if the commit failed."""
        tail = len(t.committed) >= TAIL_MODE_AT and bool(t.open) and t.newest is not None
        if tail:
            reread = [await self._source.get_step(t.ref, step_id) for step_id in t.open[:MAX_OPEN_READS]]
            new, cut = await _collect(self._source.list_steps(t.ref, after=t.newest))
        else:
            reread = []
            new, cut = await _collect(self._source.list_steps(t.ref, after=t.cursor))
        committed = set(t.committed)
        fresh: list[RunStep] = []
        for step in (*reread, *new):
            if step.is_terminal and step.id not in committed and step.id != t.cursor:
                fresh.append(step)
                committed.add(step.id)
        cursor = t.cursor
        if tail:
            # The cursor stays behind the open steps; once none is open, a normal listing moves it in one go.
            seen = {s.id for s in new}
            still_open = [s for s in t.open if s not in committed and s not in seen]
            still_open += [s.id for s in new if not s.is_terminal]
        else:
            for step in new:  # the cursor moves over the committed prefix of the listing
                if step.id not in committed:
                    break
                cursor = step.id
            still_open = [s.id for s in new if not s.is_terminal and s.id != t.cursor]
            past = [s.id for s in new]
            committed = set(past[past.index(cursor) + 1 :] if cursor in past else past) & committed
        if fresh and not self._sink.commit_steps(run, fresh, cursor):
            return False
        if new:
            t.newest = new[-1].id
        t.cursor, t.open, t.committed = cursor, still_open, committed
        if cut is not None:
            raise cut  # what was read before the listing broke its bound is committed; the caller backs off
        return True

    async def _assistant_name(self, assistant_id: str) -> str | None:
        cached = self._assistant_names.get(assistant_id)
        if cached is not None and (cached[0] is not None or cached[1] > self._monotonic()):
            return cached[0]
        try:
            name = (await self._source.get_assistant(assistant_id)).name
        except NotFound:
            # Remembered for a while: an assistant that is gone is not fetched again for every run.
            name = None
        except (SourceError, InvalidObject):
            return None  # the span falls back to the id; try again for the next run
        self._assistant_names[assistant_id] = (name, self._monotonic() + ASSISTANT_MISS_TTL_S)
        if len(self._assistant_names) > 1000:
            self._assistant_names.pop(next(iter(self._assistant_names)))
        return name

    def _forget(self, t: TrackedRun) -> None:
        self._runs.pop(t.ref.run_id, None)
        try:
            self._store.forget_run(t.ref)
        except StoreError:
            log.exception("checkpoint store: cannot forget run %s", t.ref.run_id)

    # --- API health -------------------------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        """True while the scheduling loop runs (False before start, after shutdown or if it crashed)."""
        return self._loop_task is not None and not self._loop_task.done()

    def api_ok(self) -> None:
        """A request succeeded: record it and log a recovery once."""
        self.last_success = self._wall()
        if self.api_state != "ok":
            if self.api_state not in ("unknown", "ok"):
                log.info("Assistants API recovered (was %s)", self.api_state)
            self.api_state = "ok"
            self.last_error = None

    def api_failed(self, state: str, exc: SourceError) -> None:
        """A request failed for good: log the state change once, keep the error for /v1/status."""
        self.last_error = str(exc)
        if self.api_state != state:
            log.warning("Assistants API %s: %s", state.replace("_", " "), exc)
            self.api_state = state


async def _collect(steps: AsyncIterator[RunStep]) -> tuple[list[RunStep], LimitExceeded | None]:
    """The steps a listing yields, and the bound it broke, if it broke one, after yielding them."""
    out: list[RunStep] = []
    try:
        async for step in steps:
            out.append(step)
    except LimitExceeded as exc:
        return out, exc
    return out, None
