"""A second protocol, defined only here, runs through the real poller, pipeline, store and span delivery.

The toy protocol has *jobs* made of *tasks*. It plugs in the way any protocol does: a `UnitReader` (polls one
job, commits tasks as they finish, finishes the job) and a `Mapper` (a task or a finished job to telemetry). Nothing
outside this file knows it exists, which is the point: the seam is protocol-neutral.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from opentelemetry.sdk.resources import Resource

from stepscope.core.asyncstore import AsyncStore
from stepscope.core.health import ApiHealth
from stepscope.core.pipeline import Pipeline
from stepscope.core.poller import Poller
from stepscope.core.records import Commit, Committer, Observation, SpanSpec, Telemetry, UnitRef
from stepscope.core.store import SqliteStore
from stepscope.export.delivery import SpanDelivery
from stepscope.testing import RecordingMetricSink, RecordingSpanExporter, eventually
from tests.kit.fakes import Counters

pytestmark = pytest.mark.anyio
S = 1_000_000_000


@dataclass(frozen=True)
class Task:
    id: str
    started: int
    ended: int | None = None


@dataclass
class Job:
    id: str
    queue: str
    tasks: list[Task] = field(default_factory=list)
    done: bool = False


@dataclass
class JobState:
    ref: UnitRef
    cursor: str | None
    committed: set[str]


class ToyApi:
    """The toy server: jobs by id, tasks in creation order. Counts reads."""

    def __init__(self) -> None:
        self.jobs: dict[str, Job] = {}
        self.reads = 0

    def tasks_after(self, job_id: str, cursor: str | None) -> list[Task]:
        self.reads += 1
        tasks = self.jobs[job_id].tasks
        ids = [t.id for t in tasks]
        return tasks[ids.index(cursor) + 1 :] if cursor in ids else list(tasks)


class ToyReader:
    """`UnitReader[JobState]`: commit finished tasks in order, then the job once it is done."""

    def __init__(self, api: ToyApi, committer: Committer[Job, Task, None]) -> None:
        self._api = api
        self._committer = committer

    def begin(self, ref: UnitRef, cursor: str | None, committed: set[str]) -> JobState:
        return JobState(ref, cursor, set(committed))

    def status(self, state: JobState) -> str:
        return "done" if self._api.jobs[state.ref.unit_id].done else "running"

    def busy(self, state: JobState) -> bool:
        return not self._api.jobs[state.ref.unit_id].done

    async def poll(self, state: JobState) -> float | None:
        job = self._api.jobs[state.ref.unit_id]
        finished: list[Task] = []
        for task in self._api.tasks_after(job.id, state.cursor):
            if task.ended is None:
                break
            if task.id not in state.committed:
                finished.append(task)
        if finished:
            commit: Commit[Job, Task, None] = Commit(
                state.ref, job, finished, [t.id for t in finished], cursor=finished[-1].id
            )
            if not await self._committer.commit(commit):
                return 0.01
            state.cursor = finished[-1].id
            state.committed.update(t.id for t in finished)
        if not job.done:
            return 0.01
        return None if await self._committer.commit(Commit(state.ref, job, finished=True)) else 0.01


class ToyMapper:
    """`Mapper[Job, Task, None]`: a span per task under a span per job, one counter increment per task."""

    def record(self, unit: Job, record: Task) -> Telemetry:
        assert record.ended is not None
        spec = SpanSpec(f"task:{record.id}", f"task {record.id}", "internal", _id(unit.id, 128), _id(record.id, 64),
                        _id(unit.id, 64), record.started * S, record.ended * S, {"toy.queue": unit.queue})  # fmt: skip
        return Telemetry([spec], [Observation("toy_tasks_total", {"queue": unit.queue}, 1.0)])

    def finish(self, unit: Job, finish: None) -> Telemetry:
        start = min(t.started for t in unit.tasks)
        end = max(t.ended or t.started for t in unit.tasks)
        spec = SpanSpec(f"job:{unit.id}", f"job {unit.id}", "client", _id(unit.id, 128), _id(unit.id, 64), None,
                        start * S, end * S, {"toy.queue": unit.queue})  # fmt: skip
        return Telemetry([spec], [Observation("toy_jobs_total", {"queue": unit.queue}, 1.0)])


def _id(text: str, bits: int) -> int:
    return (int.from_bytes(text.encode().ljust(16, b"\0")[:16], "big") % ((1 << bits) - 1)) + 1


@dataclass
class Rig:
    api: ToyApi
    store: SqliteStore
    metrics: RecordingMetricSink
    exporter: RecordingSpanExporter
    delivery: SpanDelivery
    poller: Poller[JobState]


@pytest.fixture
def api() -> ToyApi:
    toy = ToyApi()
    toy.jobs["job_1"] = Job("job_1", "fast", [Task("t1", 100, 101), Task("t2", 101, None)])
    return toy


@pytest.fixture
def exporter() -> RecordingSpanExporter:
    return RecordingSpanExporter()


@pytest.fixture
def store_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("toy") / "state.db")


def make_rig(api: ToyApi, store_path: str, exporter: RecordingSpanExporter) -> Rig:
    store = SqliteStore(store_path)
    store.open()
    metrics, health = RecordingMetricSink(), Counters()
    delivery = SpanDelivery(store, exporter, resource=Resource.create({}), health=health, delay_s=0.01)
    pipeline: Pipeline[Job, Task, None] = Pipeline(
        AsyncStore(store), ToyMapper(), metrics, health, on_spans=delivery.notify
    )
    poller = Poller(ToyReader(api, pipeline), AsyncStore(store), health, ApiHealth("toy API"), slow=0.02)
    return Rig(api, store, metrics, exporter, delivery, poller)


@pytest.fixture
def rigs() -> Iterator[list[Rig]]:
    made: list[Rig] = []
    yield made
    for rig in made:
        rig.delivery.shutdown(1.0)
        rig.store.close()


async def test_toy_jobs_become_spans_and_counts(
    api: ToyApi, store_path: str, exporter: RecordingSpanExporter, rigs: list[Rig]
) -> None:
    """A toy job's finished tasks are counted and delivered as they finish, then the job span, each once."""
    rig = make_rig(api, store_path, exporter)
    rigs.append(rig)
    rig.delivery.begin()
    await rig.poller.start()
    try:
        assert rig.poller.track(UnitRef("queue_fast", "job_1"))
        await eventually(lambda: exporter.names() == ["task t1"])
        assert rig.metrics.total("toy_tasks_total") == 1
        api.jobs["job_1"].tasks[1] = Task("t2", 101, 103)
        api.jobs["job_1"].done = True
        await eventually(lambda: not rig.poller.is_tracked("job_1"))
        await eventually(lambda: len(exporter.spans) == 3)
    finally:
        await rig.poller.stop(1.0)
    assert exporter.names() == ["task t1", "task t2", "job job_1"]
    job = exporter.spans[-1]
    assert job.context is not None
    assert (job.start_time, job.end_time) == (100 * S, 103 * S)
    assert all(span.context is not None and span.context.trace_id == job.context.trace_id for span in exporter.spans)
    assert rig.metrics.total("toy_tasks_total") == 2
    assert rig.metrics.total("toy_jobs_total", queue="fast") == 1
    assert rig.store.known_runs(["job_1"]) == {"job_1"}
    assert rig.store.active_runs() == []


async def test_toy_progress_survives_a_restart(
    api: ToyApi, store_path: str, exporter: RecordingSpanExporter, rigs: list[Rig]
) -> None:
    """A second process on the same store resumes the job after its committed task and never recounts it."""
    first = make_rig(api, store_path, exporter)
    rigs.append(first)
    await first.poller.start()
    first.poller.track(UnitRef("queue_fast", "job_1"))
    await eventually(lambda: first.metrics.total("toy_tasks_total") == 1)
    await first.poller.stop(1.0)
    first.store.close()

    api.jobs["job_1"].tasks[1] = Task("t2", 101, 102)
    api.jobs["job_1"].done = True
    second = make_rig(api, store_path, exporter)
    rigs.append(second)
    second.poller.resume(second.store.active_runs())
    second.delivery.begin()
    await second.poller.start()
    try:
        await eventually(lambda: not second.poller.is_tracked("job_1"))
        started = time.monotonic()
        await eventually(lambda: len(exporter.spans) == 3)
    finally:
        await second.poller.stop(1.0)
    assert time.monotonic() - started < 5
    assert second.metrics.total("toy_tasks_total") == 1  # t2 only: t1 was committed by the first process
    assert sorted(exporter.names()) == ["job job_1", "task t1", "task t2"]
