"""Discovery on the Azure flavour with no thread configured: the project's threads are listed, then their runs."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from stepscope.client.auth import ApiKeyAuth
from stepscope.core.store import SqliteStore
from stepscope.errors import Unavailable
from stepscope.protocols.assistants.client import AssistantsClient
from stepscope.protocols.assistants.discovery import Discovery
from stepscope.protocols.assistants.threads import ThreadInfo, ThreadLister
from stepscope.simulator import ManualClock, Simulator, SimulatorServer, scenario_named
from tests.kit.fakes import RecordingTracker as Tracker
from tests.kit.fakes import make_discovery

pytestmark = pytest.mark.anyio
KEY = "az-key"


@dataclass
class Counter:
    requests: list[str] = field(default_factory=list)
    invalid: list[object] = field(default_factory=list)

    def observe_request(self, endpoint: str, code: str, seconds: float) -> None:
        self.requests.append(endpoint)

    def observe_invalid(self, error: object) -> None:
        self.invalid.append(error)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def server(clock: ManualClock) -> Iterator[SimulatorServer]:
    scenario = scenario_named("lively", threads=30, runs_per_second=0.2)
    with SimulatorServer(Simulator(scenario, flavor="azure", api_key=KEY, clock=clock, seed=3)) as srv:
        yield srv


@pytest.fixture
def store() -> Iterator[SqliteStore]:
    s = SqliteStore(":memory:")
    s.open()
    yield s
    s.close()


def _discovery(
    http: httpx.AsyncClient, url: str, store: SqliteStore, tracker: Tracker, clock: ManualClock, **kw: object
) -> tuple[Discovery, Counter]:
    auth = ApiKeyAuth(KEY)
    counter = Counter()
    source = AssistantsClient(http, base_url=url, auth=auth, api_version="v1", flavor="azure", observer=counter)
    lister = ThreadLister(http, base_url=url, auth=auth, api_version="v1", observer=counter)
    discovery = make_discovery(Discovery, source, store, tracker, thread_source=lister, wall=clock.now, health=tracker,
                               **kw)  # type: ignore[arg-type]  # fmt: skip
    return discovery, counter


def _truth(server: SimulatorServer) -> dict[str, Any]:
    """The simulator's truth, read over HTTP: its state belongs to the server's thread."""
    truth: dict[str, Any] = httpx.get(server.root_url + "/_sim/truth", timeout=10).json()
    return truth


def _runs(server: SimulatorServer) -> set[str]:
    return {run["id"] for run in _truth(server)["runs"]}


async def test_every_run_is_found_without_a_configured_thread(
    server: SimulatorServer, store: SqliteStore, clock: ManualClock
) -> None:
    """Every run of the Azure simulator is tracked after one pass, and runs on threads created later after the
    next one, whose thread listing is a single request."""
    tracker = Tracker()
    clock.advance(120)
    async with httpx.AsyncClient() as http:
        discovery, counter = _discovery(http, server.url, store, tracker, clock, lookback_s=3600, interval_s=1)
        await discovery.run_once()
        assert _runs(server) and {r.unit_id for r in tracker.refs} == _runs(server)
        api = {"api-key": KEY, "OpenAI-Beta": "assistants=v2"}
        assistant = _truth(server)["assistants"][0]["id"]
        for _ in range(3):  # new threads, each with a run: newer than every listed thread
            resp = await http.post(server.url + "/threads/runs", params={"api-version": "v1"}, headers=api,
                                   json={"assistant_id": assistant})  # fmt: skip
            assert resp.status_code == 200
        clock.advance(60)
        counter.requests.clear()
        await discovery.run_once()
    assert {r.unit_id for r in tracker.refs} == _runs(server)
    assert len(tracker.refs) == len(_runs(server))  # each run tracked once
    assert counter.requests.count("list_threads") == 1


async def test_threads_behind_the_lookback_are_not_listed(
    server: SimulatorServer, store: SqliteStore, clock: ManualClock
) -> None:
    """With the workload's threads older than the lookback, only the run on a newly created thread is found."""
    clock.advance(2 * 3600)
    tracker = Tracker()
    async with httpx.AsyncClient() as http:
        api = {"api-key": KEY, "OpenAI-Beta": "assistants=v2"}
        assistant = _truth(server)["assistants"][0]["id"]
        resp = await http.post(server.url + "/threads/runs", params={"api-version": "v1"}, headers=api,
                               json={"assistant_id": assistant})  # fmt: skip
        discovery, _ = _discovery(http, server.url, store, tracker, clock, lookback_s=3600)
        await discovery.run_once()
    assert [r.unit_id for r in tracker.refs] == [resp.json()["id"]]


class _FlakyLister:
    """Lists threads newest first; fails part-way through the first listing."""

    def __init__(self, threads: list[ThreadInfo]) -> None:
        self.threads = threads
        self.calls = 0

    async def list_threads(self) -> AsyncIterator[ThreadInfo]:
        self.calls += 1
        for i, thread in enumerate(self.threads):
            if self.calls == 1 and i == 2:
                raise Unavailable("list_threads: HTTP 503", status_code=503)
            yield thread


class _NoRuns:
    """A StepSource whose threads have no runs (only list_runs is used by discovery)."""

    async def list_runs(self, thread_id: str, *, limit: int = 20) -> AsyncIterator[object]:
        return
        yield


async def test_a_listing_that_fails_part_way_is_retried_whole(store: SqliteStore) -> None:
    """A failing listing adds no thread and reports the API state; the next lists every thread in the lookback."""
    now = 100_000.0
    threads = [ThreadInfo(f"thread_{i}", int(now) - 10 * i) for i in range(5)] + [ThreadInfo("thread_old", 1)]
    lister, tracker = _FlakyLister(threads), Tracker()
    discovery = make_discovery(Discovery, _NoRuns(), store, tracker, thread_source=lister, wall=lambda: now,
                               health=tracker, lookback_s=3600)  # fmt: skip
    await discovery.run_once()
    assert discovery.watched() == [] and tracker.states == ["unavailable"]
    await discovery.run_once()
    assert discovery.watched() == [f"thread_{i}" for i in range(5)]


async def test_the_lister_skips_bad_threads_and_never_retries() -> None:
    """Invalid threads are counted and skipped, the cursor follows the raw last id, and a 503 is raised unretried."""
    pages = [
        {"data": [{"id": "thread_a", "created_at": 5}, {"id": "thread_b"}], "has_more": True},
        {"data": [{"id": "thread_c", "created_at": 3}], "has_more": True},
    ]
    seen: list[str | None] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.params.get("after"))
        if len(seen) > len(pages):
            return httpx.Response(503)
        return httpx.Response(200, json=pages[len(seen) - 1])

    counter = Counter()
    got: list[str] = []

    async def read_all(lister: ThreadLister) -> None:
        async for thread in lister.list_threads():
            got.append(thread.id)

    async with httpx.AsyncClient(transport=httpx.MockTransport(answer)) as http:
        lister = ThreadLister(http, base_url="https://api.test/v1", auth=ApiKeyAuth(KEY), observer=counter)
        with pytest.raises(Unavailable, match="list_threads: HTTP 503"):
            await read_all(lister)
    assert got == ["thread_a", "thread_c"]
    assert seen == [None, "thread_b", "thread_c"]  # the 503 was not retried
    assert len(counter.invalid) == 1
