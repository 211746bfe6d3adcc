"""The simulated Agents API in-process: routing, headers, paging, lifecycles, traces, truth and faults."""

from __future__ import annotations

import argparse
from typing import Any

import httpx
import pytest

from stepscope.simulator import FaultConfig, FaultSpec, ManualClock, Simulator, scenario_named
from stepscope.simulator import cli as simulator_cli
from stepscope.simulator.agents import UNKNOWN_ITEM_TYPE, TurnKnobs, WebhookTarget
from tests.kit.agents import EVERY_KIND, finished_session

HEADERS = {"Authorization": "Bearer sk-sim", "OpenAI-Beta": "agents=v1"}


def _sim(scenario: str = "lively", *, protocol: str = "agents", faults: FaultConfig | None = None,
         seconds: float = 90) -> tuple[Simulator, ManualClock]:  # fmt: skip
    clock = ManualClock()
    sim = Simulator(scenario_named(scenario), faults, clock=clock, seed=5, protocol=protocol)
    clock.advance(seconds)
    return sim, clock


def _client(sim: Simulator, headers: dict[str, str] | None = None) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=sim.transport(), base_url="http://sim/v1", headers=headers or HEADERS)


def _agents(sim: Simulator) -> dict[str, Any]:
    truth: dict[str, Any] = sim.truth()["agents"]
    return truth


def _busy_session(sim: Simulator) -> dict[str, Any]:
    """A session with at least two turns, one of them finished."""
    return next(s for s in _agents(sim)["sessions"] if len(s["turns"]) >= 2)


async def _all(client: httpx.AsyncClient, path: str, **params: Any) -> list[dict[str, Any]]:
    """Every object of a list, following `after=last_id`."""
    out: list[dict[str, Any]] = []
    query = dict(params)
    while True:
        resp = await client.get(path, params=query)
        assert resp.status_code == 200, resp.text
        page = resp.json()
        out += page["data"]
        if not page["has_more"]:
            return out
        query["after"] = page["last_id"]


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("headers", "status", "code"),
    [
        ({"OpenAI-Beta": "agents=v1"}, 401, "invalid_api_key"),
        ({"Authorization": "Bearer sk-wrong-key", "OpenAI-Beta": "agents=v1"}, 401, "invalid_api_key"),
        ({"Authorization": "Bearer sk-sim"}, 400, "invalid_beta"),
        ({"Authorization": "Bearer sk-sim", "OpenAI-Beta": "assistants=v2"}, 400, "invalid_beta"),
    ],
)
async def test_agents_endpoints_need_bearer_key_and_agents_beta_header(
    headers: dict[str, str], status: int, code: str
) -> None:
    """Without the Bearer key the answer is 401, without `OpenAI-Beta: agents=v1` it is 400 invalid_beta."""
    sim, _ = _sim()
    async with _client(sim, headers) as client:
        resp = await client.get("/agents/sessions")
    assert resp.status_code == status
    assert resp.json()["error"]["code"] == code


@pytest.mark.anyio
async def test_agents_only_serves_no_assistants_paths_and_both_serves_both() -> None:
    """`protocol=agents` answers Assistants paths with 404; `both` serves the two APIs on one app."""
    only, _ = _sim(protocol="agents")
    both, _ = _sim(protocol="both")
    assistants = {"Authorization": "Bearer sk-sim", "OpenAI-Beta": "assistants=v2"}
    async with _client(only, assistants) as client:
        assert (await client.get("/assistants")).status_code == 404
    async with _client(both, assistants) as client:
        assert (await client.get("/assistants")).status_code == 200
    async with _client(both) as client:
        assert (await client.get("/agents/sessions")).status_code == 200
    assert set(both.truth()) >= {"runs", "agents"} and "agents" in only.truth()


def test_agents_protocol_rejects_azure_and_webhooks_need_agents() -> None:
    """The Agents API exists on the openai flavour only, and webhooks need it served."""
    with pytest.raises(ValueError, match="flavor openai"):
        Simulator(scenario_named("quiet"), flavor="azure", protocol="agents")
    with pytest.raises(ValueError, match="webhooks need protocol"):
        Simulator(scenario_named("quiet"), webhooks=WebhookTarget("http://127.0.0.1:9/x", "whsec_c2VjcmV0"))
    with pytest.raises(ValueError, match="webhook_secret"):
        Simulator(scenario_named("quiet"), protocol="agents", webhooks=WebhookTarget("http://127.0.0.1:9/x", ""))


@pytest.mark.anyio
async def test_sessions_list_newest_first_and_filter_by_agent_and_metadata() -> None:
    """Sessions come newest first (asc on request); agent_id and metadata[k]=v keep only matching sessions."""
    sim, _ = _sim()
    async with _client(sim) as client:
        desc = await _all(client, "/agents/sessions", limit=9)
        asc = await _all(client, "/agents/sessions", limit=100, order="asc")
        agent = desc[0]["agent"]["id"]
        by_agent = await _all(client, "/agents/sessions", agent_id=agent, limit=5)
        by_team = await _all(client, "/agents/sessions", **{"metadata[team]": "search", "metadata[source]": "workload"})
    assert [s["id"] for s in desc] == [s["id"] for s in asc][::-1]
    assert len({s["id"] for s in desc}) == len(desc) == _agents(sim)["stats"]["sessions"]
    assert [s["created_at"] for s in desc] == sorted((s["created_at"] for s in desc), reverse=True)
    assert by_agent and all(s["agent"]["id"] == agent for s in by_agent) and len(by_agent) < len(desc)
    assert by_team and all(s["metadata"]["team"] == "search" for s in by_team) and len(by_team) < len(desc)


@pytest.mark.anyio
async def test_unknown_ids_are_404_and_foreign_cursors_400() -> None:
    """Unknown sessions, turns of another session and unknown subagents are 404s; a cursor not in the list is 400."""
    sim, _ = _sim()
    sessions = [s for s in _agents(sim)["sessions"] if s["turns"]]
    a, b = sessions[0], sessions[1]
    async with _client(sim) as client:
        assert (await client.get("/agents/sessions/sess_nope")).status_code == 404
        assert (await client.get(f"/agents/sessions/{a['id']}/turns/{b['turns'][0]['id']}")).status_code == 404
        assert (await client.get(f"/agents/sessions/{a['id']}/subagents/sub_nope")).status_code == 404
        bad = await client.get(f"/agents/sessions/{a['id']}/turns", params={"after": b["turns"][0]["id"]})
        limit = await client.get("/agents/sessions", params={"limit": 101})
        post = await client.post("/agents/sessions")
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "after"
    assert limit.status_code == 400 and post.status_code == 404


@pytest.mark.anyio
async def test_turn_items_page_by_last_id_across_an_item_without_id() -> None:
    """A legacy user message has no id; its page's last_id is a cursor that continues the conversation page."""
    sim, clock = _sim("quiet", seconds=0)
    knobs = TurnKnobs(kinds=("web_search_call", "mcp_call"), seconds=0.5, outcome="completed",
                      legacy_user_message=True)  # fmt: skip
    session = finished_session(sim, clock, 1, knobs)
    turn = session.turns[0]
    path = f"/agents/sessions/{session.id}/turns/{turn.id}/items"
    async with _client(sim) as client:
        first = (await client.get(path, params={"order": "asc", "limit": 1})).json()
        items = await _all(client, path, order="asc", limit=1)
        session_items = await _all(client, f"/agents/sessions/{session.id}/items", order="desc", limit=2)
    assert first["data"][0]["id"] is None and first["last_id"] and first["has_more"]
    assert [i["type"] for i in items] == ["message", "reasoning", "web_search_call", "reasoning", "mcp_call", "message"]
    assert [i["id"] for i in session_items] == [i["id"] for i in items][::-1]


@pytest.mark.anyio
async def test_items_carry_no_timestamps_and_include_every_kind_and_an_unknown_type() -> None:
    """Items have no *_at fields; a turn of every segment kind serves each item type, one unknown to the SDK."""
    sim, clock = _sim("quiet", seconds=0)
    session = finished_session(sim, clock, 1, TurnKnobs(kinds=EVERY_KIND, seconds=0.5, outcome="completed"))
    async with _client(sim) as client:
        items = await _all(client, f"/agents/sessions/{session.id}/turns/{session.turns[0].id}/items", limit=100)
    types = {i["type"] for i in items}
    assert types >= {"message", "reasoning", "function_call", "function_call_output", "mcp_call", "web_search_call",
                     "command_execution", "computer_use_call", "create_subagent_call", "wait_for_subagents_call",
                     "agent_message", "close_subagent_call", UNKNOWN_ITEM_TYPE}  # fmt: skip
    assert not [k for i in items for k in i if k.endswith("_at")]
    assert all(i["turn_id"] == session.turns[0].id for i in items)


@pytest.mark.anyio
async def test_subagent_turns_are_listed_under_their_subagent_not_the_session() -> None:
    """A subagent's turn carries subagent_id, starts when created, and appears only under /subagents/{id}."""
    sim, clock = _sim("quiet", seconds=0)
    session = finished_session(sim, clock, 1, TurnKnobs(kinds=("subagent",), seconds=0.5, outcome="completed"))
    base = f"/agents/sessions/{session.id}"
    async with _client(sim) as client:
        subs = await _all(client, f"{base}/subagents")
        sub = subs[0]
        turns = await _all(client, f"{base}/subagents/{sub['id']}/turns")
        one = (await client.get(f"{base}/subagents/{sub['id']}/turns/{turns[0]['id']}")).json()
        items = await _all(client, f"{base}/subagents/{sub['id']}/turns/{turns[0]['id']}/items")
        all_items = await _all(client, f"{base}/subagents/{sub['id']}/items")
        root_turns = await _all(client, f"{base}/turns")
    assert len(subs) == 1 and sub["status"] == "closed" and sub["closed_at"] >= sub["opened_at"]
    assert one == turns[0] and one["subagent_id"] == sub["id"] and one["created_at"] == one["started_at"]
    assert items and items == all_items and all(i["turn_id"] == one["id"] for i in items)
    assert [t["id"] for t in root_turns] == [session.turns[0].id]


@pytest.mark.anyio
async def test_waiting_turn_makes_the_session_require_the_function_call() -> None:
    """While a turn waits for a function output the session is requires_action with that call, then in_progress."""
    sim, clock = _sim("quiet", seconds=0)
    assert sim.agents is not None
    engine = sim.agents.engine
    session = engine.create_session(clock.now())
    turn = engine.create_turn(session, clock.now(), knobs=TurnKnobs(kinds=("function_call",), seconds=2.0,
                                                                     outcome="completed"))  # fmt: skip
    wait = turn.waits[0]
    clock.advance(wait.start - clock.now() + 0.5)
    async with _client(sim) as client:
        waiting = (await client.get(f"/agents/sessions/{session.id}")).json()
        turn_obj = (await client.get(f"/agents/sessions/{session.id}/turns/{turn.id}")).json()
        clock.advance(wait.end - clock.now() + 0.1)
        running = (await client.get(f"/agents/sessions/{session.id}")).json()
        clock.advance(turn.end - clock.now() + 0.1)
        idle = (await client.get(f"/agents/sessions/{session.id}")).json()
    assert waiting["status"] == "requires_action" and turn_obj["status"] == "waiting"
    assert waiting["required_actions"] == [{"type": "function_call", "call_id": wait.call_id, "name": wait.name,
                                            "arguments": wait.arguments, "turn_id": turn.id}]  # fmt: skip
    assert running["status"] == "in_progress" and running["required_actions"] == []
    assert idle["status"] == "idle" and idle["last_active_at"] == int(turn.end)


@pytest.mark.anyio
async def test_outcomes_failed_incomplete_cancelled_and_expired() -> None:
    """Failed turns carry an error code; incomplete is failed max_output_tokens; cancels leave items incomplete."""
    sim, clock = _sim("quiet", seconds=0)
    kinds = ("mcp_call", "message")
    results = {}
    for outcome in ("failed", "incomplete", "cancelled", "expired"):
        session = finished_session(sim, clock, 1, TurnKnobs(kinds=kinds, seconds=1.0, outcome=outcome))
        async with _client(sim) as client:
            turn = (await client.get(f"/agents/sessions/{session.id}/turns/{session.turns[0].id}")).json()
            items = await _all(client, f"/agents/sessions/{session.id}/turns/{turn['id']}/items")
        results[outcome] = (turn, items)
    assert results["failed"][0]["status"] == "failed" and results["failed"][0]["error"]["code"]
    assert results["incomplete"][0]["error"]["code"] == "max_output_tokens"
    assert results["incomplete"][1][0]["status"] == "incomplete"  # newest first: the cut-off final answer
    for outcome in ("cancelled", "expired"):
        turn, items = results[outcome]
        assert turn["status"] == "cancelled" and turn["error"] is None and turn["completed_at"] is not None
        assert all(i.get("status") in (None, "completed", "failed", "incomplete") for i in items)
    assert results["expired"][0]["completed_at"] - results["expired"][0]["created_at"] in (599, 600)  # expires_after_s


@pytest.mark.anyio
async def test_traces_publish_after_the_turn_ends_with_the_truths_span_ids() -> None:
    """A finished root turn's trace appears a little later, keyed by the turn id, with the spans truth lists."""
    sim, clock = _sim("quiet", seconds=0)
    assert sim.agents is not None
    engine = sim.agents.engine
    session = engine.create_session(clock.now())
    turn = engine.create_turn(session, clock.now(), knobs=TurnKnobs(kinds=("subagent", "mcp_call"), seconds=1.0,
                                                                     outcome="failed"))  # fmt: skip
    clock.advance(turn.end - clock.now() + 0.01)
    path = f"/agents/sessions/{session.id}/traces"
    async with _client(sim) as client:
        before = (await client.get(path)).json()
        clock.advance(turn.publish_at - clock.now())
        after = (await client.get(path)).json()
    assert before["data"] == [] and len(after["data"]) == 1
    trace = after["data"][0]
    assert trace["id"] == turn.id and trace["object"] == "agent.session.trace"
    assert trace["created_at"] == int(turn.created)
    spans = trace["otlp"]["resourceSpans"][0]["scopeSpans"][0]["spans"]
    truth = _agents(sim)["stats"]["traces"][turn.id]
    assert [s["spanId"] for s in spans] == truth["span_ids"] and {s["traceId"] for s in spans} == {truth["trace_id"]}
    root = spans[0]
    assert turn.error is not None
    assert root["parentSpanId"] == "" and root["status"]["code"] == 2 and root["status"]["message"] == turn.error[0]
    assert int(root["startTimeUnixNano"]) == round(turn.created * 1e9)
    assert int(root["endTimeUnixNano"]) == round(turn.end * 1e9)
    assert all(int(s["startTimeUnixNano"]) <= int(s["endTimeUnixNano"]) for s in spans)
    assert any(s["name"].startswith("subagent ") for s in spans)


@pytest.mark.anyio
async def test_truth_counters_equal_what_the_api_serves() -> None:
    """Terminal turns per status, usage sums and item counts in /_sim/truth match the objects served."""
    sim, _ = _sim("lively")
    async with _client(sim) as client:
        truth = (await client.get("http://sim/_sim/truth")).json()["agents"]
        terminal: dict[str, int] = {"completed": 0, "failed": 0, "cancelled": 0}
        input_tokens = items = 0
        for session in await _all(client, "/agents/sessions", limit=100):
            for turn in await _all(client, f"/agents/sessions/{session['id']}/turns", limit=100):
                if turn["completed_at"] is None:
                    continue
                terminal[turn["status"]] += 1
                input_tokens += (turn["usage"] or {}).get("input_tokens", 0)
                path = f"/agents/sessions/{session['id']}/turns/{turn['id']}/items"
                items += len(await _all(client, path, limit=100))
    stats = truth["stats"]
    assert terminal == stats["terminal_turns"]["root"] and sum(terminal.values()) > 20
    assert input_tokens == stats["usage"]["root"]["input_tokens"]
    assert items == sum(sum(by_status.values()) for by_status in stats["items"]["root"].values())
    assert stats["usage"]["root"]["total_tokens"] == input_tokens + stats["usage"]["root"]["output_tokens"]
    tools = stats["tool_calls"]["root"]
    assert set(tools) <= {"function_call", "mcp_call", "web_search_call", "command_execution", "computer_use_call"}
    assert sum(tools["function_call"].values()) == sum(stats["items"]["root"]["function_call"].values())


def test_same_seed_same_agents_world() -> None:
    """Two simulators with one seed, read at the same times, serve identical sessions, turns, items and traces."""
    one, _ = _sim("lively")
    two, _ = _sim("lively")
    assert _agents(one) == _agents(two)


@pytest.mark.anyio
async def test_faults_apply_to_agents_endpoints() -> None:
    """Per-endpoint faults by agents endpoint name: 5xx, 429 with retry-after, drift and dropped connections."""
    faults = FaultConfig(endpoints={
        "list_agent_sessions": FaultSpec(error_rate=1.0, error_statuses=(503,)),
        "get_agent_session": FaultSpec(rate_limit_rate=1.0, retry_after_s=3),
        "list_agent_turns": FaultSpec(drift_rate=1.0),
        "get_agent_turn": FaultSpec(drop_rate=1.0),
    })  # fmt: skip
    sim, _ = _sim(faults=faults)
    session = _busy_session(sim)
    base = f"/agents/sessions/{session['id']}"
    async with _client(sim) as client:
        assert (await client.get("/agents/sessions")).status_code == 503
        limited = await client.get(base)
        drifted = (await client.get(f"{base}/turns")).json()
        with pytest.raises(httpx.RemoteProtocolError):
            await client.get(f"{base}/turns/{session['turns'][0]['id']}")
        assert (await client.get(f"{base}/items")).status_code == 200
    assert limited.status_code == 429 and limited.headers["retry-after"] == "3"
    assert all("x_sim_drift" in turn for turn in drifted["data"])
    assert FaultConfig.from_dict({"endpoints": {"list_agent_traces": {"error_rate": 0.5}}}).validate() == []


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    simulator_cli.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_simulate_flags_choose_the_protocol_and_the_webhook_target() -> None:
    """`--protocol` defaults to assistants; `both` with a webhook URL and secret builds a delivering simulator."""
    assert simulator_cli.build(_parse()).agents is None
    url, secret = "http://127.0.0.1:9/hooks", "whsec_c2VjcmV0"
    sim = simulator_cli.build(_parse("--protocol", "both", "--webhook-url", url, "--webhook-secret", secret))
    assert sim.protocol == "both" and sim.agents is not None and sim.agents.delivery is not None
    assert sim.agents.delivery.target == WebhookTarget(url, secret, attempts=5)
    assert secret not in repr(sim.agents.delivery.target)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (("--webhook-url", "http://127.0.0.1:9/h", "--webhook-secret", "whsec_c2VjcmV0"), "--protocol agents or both"),
        (("--protocol", "agents", "--webhook-url", "http://127.0.0.1:9/h"), "needs --webhook-secret"),
        (("--protocol", "agents", "--webhook-url", "ftp://x", "--webhook-secret", "whsec_c2VjcmV0"), "webhook_url"),
        (("--protocol", "agents", "--flavor", "azure"), "flavor openai"),
    ],
)
def test_simulate_flags_refuse_inconsistent_agents_options(argv: tuple[str, ...], message: str) -> None:
    """Webhooks without the Agents API or without a secret, a bad URL and Agents on Azure are refused by name."""
    with pytest.raises(ValueError, match=message):
        simulator_cli.build(_parse(*argv))
