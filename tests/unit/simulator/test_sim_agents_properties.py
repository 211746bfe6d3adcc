"""Property tests of the simulated Agents API: timeline invariants of turns and sessions, and cursor paging."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stepscope.simulator import ManualClock, Simulator, scenario_named
from stepscope.simulator.agents import TurnKnobs
from stepscope.simulator.agents.handlers import AgentsHandlers
from stepscope.simulator.handlers import Request

_SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
_TURN = {"queued", "in_progress", "waiting", "completed", "failed", "cancelled"}
_TERMINAL = {"completed", "failed", "cancelled"}
_FUNCTION_STATUS = {"in_progress", "completed", "failed", "incomplete"}
_OUTPUT_STATUS = {"in_progress", "completed", "incomplete"}
_OUTPUT_TYPES = {"message", "reasoning", "web_search_call"}


def _world(scenario: str, seed: int, seconds: float) -> dict[str, Any]:
    clock = ManualClock()
    sim = Simulator(scenario_named(scenario, threads=8), clock=clock, seed=seed, protocol="agents")
    clock.advance(seconds)
    truth: dict[str, Any] = sim.truth()["agents"]
    return truth


def _check_turn(turn: dict[str, Any], now: int) -> None:
    status = turn["status"]
    assert status in _TURN
    created, started, completed = turn["created_at"], turn["started_at"], turn["completed_at"]
    assert created <= now
    if started is not None:
        assert created <= started <= now
    if completed is not None:
        assert created <= completed <= now and (started is None or started <= completed)
    assert (completed is not None) == (status in _TERMINAL)
    assert (turn["error"] is not None) == (status == "failed")
    if status in ("in_progress", "waiting"):
        assert started is not None
    usage = turn["usage"]
    if usage is not None:
        assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
        assert 0 <= usage["input_tokens_details"]["cached_tokens"] <= usage["input_tokens"]
        assert 0 <= usage["output_tokens_details"]["reasoning_tokens"] <= usage["output_tokens"]
    for item in turn["items"]:
        assert item["turn_id"] == turn["id"] and not [k for k in item if k.endswith("_at")]
        if "status" in item:
            allowed = _OUTPUT_STATUS if item["type"] in _OUTPUT_TYPES else _FUNCTION_STATUS
            assert item["status"] in allowed
            assert status not in _TERMINAL or item["status"] != "in_progress"


@_SETTINGS
@given(
    scenario=st.sampled_from(["steady", "lively", "faulty"]),
    seed=st.integers(0, 10_000),
    seconds=st.floats(0, 240),
)
def test_turn_and_session_timelines_hold_their_invariants(scenario: str, seed: int, seconds: float) -> None:
    """created_at <= started_at <= completed_at; terminal turns have completed_at; exactly failed turns have an
    error; usage adds up; items have valid statuses, none in progress once their turn ended; sessions are busy
    exactly while a turn is active."""
    world = _world(scenario, seed, seconds)
    now = world["now"]
    for session in world["sessions"]:
        assert session["created_at"] <= session["last_active_at"] <= now
        active = [t for t in session["turns"] if t["status"] not in _TERMINAL]
        assert len(active) <= 1
        if session["status"] == "idle":
            assert not active
        if session["status"] in ("in_progress", "requires_action"):
            assert active and (session["status"] == "requires_action") == (active[0]["status"] == "waiting")
        assert (session["error"] is not None) == (session["status"] == "failed")
        created = [t["created_at"] for t in session["turns"]]
        assert created == sorted(created)
        for turn in session["turns"]:
            _check_turn(turn, now)
            assert turn["subagent_id"] is None
        for sub in session["subagents"]:
            for turn in sub["turns"]:
                _check_turn(turn, now)
                assert turn["subagent_id"] == sub["id"] and turn["created_at"] == turn["started_at"]


def _list(handlers: AgentsHandlers, endpoint: str, ids: dict[str, str], **query: Any) -> dict[str, Any]:
    req = Request(ids, {k: str(v) for k, v in query.items()}, [], {}, handlers.engine.now(), False, as_dicts=True)
    obj: dict[str, Any] = getattr(handlers, endpoint)(req).obj
    return obj


@_SETTINGS
@given(
    n=st.integers(1, 40),
    limit=st.integers(1, 100),
    order=st.sampled_from(["asc", "desc"]),
    legacy=st.booleans(),
)
def test_paging_by_last_id_yields_every_turn_and_item_once(n: int, limit: int, order: str, legacy: bool) -> None:
    """Following `after=last_id` until has_more is false lists every turn, and every item of a turn, once in order."""
    clock = ManualClock()
    sim = Simulator(scenario_named("quiet"), clock=clock, protocol="agents")
    assert sim.agents is not None
    engine = sim.agents.engine
    session = engine.create_session(clock.now())
    t = clock.now()
    knobs = TurnKnobs(kinds=("mcp_call",) * (n % 7), seconds=0.2, outcome="completed", legacy_user_message=legacy)
    for _ in range(n):
        t = engine.create_turn(session, t, knobs=knobs).end + 0.01
    clock.advance(t - clock.now() + 1)
    handlers = sim.agents.handlers
    ids = {"session_id": session.id}
    for endpoint, path_ids, stored in (
        ("list_agent_turns", ids, [x.id for x in session.turns]),
        ("list_agent_turn_items", {**ids, "turn_id": session.turns[-1].id}, [i.id for i in session.turns[-1].items]),
    ):
        seen: list[str | None] = []
        cursor: dict[str, Any] = {}
        while True:
            page = _list(handlers, endpoint, path_ids, limit=limit, order=order, **cursor)
            assert len(page["data"]) <= limit
            seen += [o["id"] for o in page["data"]]
            if not page["has_more"]:
                break
            cursor = {"after": page["last_id"]}
        assert seen == (stored if order == "asc" else stored[::-1])
