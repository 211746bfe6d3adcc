"""A protocol defined only here runs through the real poller, pipeline, store, span delivery and proxy.

The toy protocol has *jobs* made of *tasks*. It plugs in the way any protocol does: a `UnitReader` (polls one
job, commits tasks as they finish, finishes the job), a `Mapper` (a task or a finished job to telemetry), and, for
the whole sidecar, a `ProtocolFactory` registered by name whose finders include a proxy observer (a `POST /jobs`
answer names the job to track). Nothing outside this file knows it exists, which is the point: the seams are
protocol-neutral.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.sdk.resources import Resource
from prometheus_client import CollectorRegistry

from stepscope import protocols
from stepscope.commands.sidecar import Sidecar
from stepscope.commands.wiring import Seams
from stepscope.config import Config, load
from stepscope.core.asyncstore import AsyncStore
from stepscope.core.discovery import DiscoverySeams, DiscoverySettings, PeriodicDiscovery
from stepscope.core.health import ApiHealth
from stepscope.core.pipeline import Pipeline
from stepscope.core.poller import Poller, PollSchedule
from stepscope.core.records import Commit, Committer, KnownLabels, Observation, SpanSpec, Telemetry, UnitRef
from stepscope.core.store import SqliteStore
from stepscope.export.delivery import SpanDelivery
from stepscope.protocols.base import AnswerSink, ApiContext, Finders, Route
from stepscope.testing import RecordingMetricSink, RecordingSpanExporter, eventually
from tests.kit.fakes import Counters
from tests.kit.proxy import serve_in_thread

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


# --- the whole sidecar: the toy registered by name, its jobs found through the proxy ---------------------------


class NoDiscovery(PeriodicDiscovery):
    """The toy server lists nothing: jobs are found through the proxy only."""

    name = "toy discovery"

    async def run_once(self) -> int:
        self.last_pass = self._wall()
        return 0

    def watched(self) -> list[str]:
        return []

    def idle_reason(self) -> str | None:
        return None


class JobAnswer:
    """The answer to `POST /jobs`: its JSON body names the job to track."""

    def __init__(self, discovery: NoDiscovery) -> None:
        self._discovery = discovery

    def wants(self, event: str) -> bool:
        return False

    def event(self, event: str, data: Mapping[str, Any] | None) -> None:
        raise AssertionError("a job answer is no stream")

    def body(self, data: object) -> None:
        if isinstance(data, Mapping) and isinstance(data.get("id"), str):
            self._discovery.seams.tracker.track(UnitRef(f"queue_{data['queue']}", data["id"]))

    def ended(self, complete: bool, stream: bool) -> None:
        pass


class JobObserver:
    def __init__(self, discovery: NoDiscovery) -> None:
        self._discovery = discovery

    def route(self, method: str, path: str) -> Route | None:
        return Route("create_job") if (method, path) == ("POST", "/jobs") else None

    def answer(self, route: Route, traceparent: str | None) -> AnswerSink | None:
        return JobAnswer(self._discovery)


class ToyInstance:
    api_name = "toy API"

    def __init__(self, api: ToyApi) -> None:
        self._api = api
        self.mapper = ToyMapper()

    def reader(self, committer: Committer[Any, Any, Any], schedule: PollSchedule) -> ToyReader:
        return ToyReader(self._api, committer)

    def finders(self, settings: DiscoverySettings, seams: DiscoverySeams) -> Finders:
        discovery = NoDiscovery(settings, seams)
        return Finders(discovery=discovery, proxy=JobObserver(discovery))

    async def probe(self) -> None:
        return None

    async def inspect(self, unit_id: str, container_id: str | None) -> Sequence[SpanSpec]:
        return []


@dataclass(frozen=True)
class ToyFactory:
    api: ToyApi
    name: str = "toy"
    nouns: tuple[str, str] = ("job", "task")
    container: str | None = None
    labels: KnownLabels = field(default_factory=lambda: KnownLabels(protocol="toy"))
    endpoints: tuple[str, ...] = ()
    invalid_kinds: tuple[str, ...] = ()
    backfills: bool = False

    def check(self, config: Config) -> list[str]:
        return []

    def open(self, context: ApiContext) -> ToyInstance:
        return ToyInstance(self.api)


async def toy_upstream(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The toy server's HTTP face: `POST /jobs` answers the job it created."""
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    body = json.dumps({"id": "job_2", "queue": "slow"}).encode()
    await send({"type": "http.response.start", "status": 201, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})


async def test_a_registered_toy_runs_in_the_whole_sidecar_found_through_the_proxy(api: ToyApi, tmp_path: Path) -> None:
    """Registered by name, the toy protocol runs in a whole sidecar: a job the application creates through the
    proxy is tracked from the answer, polled, committed and exported, with no code outside this file
    knowing the protocol."""
    api.jobs["job_2"] = Job("job_2", "slow", [Task("t9", 200, 201)], done=True)
    protocols.register(ToyFactory(api))
    upstream, stop_upstream = serve_in_thread(toy_upstream)
    exporter = RecordingSpanExporter()
    env = {
        "STEPSCOPE_PROTOCOL": "toy",
        "OPENAI_BASE_URL": upstream,
        "OPENAI_API_KEY": "sk-toy",
        "STEPSCOPE_LISTEN": "127.0.0.1:0",
        "STEPSCOPE_PROXY_LISTEN": "127.0.0.1:0",
        "STEPSCOPE_STATE": str(tmp_path / "state.db"),
        "STEPSCOPE_POLL_INTERVAL": "0.05",
    }
    service = Sidecar(load(env=env), Seams(registry=CollectorRegistry(), span_exporter=exporter))
    try:
        await service.start()
        assert service.proxy is not None
        async with httpx.AsyncClient() as client:
            answer = await client.post(f"http://127.0.0.1:{service.proxy.port}/jobs", json={"queue": "slow"})
        assert answer.status_code == 201 and answer.json()["id"] == "job_2"
        await eventually(lambda: sorted(exporter.names()) == ["job job_2", "task t9"], what="the toy's spans")
        assert service.parts.store.sync.known_runs(["job_2"]) == {"job_2"}
    finally:
        await service.shutdown()
        stop_upstream()
        protocols.unregister("toy")
