"""The Assistants protocol's `UnitReader`: one run, its new and unfinished steps, committed as they finish.

Per run it keeps the committed cursor (every step up to it is committed), every step it committed (so a server that
lists a step again never gets it counted twice) and the steps seen unfinished (`open`). One poll lists steps in
ascending order *after the cursor*, so a single request returns both the unfinished steps and the new ones; the
run itself is re-read only when no step is open or the run waits. A run that waits (queued, requires_action) backs
off per `PollSchedule`. Newly terminal steps are committed at once, so a step is read from the API once whatever
the trace backend does. A terminal run gets up to `final_sweeps` more polls for steps still open, then its run span
is committed and it is done.

A run found by a thread listing comes with the object the listing carried (`RunState.take_listed`), so its first
poll reads no run. Such a run is *followed*: a thread has at most one active run, so a new run can only appear on
it once this one ended, and the re-read that would learn of the end is one listing of the thread instead,
`GET /threads/{id}/runs?limit=RELIST_LIMIT` (newest first): it carries this run's state, and the runs started after
it go to the `Follow` (discovery), which tracks them with their objects. A run not on that page is read by id.

A run the application streams through the proxy reports its steps in the stream's events (`stream_run`,
`stream_step`): they are committed as they arrive and the run is not polled while events flow; when the stream
ends, one final check (the steps after the cursor, and the run only if the stream did not say it ended) catches
anything the stream missed. A stream cut short, or silent for `STREAM_SILENCE_S`, falls back to polling.

A run whose early step stays open while later ones finish would make every listing after the cursor longer; once
`TAIL_MODE_AT` steps are committed past an open one, the reader lists only after the newest step it has seen and
re-reads the open steps one by one (at most `MAX_OPEN_READS` a poll).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace

from stepscope.contract.vocabulary import DropReason
from stepscope.core.poller import PollSchedule
from stepscope.core.records import Commit, Committer, Drops, UnitRef
from stepscope.errors import InvalidObject, LimitExceeded, NotFound, SourceError
from stepscope.protocols.assistants.records import Run, RunStep, StepSource

log = logging.getLogger("stepscope.steps")

WAITING = frozenset({"queued", "requires_action"})
TAIL_MODE_AT = 20
MAX_OPEN_READS = 8
ASSISTANT_MISS_TTL_S = 600.0
ASSISTANT_CACHE = 1000
STREAM_SILENCE_S = 30.0
SUBMIT_HOLD_S = 5.0
"""After the application sent tool outputs through the proxy, polls of the run wait this long for the answer to
report it (the answer's stream, or its JSON body), so a poll cannot race the answer's first event."""
RELIST_LIMIT = 3
"""Runs per listing that re-reads a followed run: the run and the (at most two) runs started after it since the
last poll fit one page; a run further down is read by id, and discovery finds the others."""

RunCommit = Commit[Run, RunStep, str]
Follow = Callable[[str, Sequence[Run]], Awaitable[None]]
"""Where the runs a followed run's listing shows after it go (`thread_id`, runs newest first): tracked like runs a
discovery pass found. Must not raise: what it cannot track, discovery's next listing of the thread finds."""


def _interval(schedule: PollSchedule, run: Run | None, waiting_polls: int = 0) -> float:
    """Seconds to the next poll of a run: `fast` unless it waits (queued, requires_action); `waiting_polls` counts
    consecutive polls that found it in the same waiting status, this one included."""
    if run is None or run.status not in WAITING:
        return schedule.fast
    return schedule.waiting(waiting_polls)


@dataclass(slots=True)
class RunState:
    ref: UnitRef
    run: Run | None = None
    cursor: str | None = None
    committed: set[str] = field(default_factory=set)  # every committed step of the run
    past_cursor: int = 0  # committed steps the last full listing found past the cursor
    open: list[str] = field(default_factory=list)  # unfinished steps, creation order
    newest: str | None = None  # the newest step id seen, where tail-mode listings start
    sweeps_after_end: int = 0
    waiting_polls: int = 0
    traceparent: str | None = None  # from the application's create request, when the run's metadata has none
    streaming_until: float = 0.0  # a stream reports this run's steps until then (monotonic): no polling
    run_final: bool = False  # the stream said the run is terminal: the final check needs no run read
    seen_at: float = float("-inf")  # when the proxy saw the application create or resume it (monotonic)
    fresh: bool = False  # `run` came from a listing just now: the next poll needs no run read
    follow: Follow | None = None  # where runs after this one go; set, re-reads list the thread (module docstring)

    def take_listed(self, run: Run, follow: Follow | None) -> None:
        """Take the run object the listing that found the run carried (unless the run was read already), before the
        first poll, and where the runs the thread starts after it go (None: re-reads read the run by id)."""
        if self.run is None:
            self.run, self.fresh = run, True
        self.follow = follow


class AssistantNames:
    """Assistant names by id, for run span names. A 404 is remembered for `miss_ttl_s`; other failures not at all."""

    def __init__(
        self,
        source: StepSource,
        *,
        miss_ttl_s: float = ASSISTANT_MISS_TTL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._source = source
        self._miss_ttl = miss_ttl_s
        self._clock = clock
        self._names: dict[str, tuple[str | None, float]] = {}  # id -> (name, expiry of a miss)

    async def name(self, assistant_id: str) -> str | None:
        """The assistant's name, or None when it has none, is gone, or cannot be read now."""
        cached = self._names.get(assistant_id)
        if cached is not None and (cached[0] is not None or cached[1] > self._clock()):
            return cached[0]
        try:
            name = (await self._source.get_assistant(assistant_id)).name
        except NotFound:
            name = None  # remembered for a while: a missing assistant is not fetched again for every run
        except (SourceError, InvalidObject):
            return None  # the span falls back to the id; try again for the next run
        self._names[assistant_id] = (name, self._clock() + self._miss_ttl)
        if len(self._names) > ASSISTANT_CACHE:
            self._names.pop(next(iter(self._names)))
        return name


class StepReader:
    """Polls Assistants runs; a `UnitReader[RunState]`."""

    def __init__(
        self,
        source: StepSource,
        committer: Committer[Run, RunStep, str],
        drops: Drops,
        *,
        schedule: PollSchedule,
        names: AssistantNames | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._source = source
        self._committer = committer
        self._drops = drops
        self._schedule = schedule
        self._names = names or AssistantNames(source)
        self._monotonic = monotonic

    def begin(self, ref: UnitRef, cursor: str | None, committed: set[str]) -> RunState:
        return RunState(ref, cursor=cursor, committed=set(committed))

    def status(self, state: RunState) -> str:
        return state.run.status if state.run is not None else "pending"

    def busy(self, state: RunState) -> bool:
        """A thread runs one run at a time: it is busy while its run is unread or not terminal."""
        return state.run is None or not state.run.is_terminal

    async def poll(self, state: RunState) -> float | None:
        """Poll one run; return seconds until the next poll, or None when it is done."""
        streaming_for = state.streaming_until - self._monotonic()
        if streaming_for > 0:
            return streaming_for  # the stream reports the steps; `stream_ended` brings the final check forward
        fresh, state.fresh = state.fresh, False
        if state.run is not None and state.run.status == "queued" and not state.run_final:
            return await self._poll_queued(state, state.run, fresh)
        # A run a listing just carried is handled as if just read: its steps are listed even if it waits.
        previous = state.run.status if state.run is not None and not fresh else None
        reread = state.run is None or not state.open or state.run.status != "in_progress"
        if reread and not fresh and not state.run_final:
            state.run = self._with_parent(state, await self._reread(state))
        run = state.run
        assert run is not None
        # A waiting run's steps cannot change until the application acts, so only the run is re-read; the steps
        # are listed once on the way in, to catch those that finished just before the wait.
        if (run.status not in WAITING or run.status != previous) and not await self._read_steps(state, run):
            return self._schedule.slow  # the commit failed (counted by the pipeline): read them again later
        if not run.is_terminal:
            same = run.status in WAITING and run.status == previous
            state.waiting_polls = state.waiting_polls + 1 if same else 1
            return _interval(self._schedule, run, state.waiting_polls)
        if state.open:
            state.sweeps_after_end += 1
            if state.sweeps_after_end <= self._schedule.final_sweeps:
                return self._schedule.fast
            log.warning("run %s ended but %d step(s) never finished; exporting the run without them",
                        run.id, len(state.open))  # fmt: skip
            self._drops.dropped(DropReason.STEP_UNFINISHED, len(state.open))
            state.open.clear()
        name = await self._names.name(run.assistant_id)
        if not await self._committer.commit(RunCommit(run.ref, run, finish=name, finished=True)):
            return self._schedule.slow
        return None

    async def _poll_queued(self, state: RunState, run: Run, fresh: bool) -> float:
        """A queued run has no steps until it starts, so a step listing answers both "has it started?" and "which
        steps?" in one request; the run itself is read every `grace`-th poll, for a run cancelled or expired while
        queued. Right after the application created it (through the proxy) or a listing found it (`fresh`, which
        counts as a read), the answer is known: no request."""
        since_seen = self._monotonic() - state.seen_at
        if since_seen < self._schedule.fast:
            return self._schedule.fast - since_seen
        state.waiting_polls += 1
        if fresh:
            return _interval(self._schedule, run, state.waiting_polls)
        if state.waiting_polls % self._schedule.grace == 0:
            state.run = self._with_parent(state, await self._reread(state))
            if state.run.status == "queued":
                return _interval(self._schedule, state.run, state.waiting_polls)
            state.waiting_polls = 0
            return 0.0  # it moved on: the next poll handles it as any run in that status
        if not await self._read_steps(state, run):
            return self._schedule.slow
        if state.newest is None:
            return _interval(self._schedule, run, state.waiting_polls)
        state.run = replace(run, status="in_progress")  # a step exists: it started (a later read tells the rest)
        state.waiting_polls = 0
        return self._schedule.fast

    # --- what a stream through the proxy reports ---------------------------------------------------------------

    def stream_started(self, state: RunState, run: Run, traceparent: str | None) -> None:
        """The application created (or resumed) the run; a stream, if any, now reports it."""
        if traceparent is not None and state.traceparent is None:
            state.traceparent = traceparent
        state.run = self._with_parent(state, run)
        state.run_final = run.is_terminal
        state.seen_at = self._monotonic()

    def stream_run(self, state: RunState, run: Run) -> None:
        """A `thread.run.*` event: the run as the stream has it now; events keep polling away a while longer."""
        state.run = self._with_parent(state, run)
        state.run_final = run.is_terminal
        state.streaming_until = self._monotonic() + STREAM_SILENCE_S

    async def stream_step(self, state: RunState, step: RunStep) -> None:
        """A `thread.run.step.*` event: a terminal step is committed now, an open one remembered."""
        state.streaming_until = self._monotonic() + STREAM_SILENCE_S
        if not step.is_terminal:
            if step.id not in state.open and step.id not in state.committed:
                state.open.append(step.id)
            return
        if state.run is None or step.id in state.committed or step.id == state.cursor:
            return  # without the run the step cannot be mapped: the final check will list it
        commit = RunCommit(state.ref, state.run, records=[step], record_ids=[step.id], cursor=state.cursor)
        if await self._committer.commit(commit):
            state.committed.add(step.id)
            if step.id in state.open:
                state.open.remove(step.id)

    def submit_sent(self, state: RunState) -> None:
        """The application sent the run's tool outputs through the proxy: its answer will report the run."""
        state.streaming_until = max(state.streaming_until, self._monotonic() + SUBMIT_HOLD_S)

    def stream_ended(self, state: RunState) -> None:
        """The stream ended (whole or cut short): poll from now on, starting with the final check."""
        state.streaming_until = 0.0

    async def _reread(self, state: RunState) -> Run:
        """The run as the API has it now: from one page of its thread's runs when it is followed (handing the runs
        started after it to `state.follow`), else, or when it is not on that page, read by id."""
        ref, seen, follow = state.ref, state.run, state.follow
        if seen is None or follow is None:
            return await self._source.get_run(ref)
        newer: list[Run] = []
        async for listed in self._source.list_runs(ref.container_id, limit=RELIST_LIMIT):
            if listed.id == ref.unit_id:
                if newer:
                    await follow(ref.container_id, newer)
                return listed
            newer.append(listed)
            if len(newer) >= RELIST_LIMIT or listed.created_at < seen.created_at:
                break  # past it, or not on the first page: no second request for what a read by id tells
        return await self._source.get_run(ref)

    def _with_parent(self, state: RunState, run: Run) -> Run:
        if state.traceparent is None or run.traceparent is not None:
            return run
        return replace(run, traceparent=state.traceparent)

    async def _read_steps(self, state: RunState, run: Run) -> bool:
        """Read the run's new and unfinished steps and commit the newly terminal ones; False if the commit failed."""
        tail = state.past_cursor >= TAIL_MODE_AT and bool(state.open) and state.newest is not None
        if tail:
            reread = [await self._source.get_step(state.ref, step_id) for step_id in state.open[:MAX_OPEN_READS]]
            new, cut = await _collect(self._source.list_steps(state.ref, after=state.newest))
        else:
            reread = []
            new, cut = await _collect(self._source.list_steps(state.ref, after=state.cursor))
        committed = set(state.committed)
        previous_cursor = state.cursor
        fresh: list[RunStep] = []
        for step in (*reread, *new):
            if step.is_terminal and step.id not in committed and step.id != state.cursor:
                fresh.append(step)
                committed.add(step.id)
        cursor = state.cursor
        if tail:
            # The cursor stays behind the open steps; once none is open, a normal listing moves it in one go.
            seen = {s.id for s in new}
            still_open = [s for s in state.open if s not in committed and s not in seen]
            still_open += [s.id for s in new if not s.is_terminal]
        else:
            for step in new:  # the cursor moves over the committed prefix of the listing
                if step.id not in committed:
                    break
                cursor = step.id
            still_open = [s.id for s in new if not s.is_terminal and s.id != state.cursor]
            past = [s.id for s in new]
            state.past_cursor = sum(
                1 for s in (past[past.index(cursor) + 1 :] if cursor in past else past) if s in committed
            )
        if fresh:
            commit = RunCommit(run.ref, run, records=fresh, record_ids=[s.id for s in fresh], cursor=cursor)
            if not await self._committer.commit(commit):
                return False
        if new:
            state.newest = new[-1].id
        state.cursor, state.open, state.committed = cursor, still_open, committed
        if cut is not None and not (cut.reason == "page_cap" and (fresh or cursor != previous_cursor)):
            raise cut  # the listing broke a bound and made no progress: the caller backs off
        return True  # a listing cut at the page cap that moved on carries on at the normal pace


async def _collect(steps: AsyncIterator[RunStep]) -> tuple[list[RunStep], LimitExceeded | None]:
    """The steps a listing yields, and the bound it broke, if it broke one, after yielding them."""
    out: list[RunStep] = []
    try:
        async for step in steps:
            out.append(step)
    except LimitExceeded as exc:
        return out, exc
    return out, None
