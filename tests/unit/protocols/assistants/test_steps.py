"""The Assistants reader under the poller: each terminal step committed once, the cursor past the committed
prefix, bounded and error-tolerant."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest

from stepscope.core.poller import BOUND_BREAKS_MAX, Poller, PollSchedule
from stepscope.core.records import UnitRef
from stepscope.core.store import RunProgress, SqliteStore
from stepscope.errors import AuthError, NotFound, RateLimited
from stepscope.protocols.assistants.reader import SUBMIT_HOLD_S, RunState, StepReader
from stepscope.testing import FakeClock, eventually
from tests.kit.fakes import Counters, FakeSource, RecordingCommits, make_poller
from tests.kit.samples import make_run, make_step

pytestmark = pytest.mark.anyio
REF = UnitRef("thread_1", "run_1")
FAST = PollSchedule(fast=0.01, slow=0.03, final_sweeps=2)


@pytest.fixture
async def rig(store: SqliteStore) -> AsyncIterator[tuple[FakeSource, RecordingCommits, Counters, Poller[RunState]]]:
    source, sink, health = FakeSource(), RecordingCommits(), Counters()
    poller = make_poller(source, store, sink, health, schedule=FAST, concurrency=4, max_tracked=3)
    await poller.start()
    yield source, sink, health, poller
    await poller.stop(1.0)


Rig = tuple[FakeSource, RecordingCommits, Counters, Poller[RunState]]


async def test_in_progress_step_waits_until_terminal(rig: Rig) -> None:
    """A finished step is committed at once; an in-progress one only after it completes, and then exactly once."""
    source, sink, _, poller = rig
    run = make_run(status="in_progress")
    source.put_run(run)
    source.put_step(make_step(run, id="step_1"))
    source.put_step(make_step(run, id="step_2", status="in_progress", created_at=1003))
    poller.track(REF)
    await eventually(lambda: sink.step_ids() == ["step_1"])
    await eventually(lambda: source.calls.count("list_steps run_1 after=step_1") >= 2)
    assert sink.step_ids() == ["step_1"]
    source.put_step(make_step(run, id="step_2", status="completed", created_at=1003))
    await eventually(lambda: sink.step_ids() == ["step_1", "step_2"])
    await eventually(lambda: source.calls.count("list_steps run_1 after=step_2") >= 2)
    assert sink.step_ids() == ["step_1", "step_2"]


async def test_commit_moves_cursor(rig: Rig) -> None:
    """A committed prefix of steps moves the cursor handed to the commit, so later listings start after it."""
    source, sink, _, poller = rig
    run = make_run(status="in_progress")
    source.put_run(run)
    for i in (1, 2):
        source.put_step(make_step(run, id=f"step_{i}", created_at=1000 + i))
    poller.track(REF)
    await eventually(lambda: len(sink.step_ids()) == 2)
    assert [cursor for _, _, cursor in sink.steps] == ["step_2", "step_2"]
    await eventually(lambda: any("list_steps run_1 after=step_2" in c for c in source.calls))


async def test_cursor_stops_at_an_open_step(rig: Rig) -> None:
    """A finished step after an open one is committed, but the cursor stays before the open step."""
    source, sink, _, poller = rig
    run = make_run(status="in_progress")
    source.put_run(run)
    source.put_step(make_step(run, id="step_1", status="in_progress", created_at=1001))
    source.put_step(make_step(run, id="step_2", created_at=1002))
    poller.track(REF)
    await eventually(lambda: sink.step_ids() == ["step_2"])
    assert sink.steps[0][2] is None
    source.put_step(make_step(run, id="step_1", status="completed", created_at=1001))
    await eventually(lambda: sink.step_ids() == ["step_2", "step_1"])
    assert sink.steps[-1][2] == "step_2"


async def test_failed_commit_is_read_again(rig: Rig) -> None:
    """A step whose commit failed (the store) is offered again by a later poll, and committed once it works."""
    source, sink, _, poller = rig
    run = make_run(status="in_progress")
    source.put_run(run)
    source.put_step(make_step(run, id="step_1"))
    sink.fail = True
    poller.track(REF)
    await eventually(lambda: source.calls.count("list_steps run_1 after=None") >= 2)
    assert sink.step_ids() == []
    sink.fail = False
    await eventually(lambda: sink.step_ids() == ["step_1"])


async def test_terminal_run_finishes_after_its_steps(rig: Rig, store: SqliteStore) -> None:
    """A terminal run is finished after its steps are committed, with the assistant's name, and then forgotten."""
    source, sink, _, poller = rig
    run = make_run(status="completed")
    source.put_run(run)
    source.put_step(make_step(run, id="step_1"))
    poller.track(REF)
    await eventually(lambda: sink.finished_runs() == ["run_1"])
    assert sink.step_ids() == ["step_1"]
    assert sink.runs[-1][1] == "Helper"
    await eventually(lambda: not poller.is_tracked("run_1"))


async def test_long_tail_behind_an_open_step_is_not_reread(rig: Rig) -> None:
    """Once many steps finished behind an open first step, polls list only after the newest and re-read the open one."""
    source, sink, _, poller = rig
    run = make_run(status="in_progress")
    source.put_run(run)
    source.put_step(make_step(run, id="step_000", status="in_progress", created_at=1001))
    for i in range(1, 31):
        source.put_step(make_step(run, id=f"step_{i:03d}", created_at=1001 + i))
    poller.track(REF)
    await eventually(lambda: len(sink.step_ids()) == 30)
    source.calls.clear()
    await eventually(lambda: source.calls.count("get_step step_000") >= 2)
    assert "list_steps run_1 after=None" not in source.calls
    assert "list_steps run_1 after=step_030" in source.calls
    source.put_step(make_step(run, id="step_000", status="completed", created_at=1001))
    await eventually(lambda: "step_000" in sink.step_ids())
    await eventually(lambda: any(c == "list_steps run_1 after=step_030" for c in source.calls[-3:]))
    assert sorted(sink.step_ids()) == sorted({*sink.step_ids()})


async def test_listing_cut_at_the_page_cap_is_committed_as_far_as_it_went(rig: Rig) -> None:
    """A listing that hits the page cap commits what it read, and the next poll carries on from there."""
    source, sink, _, poller = rig
    run = make_run(status="in_progress")
    source.put_run(run)
    for i in range(1, 8):
        source.put_step(make_step(run, id=f"step_{i}", created_at=1000 + i))
    source.page_cap = 3
    poller.track(REF)
    await eventually(lambda: len(sink.step_ids()) == 7)
    assert sink.step_ids() == [f"step_{i}" for i in range(1, 8)]
    assert poller.api.state != "unavailable"


async def test_a_listing_that_keeps_breaking_its_bound_backs_off_then_is_given_up(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    """A run whose every listing hits the page cap without progress is listed again after 1, 2, 4 and 8 times the
    slow interval, then given up on the fifth, counted as `listing_unbounded` and logged in one line."""
    source, _, health, poller = rig
    run = make_run(status="in_progress")
    source.put_run(run)
    for i in range(1, 6):
        source.put_step(make_step(run, id=f"step_{i}", status="in_progress", completed_at=None, created_at=1000 + i))
    source.page_cap = 3
    started = time.monotonic()
    poller.track(REF)
    await eventually(lambda: not poller.is_tracked("run_1"), 5.0, "the run given up")
    took = time.monotonic() - started
    listings = [c for c in source.calls if c.startswith("list_steps run_1")]
    assert len(listings) == BOUND_BREAKS_MAX
    assert took >= (1 + 2 + 4 + 8) * FAST.slow * 0.9, took
    assert health.counts == {"listing_unbounded": 1}
    assert sum("broke a bound on 5 polls in a row" in r.getMessage() for r in caplog.records) == 1


async def test_run_that_stays_unreadable_is_given_up(rig: Rig) -> None:
    """A run that cannot be parsed on three polls in a row is dropped and counted, not re-read forever."""
    source, _, health, poller = rig
    source.put_run(make_run(status="in_progress"))
    source.invalid_runs.add("run_1")
    poller.track(REF)
    await eventually(lambda: not poller.is_tracked("run_1"))
    assert source.calls.count("get_run run_1") == 3
    assert health.counts == {"run_invalid": 1}


async def test_missing_assistant_is_remembered(rig: Rig) -> None:
    """An assistant answered 404 is asked for once, not once per run."""
    source, sink, _, poller = rig
    source.missing_assistants.add("asst_1")
    for i in range(3):
        source.put_run(make_run(id=f"run_{i}", thread_id=f"thread_{i}", status="completed"))
        poller.track(UnitRef(f"thread_{i}", f"run_{i}"))
    await eventually(lambda: len(sink.finished_runs()) == 3)
    assert source.calls.count("get_assistant asst_1") == 1
    assert {name for _, name in sink.runs} == {None}


async def test_unfinished_steps_of_ended_run_are_given_up(rig: Rig) -> None:
    """If a run ended but a step never does, the step is dropped (counted) after the final sweeps."""
    source, sink, health, poller = rig
    run = make_run(status="completed")
    source.put_run(run)
    source.put_step(make_step(run, id="step_1", status="in_progress"))
    poller.track(REF)
    await eventually(lambda: sink.finished_runs() == ["run_1"])
    assert health.counts == {"step_unfinished": 1}


async def test_waiting_run_is_only_reread(rig: Rig) -> None:
    """While a run waits in requires_action its steps are listed once, then only the run is re-read."""
    source, _, _, poller = rig
    source.put_run(make_run(status="requires_action"))
    poller.track(REF)
    await eventually(lambda: source.calls.count("get_run run_1") >= 3)
    assert sum(c.startswith("list_steps") for c in source.calls) == 1


async def test_tool_outputs_sent_through_the_proxy_hold_polls_for_the_answer(store: SqliteStore) -> None:
    """Once the application sent a waiting run's tool outputs, polls wait for the answer to report the run
    instead of racing it; without an answer they resume when the hold ends."""
    source, sink, health, clock = FakeSource(), RecordingCommits(), Counters(), FakeClock()
    reader = StepReader(source, sink, health, schedule=FAST, monotonic=clock.monotonic)
    source.put_run(make_run(status="requires_action"))
    state = reader.begin(REF, None, set())
    assert await reader.poll(state) is not None
    reads = len(source.calls)
    reader.submit_sent(state)
    assert await reader.poll(state) == pytest.approx(SUBMIT_HOLD_S)
    assert len(source.calls) == reads
    clock.advance(SUBMIT_HOLD_S)
    await reader.poll(state)
    assert len(source.calls) > reads


async def test_resume_skips_committed_steps(store: SqliteStore) -> None:
    """After a restart, steps the store has committed are not committed again."""
    source, sink, health = FakeSource(), RecordingCommits(), Counters()
    run = make_run(status="in_progress")
    source.put_run(run)
    for i in (1, 2, 3):
        source.put_step(make_step(run, id=f"step_{i}", created_at=1000 + i))
    poller = make_poller(source, store, sink, health, schedule=FAST)
    poller.resume([RunProgress(REF, cursor="step_1", committed={"step_3"})])
    await poller.start()
    try:
        await eventually(lambda: sink.step_ids() == ["step_2"])
        await eventually(lambda: source.calls.count("list_steps run_1 after=step_3") >= 1)
        assert sink.step_ids() == ["step_2"]
    finally:
        await poller.stop()


async def test_tracking_is_bounded_and_runs_past_the_bound_wait_their_turn(rig: Rig) -> None:
    """Beyond max_tracked_runs new runs wait in a bounded queue (the same size) and are tracked as room frees; past
    that queue they are refused and counted."""
    source, _, health, poller = rig
    for i in range(7):
        source.put_run(make_run(id=f"run_{i}", status="queued"))
    results = [poller.track(UnitRef("thread_a", f"run_{i}")) for i in range(7)]
    assert results == [True, True, True, False, False, False, False]
    assert (poller.tracked_count, poller.waiting_count) == (3, 3)
    assert health.counts == {"tracked_runs_full": 1}
    poller.untrack("run_0")
    assert (poller.tracked_count, poller.waiting_count) == (3, 2)
    assert poller.is_tracked("run_3") and not poller.is_tracked("run_4")


async def test_not_found_run_is_dropped(rig: Rig, store: SqliteStore) -> None:
    """A 404 for a run drops it, counts it and forgets it in the store."""
    source, _, health, poller = rig
    source.put_run(make_run(status="in_progress"))
    source.fail_with = NotFound("gone", status_code=404)
    poller.track(REF)
    # The unit leaves the poller before its forgetting is written (off the event loop): wait for both.
    await eventually(lambda: not poller.is_tracked("run_1") and store.known_runs(["run_1"]) == set())
    assert health.counts == {"not_found": 1}


async def test_rate_limit_delays_the_run(store: SqliteStore) -> None:
    """A 429 with retry-after: 0.3 puts that run's next poll 0.3 s later on the poller's clock, not before."""
    clock = FakeClock()
    source, sink, health = FakeSource(), RecordingCommits(), Counters()
    poller = make_poller(source, store, sink, health, schedule=FAST, monotonic=clock.monotonic, wall=clock.time)
    source.put_run(make_run(status="queued"))
    source.fail_with = RateLimited("slow down", retry_after=0.3, status_code=429)
    await poller.start()
    try:
        poller.track(REF)
        await eventually(lambda: poller.api.state == "rate_limited")
        clock.advance(0.29)
        # Tracking another run wakes the loop, which re-reads the clock: at 0.29 the rate-limited run is not due.
        source.put_run(make_run(id="run_2", thread_id="thread_2", status="queued"))
        poller.track(UnitRef("thread_2", "run_2"))
        await eventually(lambda: "get_run run_2" in source.calls)
        assert source.calls.count("get_run run_1") == 1
        clock.advance(0.02)
        await eventually(lambda: source.calls.count("get_run run_1") == 2)
    finally:
        await poller.stop(1.0)


async def test_auth_failure_is_reported_and_recovers(rig: Rig) -> None:
    """A 401 sets the API state to auth_failed with the error kept for /v1/status."""
    source, _, _, poller = rig
    source.put_run(make_run(status="queued"))
    source.fail_with = AuthError("bad key", status_code=401)
    poller.track(REF)
    await eventually(lambda: poller.api.state == "auth_failed")
    assert poller.api.last_error == "bad key"


async def test_shutdown_is_idempotent(store: SqliteStore) -> None:
    """shutdown() works before start() and twice."""
    poller = make_poller(FakeSource(), store, RecordingCommits(), Counters(), schedule=FAST)
    await poller.stop()
    await poller.start()
    await poller.stop()
    await poller.stop()
    assert not poller.track(REF)


async def test_busy_containers_are_those_with_unfinished_runs(rig: Rig) -> None:
    """A thread is busy while its tracked run is unread or not terminal, and free once the run ended."""
    source, sink, _, poller = rig
    source.put_run(make_run(id="run_1", thread_id="thread_a", status="in_progress"))
    source.put_run(make_run(id="run_2", thread_id="thread_b", status="completed"))
    poller.track(UnitRef("thread_a", "run_1"))
    poller.track(UnitRef("thread_b", "run_2"))
    assert poller.busy_containers() == {"thread_a", "thread_b"}  # nothing read yet
    await eventually(lambda: sink.finished_runs() == ["run_2"])
    assert poller.busy_containers() == {"thread_a"}


def test_waiting_units_back_off_from_fast_to_slow() -> None:
    """A waiting unit is polled fast for its grace polls, then each poll 1.5x later, never slower than `slow`."""
    schedule = PollSchedule(fast=1.0, slow=4.0, grace=2)
    assert [schedule.waiting(n) for n in (1, 2, 3, 4, 5, 6)] == [1.0, 1.0, 1.5, 2.25, 3.375, 4.0]
