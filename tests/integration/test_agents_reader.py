"""The Agents reader under the real poller and pipeline, against the simulated Agents API over HTTP: every terminal
turn committed once with its items, the published trace relayed, counts equal to the simulator's truth."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from stepscope.client import BearerAuth
from stepscope.core import spancodec
from stepscope.core.asyncstore import AsyncStore
from stepscope.core.health import ApiHealth
from stepscope.core.pipeline import Pipeline
from stepscope.core.poller import Poller, PollSchedule
from stepscope.core.records import RelayedSpan, SpanSpec, UnitRef
from stepscope.core.store import SqliteStore
from stepscope.mapping.attributes import MappingOptions
from stepscope.protocols.agents import AgentsClient, Item, Turn
from stepscope.protocols.agents.mapping import AgentsMapper, TurnContext
from stepscope.protocols.agents.reader import TurnReader, TurnState
from stepscope.simulator import ManualClock, Simulator, SimulatorServer, scenario_named
from stepscope.simulator.agents import TurnKnobs
from stepscope.testing import RecordingMetricSink, eventually
from tests.kit.fakes import Counters

pytestmark = pytest.mark.anyio


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def sim(clock: ManualClock) -> Simulator:
    return Simulator(scenario_named("quiet"), clock=clock, seed=9, protocol="agents")


@pytest.fixture
def server(sim: Simulator) -> Iterator[SimulatorServer]:
    with SimulatorServer(sim) as running:
        yield running


@pytest.fixture
async def client(server: SimulatorServer) -> AsyncIterator[AgentsClient]:
    async with httpx.AsyncClient(timeout=10) as http:
        yield AgentsClient(http, base_url=server.url, auth=BearerAuth("sk-sim"))


async def test_terminal_turns_commit_once_with_items_and_their_published_trace(
    sim: Simulator, clock: ManualClock, client: AgentsClient, server: SimulatorServer
) -> None:
    """Each finished root turn becomes one turn span timed by the server, its items are counted, and the spans of
    the trace the server published for it are kept for relay with their own ids."""
    assert sim.agents is not None
    engine = sim.agents.engine
    session = engine.create_session(clock.now())
    t = clock.now()
    knobs = TurnKnobs(kinds=("function_call", "message", "mcp_call"), outcome="completed")
    for _ in range(3):
        t = engine.create_turn(session, t, knobs=knobs).end + 0.01
    clock.advance(t - clock.now() + 10)

    store = SqliteStore(":memory:")
    store.open()
    metrics, health = RecordingMetricSink(), Counters()
    units = AsyncStore(store)
    pipeline: Pipeline[Turn, Item, TurnContext] = Pipeline(units, AgentsMapper(MappingOptions()), metrics, health)
    reader = TurnReader(client, pipeline, schedule=PollSchedule(fast=0.01, slow=0.05))
    poller: Poller[TurnState] = Poller(reader, units, health, ApiHealth("Agents API"), slow=0.05)
    await poller.start()
    try:
        root_turns = [turn async for turn in client.list_turns(session.id)]
        assert len(root_turns) == 3
        for turn in root_turns:
            assert poller.track(UnitRef(session.id, turn.id))
        await eventually(lambda: poller.tracked_count == 0, 10.0, "every turn committed")
    finally:
        await poller.stop(1.0)

    rows = [spancodec.decode(data) for _, data in store.backlog(10_000)]
    specs = [r for r in rows if isinstance(r, SpanSpec)]
    relayed = [r for r in rows if isinstance(r, RelayedSpan)]
    assert sorted(s.key for s in specs) == sorted(f"turn:{turn.id}" for turn in root_turns)
    for turn in root_turns:
        (spec,) = [s for s in specs if s.key == f"turn:{turn.id}"]
        assert spec.start_ns == turn.created_at * 1_000_000_000
        assert turn.completed_at is not None
        assert spec.end_ns == turn.completed_at * 1_000_000_000
    async with httpx.AsyncClient(timeout=10) as http:
        truth = (await http.get(f"{server.root_url}/_sim/truth")).json()["agents"]
    published = {span for trace in truth["stats"]["traces"].values() for span in trace["span_ids"]}
    assert {r.key.rsplit(":", 1)[1] for r in relayed} == published
    assert len(relayed) == len(published)
    assert metrics.total("stepscope_runs_total") == 3
    items = sum(n for by_status in truth["stats"]["items"]["root"].values() for n in by_status.values())
    assert metrics.total("stepscope_run_steps_total") == items
    assert health.counts == {}
