"""AgentsClient against the simulated Agents API over real HTTP: paging past 100 turns and across an id-less item,
every item kind, subagent turns and published traces, mapped to telemetry equal to the simulator's truth and
relayed through a real OTLP receiver with the published ids."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from stepscope.client import BearerAuth
from stepscope.errors import InvalidObject
from stepscope.export.relay import otlp_json_to_protobuf
from stepscope.mapping.attributes import MappingOptions
from stepscope.protocols.agents import AgentsClient, Item, Turn
from stepscope.protocols.agents.mapping import (
    TurnContext,
    subagent_opener,
    turn_links,
    turn_observations,
    turn_span,
    turn_span_id,
)
from stepscope.simulator import ManualClock, Simulator, SimulatorServer, scenario_named
from stepscope.simulator.agents import TurnKnobs
from stepscope.testing import OtlpReceiver
from tests.kit.agents import EVERY_KIND, finished_session


class Invalid:
    def __init__(self) -> None:
        self.invalid: list[InvalidObject] = []

    def observe_request(self, endpoint: str, code: str, seconds: float) -> None:
        return

    def observe_invalid(self, error: InvalidObject) -> None:
        self.invalid.append(error)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def sim(clock: ManualClock) -> Simulator:
    return Simulator(scenario_named("quiet"), clock=clock, seed=5, protocol="agents")


@pytest.fixture
def server(sim: Simulator) -> Iterator[SimulatorServer]:
    with SimulatorServer(sim) as running:
        yield running


@pytest.fixture
async def client(server: SimulatorServer) -> AsyncIterator[tuple[AgentsClient, Invalid]]:
    observer = Invalid()
    async with httpx.AsyncClient(timeout=10) as http:
        yield AgentsClient(http, base_url=server.url, auth=BearerAuth("sk-sim"), observer=observer), observer


async def _all(iterator: AsyncIterator[Any]) -> list[Any]:
    return [x async for x in iterator]


@pytest.mark.anyio
async def test_pages_past_100_turns_and_across_an_id_less_item(
    sim: Simulator, clock: ManualClock, client: tuple[AgentsClient, Invalid]
) -> None:
    """130 turns arrive once each in order, and a long turn's items page on last_id past the id-less message."""
    knobs = TurnKnobs(kinds=("mcp_call", "web_search_call") * 15, seconds=0.05, outcome="completed",
                      legacy_user_message=True)  # fmt: skip
    session = finished_session(sim, clock, 130, knobs)
    agents, observer = client
    listed = await _all(agents.list_sessions())
    assert session.id in [s.id for s in listed]
    turns = await _all(agents.list_turns(session.id))
    assert [t.id for t in turns] == [t.id for t in session.turns]
    assert all(t.is_terminal and t.usage is not None for t in turns)
    last = session.turns[-1]
    items = await _all(agents.list_turn_items(session.id, last.id, limit=7))
    assert [i.id for i in items] == [i.id for i in last.items]
    assert len(items) > 60 and items[0].id is None
    assert observer.invalid == []


@pytest.mark.anyio
async def test_every_item_kind_maps_to_the_simulator_truth_and_relays(
    sim: Simulator, clock: ManualClock, client: tuple[AgentsClient, Invalid]
) -> None:
    """Turns with every item kind and subagents map to one span per turn with exact times and to counters equal to
    the simulator's truth; the published traces relay to a real OTLP receiver with their own ids."""
    session = finished_session(sim, clock, 3, TurnKnobs(kinds=EVERY_KIND, seconds=0.5, outcome="completed"))
    agents, observer = client
    got_session = await agents.get_session(session.id)
    turns = await _all(agents.list_turns(session.id))
    items: dict[str, list[Item]] = {t.id: await _all(agents.list_turn_items(session.id, t.id)) for t in turns}
    traces = {t.id: t for t in await _all(agents.list_traces(session.id))}
    sub_turns: list[Turn] = []
    for sub in await _all(agents.list_subagents(session.id)):
        sub_turns += await _all(agents.list_subagent_turns(session.id, sub.id))
    assert observer.invalid == []
    truth = sim.truth()["agents"]
    stats = truth["stats"]
    served = {t["id"]: t for s in truth["sessions"] if s["id"] == session.id for t in s["turns"]}

    options = MappingOptions()
    observations = []
    root_items = [item for turn_items in items.values() for item in turn_items]
    for turn in turns:
        ctx = TurnContext(model=got_session.model, items=items[turn.id], published=traces.get(turn.id))
        span = turn_span(turn, ctx, options=options)
        assert (span.start_ns, span.end_ns) == (
            served[turn.id]["created_at"] * 10**9,
            served[turn.id]["completed_at"] * 10**9,
        )
        published = stats["traces"][turn.id]
        assert turn_links(turn, ctx)[0] == (int(published["trace_id"], 16), int(published["span_ids"][0], 16))
        observations += turn_observations(turn, ctx)
    assert sub_turns and all(t.subagent_id for t in sub_turns)
    for sub_turn in sub_turns:
        opener = subagent_opener(sub_turn, root_items)
        assert opener in items  # each simulated subagent is waited for by the one root turn that created it
        links = turn_links(sub_turn, TurnContext(opened_by=opener))
        assert links[-1][1] == turn_span_id(opener)

    tokens: Counter[str] = Counter()
    steps: dict[str, Counter[str]] = {}
    tools: Counter[str] = Counter()
    for o in observations:
        if o.metric == "stepscope_tokens_total":
            tokens[o.labels["token_type"]] += int(o.value)
        elif o.metric == "stepscope_run_steps_total":
            status = "none" if o.labels["status"] == "_unknown" else o.labels["status"]  # the truth's word for null
            steps.setdefault(o.labels["step_type"], Counter())[status] += 1
        elif o.metric == "stepscope_tool_calls_total":
            tools[o.labels["tool_name"]] += 1
    usage = stats["usage"]["root"]
    want = {"input": "input_tokens", "output": "output_tokens", "cache_read": "cached_tokens",
            "reasoning": "reasoning_tokens"}  # fmt: skip
    assert tokens == +Counter({token_type: usage[key] for token_type, key in want.items()})
    assert {k: dict(v) for k, v in steps.items()} == stats["items"]["root"]
    expected_tools: Counter[str] = Counter()
    for names in stats["tool_calls"]["root"].values():
        expected_tools.update(names)
    assert tools == expected_tools
    assert sum(1 for o in observations if o.metric == "stepscope_runs_total") == len(turns)

    with OtlpReceiver() as receiver:
        async with httpx.AsyncClient() as http:
            for trace in traces.values():
                data = otlp_json_to_protobuf(trace.otlp)
                answer = await http.post(receiver.url, content=data, headers={"Content-Type": "application/x-protobuf"})
                assert answer.status_code == 200
        received = Counter(span.span_id for span in receiver.spans)
    expected = Counter(sid for tid in traces for sid in stats["traces"][tid]["span_ids"])
    assert received == expected
