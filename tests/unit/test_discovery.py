"""Discovery: configured and registered threads, stop at known runs, lookback, sharding."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from stepscope.errors import AuthError, NotFound, SourceError
from stepscope.models import Run, RunRef
from stepscope.source.discovery import DISCOVERY_CONCURRENCY, Discovery, shard_of
from stepscope.store import SqliteStore
from tests.unit._fakes import FakeSource, make_run

pytestmark = pytest.mark.anyio
NOW = 10_000.0


@dataclass
class Tracker:
    refs: list[RunRef] = field(default_factory=list)
    states: list[str] = field(default_factory=list)
    busy: set[str] = field(default_factory=set)

    def track(self, ref: RunRef) -> bool:
        self.refs.append(ref)
        return True

    def is_tracked(self, run_id: str) -> bool:
        return any(r.run_id == run_id for r in self.refs)

    def busy_threads(self) -> set[str]:
        return self.busy

    def api_ok(self) -> None:
        self.states.append("ok")

    def api_failed(self, state: str, exc: SourceError) -> None:
        self.states.append(state)


@pytest.fixture
def store() -> SqliteStore:
    s = SqliteStore(":memory:")
    s.open()
    return s


def _discovery(source: FakeSource, store: SqliteStore, tracker: Tracker, **kw: object) -> Discovery:
    return Discovery(source, store, tracker, lookback_s=3600, wall=lambda: NOW, **kw)  # type: ignore[arg-type]


async def test_new_runs_tracked_oldest_first_until_known(store: SqliteStore) -> None:
    """Runs newer than the newest known run are tracked, oldest first; listing stops at the known one."""
    source, tracker = FakeSource(), Tracker()
    for i in range(5):
        source.put_run(make_run(f"run_{i}", created_at=int(NOW) - 100 + i, status="completed"))
    store.add_run(RunRef("thread_a", "run_2"), NOW)
    found = await _discovery(source, store, tracker, threads=["thread_a"]).run_once()
    assert found == 2
    assert [r.run_id for r in tracker.refs] == ["run_3", "run_4"]


async def test_lookback_bounds_history(store: SqliteStore) -> None:
    """Runs created before the lookback horizon are not backfilled."""
    source, tracker = FakeSource(), Tracker()
    source.put_run(make_run("run_old", created_at=int(NOW) - 7200, status="completed"))
    source.put_run(make_run("run_new", created_at=int(NOW) - 60, status="completed"))
    await _discovery(source, store, tracker, threads=["thread_a"]).run_once()
    assert [r.run_id for r in tracker.refs] == ["run_new"]


async def test_registered_threads_and_runs(store: SqliteStore) -> None:
    """A thread registered through watch() is listed on the next pass; a registered run is tracked at once."""
    source, tracker = FakeSource(), Tracker()
    source.put_run(make_run("run_1", thread_id="thread_b", created_at=int(NOW) - 5))
    discovery = _discovery(source, store, tracker)
    assert discovery.watch("thread_b", None)
    assert discovery.watch("thread_c", "run_9")
    assert tracker.refs == [RunRef("thread_c", "run_9")]
    await discovery.run_once()
    assert RunRef("thread_b", "run_1") in tracker.refs
    discovery.unwatch("thread_b", None)
    assert "thread_b" not in discovery.threads()


async def test_missing_thread_is_dropped(store: SqliteStore) -> None:
    """A thread that answers 404 is no longer watched."""
    source, tracker = FakeSource(), Tracker()
    source.fail_with = NotFound("no thread", status_code=404)
    discovery = _discovery(source, store, tracker, threads=["thread_gone"])
    await discovery.run_once()
    assert discovery.threads() == []


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
    assert shard_of("thread_0001", 3) == shard_of("thread_0001", 3)


async def test_registration_for_another_shard_is_refused(store: SqliteStore) -> None:
    """watch() refuses a thread that another shard owns, so two replicas never export the same run."""
    thread = next(f"thread_{i}" for i in range(100) if shard_of(f"thread_{i}", 2) == 1)
    discovery = _discovery(FakeSource(), store, Tracker(), shard_index=0, shard_count=2)
    assert not discovery.watch(thread, None)
    assert discovery.threads() == []


async def test_api_state_is_reported(store: SqliteStore) -> None:
    """Discovery reports a 401 and a later success to the tracker, so /v1/status shows auth failures with no runs."""
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
        for run in []:  # no runs; the shape of an async generator
            yield run


async def test_threads_are_listed_a_few_at_a_time(store: SqliteStore) -> None:
    """A pass over many threads keeps DISCOVERY_CONCURRENCY listings in flight, never more."""
    source = SlowSource()
    threads = [f"thread_{i}" for i in range(30)]
    await _discovery(source, store, Tracker(), threads=threads).run_once()
    assert source.most == DISCOVERY_CONCURRENCY
