"""Discovery: configured and registered threads, stop at known runs, lookback, sharding, bounded registrations."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import pytest

from stepscope.core.discovery import DISCOVERY_BUDGET, DISCOVERY_CONCURRENCY, shard_of
from stepscope.core.poller import PollSchedule
from stepscope.core.records import UnitRef
from stepscope.core.store import SqliteStore
from stepscope.errors import AuthError, NotFound, Unavailable, UnknownRoute
from stepscope.protocols.assistants.discovery import EMPTY_BACKOFF_MAX_S, Discovery
from stepscope.protocols.assistants.records import Run, RunStep
from stepscope.protocols.base import RegistrationFull
from stepscope.testing import eventually
from tests.kit.fakes import Counters, FakeSource, RecordingCommits, make_discovery, make_poller
from tests.kit.fakes import RecordingTracker as Tracker
from tests.kit.samples import make_run

pytestmark = pytest.mark.anyio
NOW = 10_000.0


def _discovery(source: FakeSource, store: SqliteStore, tracker: Tracker, **kw: object) -> Discovery:
    return make_discovery(Discovery, source, store, tracker, lookback_s=3600, wall=lambda: NOW, health=tracker, **kw)  # type: ignore[arg-type]


async def test_new_runs_tracked_oldest_first_until_known(store: SqliteStore) -> None:
    """Runs newer than the newest known run are tracked, oldest first; listing stops at the known one."""
    source, tracker = FakeSource(), Tracker()
    for i in range(5):
        source.put_run(make_run(id=f"run_{i}", thread_id="thread_a", created_at=int(NOW) - 100 + i, status="completed"))
    store.add_run(UnitRef("thread_a", "run_2"), NOW)
    found = await _discovery(source, store, tracker, threads=["thread_a"]).run_once()
    assert found == 2
    assert [r.unit_id for r in tracker.refs] == ["run_3", "run_4"]


async def test_lookback_bounds_history(store: SqliteStore) -> None:
    """Runs created before the lookback horizon are not backfilled."""
    source, tracker = FakeSource(), Tracker()
    source.put_run(make_run(id="run_old", thread_id="thread_a", created_at=int(NOW) - 7200, status="completed"))
    source.put_run(make_run(id="run_new", thread_id="thread_a", created_at=int(NOW) - 60, status="completed"))
    await _discovery(source, store, tracker, threads=["thread_a"]).run_once()
    assert [r.unit_id for r in tracker.refs] == ["run_new"]


async def test_registered_threads_and_runs(store: SqliteStore) -> None:
    """A thread registered through watch() is listed on the next pass; a registered run is tracked at once."""
    source, tracker = FakeSource(), Tracker()
    source.put_run(make_run(id="run_1", thread_id="thread_b", created_at=int(NOW) - 5, status="in_progress"))
    discovery = _discovery(source, store, tracker)
    assert await discovery.watch("thread_b", None)
    assert await discovery.watch("thread_c", "run_9")
    assert tracker.refs == [UnitRef("thread_c", "run_9")]
    await discovery.run_once()
    assert UnitRef("thread_b", "run_1") in tracker.refs
    await discovery.unwatch("thread_b", None)
    assert "thread_b" not in discovery.watched()


async def test_missing_thread_is_dropped(store: SqliteStore) -> None:
    """A thread that answers 404 is no longer watched."""
    source, tracker = FakeSource(), Tracker()
    source.fail_with = NotFound("no thread", status_code=404)
    discovery = _discovery(source, store, tracker, threads=["thread_gone"])
    await discovery.run_once()
    assert discovery.watched() == []


async def test_a_wrong_base_url_never_drops_a_configured_thread(store: SqliteStore) -> None:
    """A 404 for a route the server does not serve says the base URL is wrong, not that the thread is gone: the
    thread stays watched and the API state says what happened."""
    source, tracker = FakeSource(), Tracker()
    source.fail_with = UnknownRoute("list_runs: HTTP 404: Invalid URL", request="GET /threads/thread_a/runs",
                                    evidence="Invalid URL", status_code=404)  # fmt: skip
    discovery = _discovery(source, store, tracker, threads=["thread_a"])
    await discovery.run_once()
    assert discovery.watched() == ["thread_a"]
    assert tracker.states == ["unavailable"]  # with the reason kept for /v1/status


async def test_an_unreadable_listing_is_the_threads_trouble_said_once(
    store: SqliteStore, caplog: pytest.LogCaptureFixture
) -> None:
    """A 200 whose body cannot be read is logged once for its thread and leaves the API's state alone, so one odd
    thread does not make the whole API flap between unavailable and recovered."""
    source, tracker = FakeSource(), Tracker()
    discovery = _discovery(source, store, tracker, threads=["thread_a"])
    with caplog.at_level(logging.WARNING, logger="stepscope.discovery"):
        for _ in range(3):
            source.fail_with = Unavailable("list_runs: HTTP 200: unreadable JSON body", status_code=200)
            await discovery.run_once()
    assert tracker.states == []
    assert len([r for r in caplog.records if "cannot be read" in r.getMessage()]) == 1
    assert discovery.watched() == ["thread_a"]


def test_shards_partition_threads(store: SqliteStore) -> None:
    """Every thread belongs to exactly one of N shards, the same on every call."""
    threads = [f"thread_{i:04d}" for i in range(600)]
    owners = []
    for thread in threads:
        owning = [
            i for i in range(3) if _discovery(FakeSource(), store, Tracker(), shard_index=i, shard_count=3).owns(thread)
        ]
        owners.append(owning)
    assert all(len(o) == 1 for o in owners)
    counts = [sum(1 for o in owners if o == [i]) for i in range(3)]
    assert min(counts) > 150  # roughly even
    assert shard_of("thread_0001", 3) == 1  # the same on every replica, restart and Python process


async def test_registration_for_another_shard_is_refused(store: SqliteStore) -> None:
    """watch() refuses a thread that another shard owns, so two replicas never export the same run."""
    thread = next(f"thread_{i}" for i in range(100) if shard_of(f"thread_{i}", 2) == 1)
    discovery = _discovery(FakeSource(), store, Tracker(), shard_index=0, shard_count=2)
    assert not await discovery.watch(thread, None)
    assert discovery.watched() == []


async def test_api_state_is_reported(store: SqliteStore) -> None:
    """Discovery reports a 401 and a later success to the API health, so /v1/status shows auth failures with no runs."""
    source, tracker = FakeSource(), Tracker()
    source.fail_with = AuthError("bad key", status_code=401)
    discovery = _discovery(source, store, tracker, threads=["thread_a"])
    await discovery.run_once()
    await discovery.run_once()
    assert tracker.states == ["auth_failed", "ok"]


async def test_threads_with_a_tracked_active_run_are_not_listed(store: SqliteStore) -> None:
    """A thread whose run is still tracked cannot have a newer run, so discovery does not spend a request on it."""
    source, tracker = FakeSource(), Tracker()
    tracker.busy = {"thread_a"}
    await _discovery(source, store, tracker, threads=["thread_a", "thread_b"]).run_once()
    assert source.calls == ["list_runs thread_b"]


class SlowSource(FakeSource):
    """Counts how many run listings are in flight at once."""

    def __init__(self) -> None:
        super().__init__()
        self.in_flight = 0
        self.most = 0

    async def list_runs(self, thread_id: str, *, limit: int = 20) -> AsyncIterator[Run]:
        self.in_flight += 1
        self.most = max(self.most, self.in_flight)
        await asyncio.sleep(0.01)
        self.in_flight -= 1
        no_runs: list[Run] = []
        for run in no_runs:  # the shape of an async generator
            yield run


async def test_threads_are_listed_a_few_at_a_time(store: SqliteStore) -> None:
    """A pass over many threads keeps DISCOVERY_CONCURRENCY listings in flight, never more."""
    source = SlowSource()
    threads = [f"thread_{i}" for i in range(30)]
    await _discovery(source, store, Tracker(), threads=threads).run_once()
    assert source.most == DISCOVERY_CONCURRENCY


# --- bounded under a flood of registrations -------------------------------------------------------------------


class Clocks:
    """Wall and monotonic time moved together by hand."""

    def __init__(self) -> None:
        self.wall = NOW
        self.mono = 0.0

    def advance(self, seconds: float) -> None:
        self.wall += seconds
        self.mono += seconds


class KnownThreads(FakeSource):
    """Answers 404 for a thread it does not hold, like the API; records when each thread was listed."""

    def __init__(self, threads: set[str], clocks: Clocks) -> None:
        super().__init__()
        self.threads = threads
        self.clocks = clocks
        self.listed: list[tuple[float, str]] = []

    async def list_runs(self, thread_id: str, *, limit: int = 20) -> AsyncIterator[Run]:
        self.listed.append((self.clocks.mono, thread_id))
        if thread_id not in self.threads:
            raise NotFound("No thread found", status_code=404, thread_id=thread_id)
        async for run in super().list_runs(thread_id, limit=limit):
            yield run

    async def get_run(self, ref: UnitRef) -> Run:
        if ref.unit_id not in self.runs:
            self.calls.append(f"get_run {ref.unit_id}")
            raise NotFound("No run found", status_code=404, run_id=ref.unit_id)
        return await super().get_run(ref)

    async def list_steps(self, ref: UnitRef, *, after: str | None = None, limit: int = 100) -> AsyncIterator[RunStep]:
        if ref.unit_id not in self.runs:
            self.calls.append(f"list_steps {ref.unit_id}")
            raise NotFound("No run found", status_code=404, run_id=ref.unit_id)
        async for step in super().list_steps(ref, after=after, limit=limit):
            yield step


def _bounded(
    source: FakeSource, store: SqliteStore, tracker: Tracker, clocks: Clocks, drops: Counters, **kw: object
) -> Discovery:
    return make_discovery(
        Discovery, source, store, tracker, lookback_s=3600, interval_s=2.0, wall=lambda: clocks.wall,
        monotonic=lambda: clocks.mono, drops=drops, **kw,  # type: ignore[arg-type]
    )  # fmt: skip


async def test_registered_threads_that_answer_404_are_dropped_counted_and_logged_once(
    store: SqliteStore, caplog: pytest.LogCaptureFixture
) -> None:
    """50 registered bogus threads are unwatched after their first 404, counted as not_found, in one log line."""
    clocks, drops = Clocks(), Counters()
    source = KnownThreads({"thread_real"}, clocks)
    discovery = _bounded(source, store, Tracker(), clocks, drops)
    for i in range(50):
        assert await discovery.watch(f"thread_bogus{i}", None)
    assert await discovery.watch("thread_real", None)
    caplog.set_level(logging.INFO, logger="stepscope.discovery")
    await discovery.run_once()
    assert store.watched() == [("thread_real", None)]
    assert discovery.registered_count == 1
    assert drops.counts == {"not_found": 50}
    lines = [r.getMessage() for r in caplog.records if r.name == "stepscope.discovery"]
    assert len(lines) == 1 and "50 not found" in lines[0]
    clocks.advance(1.0)
    source.listed.clear()
    await discovery.run_once()
    assert [t for _, t in source.listed] == []  # the real thread is empty and backed off; the bogus ones are gone


async def test_registered_thread_without_runs_expires_after_the_lookback(store: SqliteStore) -> None:
    """A registered thread that stays without a run for the lookback window is dropped and counted watch_expired;
    a configured one and one with a recent run are kept."""
    clocks, drops = Clocks(), Counters()
    source = KnownThreads({"thread_empty", "thread_busy", "thread_conf"}, clocks)
    discovery = _bounded(source, store, Tracker(), clocks, drops, threads=["thread_conf"])
    await discovery.watch("thread_empty", None)
    await discovery.watch("thread_busy", None)
    for _ in range(3700 // 10):
        # A run every ten seconds keeps thread_busy active throughout.
        source.put_run(
            make_run(
                id=f"run_{clocks.mono:.0f}", thread_id="thread_busy", created_at=int(clocks.wall), status="in_progress"
            )
        )
        await discovery.run_once()
        clocks.advance(10.0)
    assert store.watched() == [("thread_busy", None)]
    assert drops.counts == {"watch_expired": 1}
    assert set(discovery.watched()) == {"thread_conf", "thread_busy"}


async def test_empty_registered_thread_is_listed_less_and_less_often(store: SqliteStore) -> None:
    """An empty registered thread is re-listed after 2, 4, 8 ... s, capped at EMPTY_BACKOFF_MAX_S, while a
    configured one is listed every pass."""
    clocks, drops = Clocks(), Counters()
    source = KnownThreads({"thread_reg", "thread_conf"}, clocks)
    discovery = _bounded(source, store, Tracker(), clocks, drops, threads=["thread_conf"])
    await discovery.watch("thread_reg", None)
    for _ in range(300):
        await discovery.run_once()
        clocks.advance(1.0)
    registered = [t for t, thread in source.listed if thread == "thread_reg"]
    assert registered == [0, 2, 6, 14, 30, 62, 122, 182, 242]
    assert EMPTY_BACKOFF_MAX_S == 60.0
    assert len([t for t, thread in source.listed if thread == "thread_conf"]) == 300


async def test_a_pass_lists_at_most_its_budget_round_robin(store: SqliteStore) -> None:
    """With 1,000 registered threads a pass lists at most DISCOVERY_BUDGET of them, round-robin so every thread gets
    its turn, while a configured thread is listed every pass and its new run found on the next one."""
    clocks, drops = Clocks(), Counters()
    registered = {f"thread_r{i:04d}" for i in range(1000)}
    source = KnownThreads({*registered, "thread_conf"}, clocks)
    tracker = Tracker()
    discovery = _bounded(source, store, tracker, clocks, drops, threads=["thread_conf"])
    for thread in sorted(registered):
        await discovery.watch(thread, None)
    per_pass: list[int] = []
    found_in: int | None = None
    for n in range(40):
        if n == 1:
            source.put_run(
                make_run(id="run_new", thread_id="thread_conf", created_at=int(clocks.wall), status="in_progress")
            )
        before = len(source.listed)
        await discovery.run_once()
        per_pass.append(len(source.listed) - before)
        if found_in is None and any(r.unit_id == "run_new" for r in tracker.refs):
            found_in = n
        clocks.advance(2.0)
    assert max(per_pass) == DISCOVERY_BUDGET
    assert found_in == 1
    assert sum(t == "thread_conf" for _, t in source.listed) == 40
    assert {t for _, t in source.listed} == {*registered, "thread_conf"}  # nobody starved


async def test_steady_request_rate_with_the_maximum_registered_is_bounded(store: SqliteStore) -> None:
    """1,000 registered empty threads cost about 1,000 / 60 listings per second once backed off, not one per thread
    per pass (the unbounded version listed all 1,000 every 2 s: 500/s)."""
    clocks, drops = Clocks(), Counters()
    registered = {f"thread_r{i:04d}" for i in range(1000)}
    source = KnownThreads(registered, clocks)
    discovery = _bounded(source, store, Tracker(), clocks, drops)
    for thread in sorted(registered):
        await discovery.watch(thread, None)
    for _ in range(300):  # 10 minutes of passes every 2 s; every thread is at the slowest pace after 5
        await discovery.run_once()
        clocks.advance(2.0)
    late = [t for t, _ in source.listed if t >= 300.0]
    rate = len(late) / (600.0 - 300.0)
    assert rate <= 1000 / EMPTY_BACKOFF_MAX_S * 1.05
    assert drops.counts == {}  # lookback 1 h: none expired yet


async def test_registration_limit_counts_threads_and_runs(store: SqliteStore) -> None:
    """watch() refuses a new registration past max_registered (counted watch_limit), accepts a repeat, and frees a
    slot on unwatch."""
    clocks, drops = Clocks(), Counters()
    discovery = _bounded(FakeSource(), store, Tracker(), clocks, drops, max_registered=3)
    assert await discovery.watch("thread_a", None)
    assert await discovery.watch("thread_a", "run_1")
    assert await discovery.watch("thread_b", None)
    with pytest.raises(RegistrationFull):
        await discovery.watch("thread_c", None)
    assert await discovery.watch("thread_a", "run_1")
    assert drops.counts == {"watch_limit": 1}
    await discovery.unwatch("thread_b", None)
    assert await discovery.watch("thread_c", None)
    assert discovery.registered_count == 3


async def test_a_bogus_registered_run_is_forgotten_after_its_first_404(store: SqliteStore) -> None:
    """A registered run the API does not know is polled once, answers 404, and the poller drops it and its
    registration; discovery's count follows on its next pass."""
    clocks, drops = Clocks(), Counters()
    source = KnownThreads({"thread_a"}, clocks)
    health = Counters()
    poller = make_poller(source, store, RecordingCommits(), health, schedule=PollSchedule(fast=0.01, slow=0.03))
    discovery = _bounded(source, store, poller, clocks, drops)  # type: ignore[arg-type]
    await poller.start()
    try:
        assert await discovery.watch("thread_a", "run_bogus")
        assert poller.is_tracked("run_bogus")
        await eventually(lambda: not poller.is_tracked("run_bogus"), what="the bogus run to be dropped")
    finally:
        await poller.stop(1.0)
    assert health.counts == {"not_found": 1}
    assert store.watched() == []
    await discovery.run_once()
    assert discovery.registered_count == 0
    assert len([c for c in source.calls if "run_bogus" in c]) == 1
