"""Request economy by the one-active-run rule: discovery and the Assistants reader under the real poller spend no
listing on a thread whose run is followed, no read on a run a listing carried, and one listing on a run's end and
the run after it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from stepscope.core.poller import Poller, PollSchedule
from stepscope.core.store import SqliteStore
from stepscope.protocols.assistants.discovery import Discovery
from stepscope.protocols.assistants.reader import RELIST_LIMIT, RunState
from stepscope.testing import eventually
from tests.kit.fakes import Counters, FakeSource, RecordingCommits, make_discovery, make_poller
from tests.kit.samples import make_run, make_step

pytestmark = pytest.mark.anyio
NOW = 10_000.0
T = int(NOW) - 60  # when the thread's first run was created, inside the lookback
FAST = PollSchedule(fast=0.01, slow=0.03, grace=4, final_sweeps=2)

Rig = tuple[FakeSource, RecordingCommits, Poller[RunState], Discovery]


@pytest.fixture
async def rig(store: SqliteStore) -> AsyncIterator[Rig]:
    """A poller over a reader of a `FakeSource`, and a discovery of `thread_a` whose passes the test runs itself."""
    source, sink, health = FakeSource(), RecordingCommits(), Counters()
    poller = make_poller(source, store, sink, health, schedule=FAST)
    discovery = make_discovery(
        Discovery, source, store, poller, lookback_s=3600, wall=lambda: NOW, threads=["thread_a"]
    )
    await poller.start()
    yield source, sink, poller, discovery
    await poller.stop(1.0)


def _calls(source: FakeSource, prefix: str) -> list[str]:
    return [c for c in source.calls if c.startswith(prefix)]


async def test_a_thread_is_not_listed_while_its_run_is_followed(rig: Rig) -> None:
    """While the run a pass found is going, later passes do not list its thread; once the run ended they do."""
    source, sink, poller, discovery = rig
    run = make_run(thread_id="thread_a", status="in_progress", created_at=T, completed_at=None)
    source.put_run(run)
    source.put_step(make_step(run, status="in_progress"))
    assert await discovery.run_once() == 1
    await eventually(lambda: len(_calls(source, "list_steps run_1")) >= 2, what="run_1 polled")
    for _ in range(3):
        assert await discovery.run_once() == 0
    assert _calls(source, "list_runs") == ["list_runs thread_a"]
    source.put_step(make_step(run, status="completed"))
    source.set_run_status("run_1", "completed", completed_at=T + 30)
    await eventually(lambda: not poller.is_tracked("run_1"), what="run_1 finished")
    listings = len(_calls(source, "list_runs"))
    await discovery.run_once()
    assert len(_calls(source, "list_runs")) == listings + 1
    assert sink.finished_runs() == ["run_1"]


async def test_a_run_found_by_a_listing_is_not_read_again(rig: Rig) -> None:
    """A finished run a pass found is exported from the object the listing carried: one step listing, no run read."""
    source, sink, _, discovery = rig
    run = make_run(thread_id="thread_a", status="completed", created_at=T)
    source.put_run(run)
    source.put_step(make_step(run))
    await discovery.run_once()
    await eventually(lambda: sink.finished_runs() == ["run_1"])
    assert source.calls == ["list_runs thread_a", "list_steps run_1 after=None", "get_assistant asst_1"]
    assert sink.step_ids() == ["step_1"]


async def test_a_listed_waiting_run_lists_its_steps_once_then_is_reread_through_its_thread(rig: Rig) -> None:
    """A run listed in requires_action has its steps listed once on the way in, without a read by id; while it
    waits, each re-read is one listing of its thread."""
    source, _, _, discovery = rig
    source.put_run(make_run(thread_id="thread_a", status="requires_action", created_at=T, completed_at=None))
    await discovery.run_once()
    await eventually(lambda: len(_calls(source, "list_runs")) >= 4, what="re-reads of the waiting run")
    assert _calls(source, "list_steps") == ["list_steps run_1 after=None"]
    assert _calls(source, "get_run") == []


async def test_a_listed_queued_run_is_asked_for_steps_and_reread_every_grace_th_poll(rig: Rig) -> None:
    """A run listed while queued is polled by step listings, which tell whether it started, and re-read through its
    thread's listing every `grace`-th poll, the listing that found it counting as the first, never by id."""
    source, _, _, discovery = rig
    source.put_run(make_run(thread_id="thread_a", status="queued", created_at=T, completed_at=None, started_at=None))
    await discovery.run_once()
    await eventually(lambda: len(_calls(source, "list_runs")) >= 3, what="two re-reads of the queued run")
    found, first, second = [i for i, c in enumerate(source.calls) if c.startswith("list_runs")][:3]
    assert first - found - 1 == FAST.grace - 2  # no step listing on the poll right after the listing
    assert second - first - 1 == FAST.grace - 1  # the step listings between two re-reads
    assert set(source.calls) == {"list_runs thread_a", "list_steps run_1 after=None"}


async def test_a_runs_end_and_the_next_run_come_from_one_listing(rig: Rig) -> None:
    """When a followed run ends and the thread starts another, one listing of the thread confirms the end and
    finds the next run, which is then tracked from the listed object: no read by id, no pass."""
    source, sink, poller, discovery = rig
    run = make_run(thread_id="thread_a", status="in_progress", created_at=T, completed_at=None)
    source.put_run(run)
    source.put_step(make_step(run, status="in_progress"))
    await discovery.run_once()
    await eventually(lambda: len(_calls(source, "list_steps run_1")) >= 2, what="run_1 polled")
    mark = len(source.calls)
    source.put_step(make_step(run, status="completed"))
    source.set_run_status("run_1", "completed", completed_at=T + 30)
    following = make_run(id="run_2", thread_id="thread_a", status="queued", created_at=T + 30, completed_at=None)
    source.put_run(following)
    await eventually(lambda: sink.finished_runs() == ["run_1"] and poller.is_tracked("run_2"))
    await eventually(lambda: "list_steps run_2 after=None" in source.calls, what="run_2 polled")
    after = source.calls[mark:]
    assert after.count("list_runs thread_a") == 1
    assert [c for c in after if c.startswith("get_run")] == []
    assert sink.step_ids() == ["step_1"]
    # The next run is followed too: its end comes from a listing, and nothing is committed twice.
    source.put_step(make_step(following, id="step_2", created_at=T + 31))
    source.set_run_status("run_2", "completed", completed_at=T + 40)
    await eventually(lambda: sink.finished_runs() == ["run_1", "run_2"])
    assert sink.step_ids() == ["step_1", "step_2"]
    assert _calls(source, "get_run") == []


async def test_a_followed_run_not_on_the_first_page_is_read_by_id(rig: Rig) -> None:
    """A followed run pushed off its thread's first page (more newer runs than `RELIST_LIMIT`) is read by id, and
    the runs after it are left to discovery's next pass, which finds every one of them."""
    source, sink, poller, discovery = rig
    run = make_run(thread_id="thread_a", status="in_progress", created_at=T, completed_at=None)
    source.put_run(run)
    await discovery.run_once()
    await eventually(lambda: len(_calls(source, "list_runs")) >= 2, what="a re-read of run_1")
    newer = [f"run_n{i}" for i in range(RELIST_LIMIT)]
    source.set_run_status("run_1", "completed", completed_at=T + 30)
    for i, run_id in enumerate(newer):
        source.put_run(make_run(id=run_id, thread_id="thread_a", status="completed", created_at=T + 31 + i))
    await eventually(lambda: sink.finished_runs() == ["run_1"])
    assert _calls(source, "get_run") == ["get_run run_1"]
    assert not any(poller.is_tracked(run_id) for run_id in newer)
    assert await discovery.run_once() == RELIST_LIMIT
    await eventually(lambda: len(sink.finished_runs()) == 1 + RELIST_LIMIT)


async def test_runs_after_a_followed_run_on_a_thread_no_longer_watched_are_left_alone(rig: Rig) -> None:
    """A run found on a registered thread that is unregistered before the run ends does not bring in the next run."""
    source, sink, poller, discovery = rig
    run = make_run(thread_id="thread_r", status="in_progress", created_at=T, completed_at=None)
    source.put_run(run)
    assert await discovery.watch("thread_r", None)
    await discovery.run_once()
    await eventually(lambda: poller.is_tracked("run_1"))
    await discovery.unwatch("thread_r", None)
    await discovery.run_once()
    source.set_run_status("run_1", "completed", completed_at=T + 30)
    source.put_run(make_run(id="run_2", thread_id="thread_r", status="queued", created_at=T + 30, completed_at=None))
    await eventually(lambda: sink.finished_runs() == ["run_1"])
    assert not poller.is_tracked("run_2")
