"""The official openai SDK (3.57.0, `client.beta.agents`) against the simulated Agents API over real HTTP, and the
simulator's session webhooks delivered to a real local receiver and verified with `client.webhooks.unwrap`."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import openai
import pytest
from openai.types.beta import AgentSession, Subagent
from openai.types.beta.agents.sessions import SessionTrace, Turn
from openai.types.webhooks import (
    AgentSessionActionRequiredWebhookEvent,
    AgentSessionFailedWebhookEvent,
    AgentSessionIdleWebhookEvent,
    AgentSessionInProgressWebhookEvent,
    UnwrapWebhookEvent,
)

from stepscope.simulator import ManualClock, Simulator, SimulatorServer, scenario_named
from stepscope.simulator.agents import UNKNOWN_ITEM_TYPE, TurnKnobs, WebhookTarget
from stepscope.simulator.agents.state import SimSession
from tests.kit.agents import EVERY_KIND, finished_session
from tests.kit.waits import holds_within

SECRET = "whsec_c2ltdWxhdG9yLXdlYmhvb2stc2VjcmV0LWtleQ=="


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def sim(clock: ManualClock) -> Simulator:
    return Simulator(scenario_named("lively", threads=6), clock=clock, seed=11, protocol="agents")


@pytest.fixture
def client(sim: Simulator) -> Iterator[openai.OpenAI]:
    with SimulatorServer(sim) as server:
        yield openai.OpenAI(base_url=server.url, api_key="sk-sim", max_retries=0, timeout=10)


def _all_fields(model: type[openai.BaseModel], raw: dict[str, Any], optional: frozenset[str] = frozenset()) -> None:
    """`raw` validates as `model` and carries every field the SDK declares (by wire name), but `optional`."""
    model.model_validate(raw)
    names = {f.alias or name for name, f in model.model_fields.items()} - optional
    assert names <= set(raw), names - set(raw)


def test_sdk_reads_sessions_turns_subagents_and_traces_with_every_field(
    sim: Simulator, clock: ManualClock, client: openai.OpenAI
) -> None:
    """Sessions, turns, subagents and traces validate as the SDK's models and carry every field it declares."""
    session = finished_session(sim, clock, 2, TurnKnobs(kinds=EVERY_KIND, seconds=0.5, outcome="completed"))
    sessions = client.beta.agents.sessions
    raw = sessions.with_raw_response.retrieve(session.id).http_response.json()
    _all_fields(AgentSession, raw, frozenset({"review"}))  # omitted when review is none, as documented
    listed = list(sessions.list(metadata={"team": "manual"}))
    assert [s.id for s in listed] == [session.id] and listed[0].status == "idle"
    turn_raw = sessions.turns.with_raw_response.retrieve(session.turns[0].id, session_id=session.id)
    _all_fields(Turn, turn_raw.http_response.json())
    turns = list(sessions.turns.list(session.id))
    assert [t.id for t in turns] == [t.id for t in session.turns][::-1]
    assert all(t.status == "completed" and t.usage is not None and t.completed_at for t in turns)
    subagents = list(sessions.subagents.list(session.id))
    assert len(subagents) == 2 and all(isinstance(s, Subagent) for s in subagents)
    sub_turns = list(sessions.subagents.turns.list(subagents[0].id, session_id=session.id))
    assert sub_turns[0].subagent_id == subagents[0].id
    traces = list(sessions.traces.list(session.id))
    assert all(isinstance(t, SessionTrace) for t in traces) and {t.id for t in traces} == {t.id for t in turns}
    page = sessions.traces.with_raw_response.list(session.id).http_response.json()
    _all_fields(SessionTrace, page["data"][0])
    truth = sim.truth()["agents"]["stats"]["traces"]
    for trace in traces:
        spans = trace.otlp["resourceSpans"][0]["scopeSpans"][0]["spans"]  # type: ignore[index]
        assert [s["spanId"] for s in spans] == truth[trace.id]["span_ids"]


def test_sdk_parses_every_item_type_and_tolerates_an_unknown_one(
    sim: Simulator, clock: ManualClock, client: openai.OpenAI
) -> None:
    """Turn items parse into the SDK's item classes; the unknown type comes through without breaking the page."""
    session = finished_session(sim, clock, 1, TurnKnobs(kinds=EVERY_KIND, seconds=0.5, outcome="completed"))
    items = list(client.beta.agents.sessions.turns.items.list(session.turns[0].id, session_id=session.id, limit=5))
    by_type = {item.type: type(item).__name__ for item in items}
    assert by_type["function_call"] == "AgentFunctionCallItem"
    assert by_type["function_call_output"] == "FunctionCallOutputItemResource"
    assert by_type["mcp_call"] == "AgentMcpCallItem" and by_type["command_execution"] == "AgentCommandExecutionItem"
    assert by_type["web_search_call"] == "AgentWebSearchCallItem"
    assert by_type["computer_use_call"] == "ComputerUseCallItemResource"
    assert by_type["create_subagent_call"] == "AgentCreateSubagentCallItem"
    assert by_type["agent_message"] == "AgentMessageItemResource" and by_type["reasoning"] == "AgentReasoningItem"
    assert UNKNOWN_ITEM_TYPE in by_type
    assert [i.id for i in items] == [i.id for i in session.turns[0].items][::-1]


def test_sdk_auto_paginates_a_session_of_more_than_100_turns_and_long_turn_items(
    sim: Simulator, clock: ManualClock, client: openai.OpenAI
) -> None:
    """Auto-pagination walks 130 turns (pages of 100 and of 20) and 60+ items of one turn, each exactly once."""
    knobs = TurnKnobs(kinds=("mcp_call", "web_search_call") * 15, seconds=0.05, outcome="completed",
                      legacy_user_message=True)  # fmt: skip
    session = finished_session(sim, clock, 130, knobs)
    turns = client.beta.agents.sessions.turns
    for limit in (100, 20):
        ids = [t.id for t in turns.list(session.id, limit=limit)]
        assert ids == [t.id for t in session.turns][::-1]
    asc = [t.id for t in turns.list(session.id, order="asc")]
    assert asc == [t.id for t in session.turns]
    last = session.turns[-1]
    items = list(turns.items.list(last.id, session_id=session.id, limit=7, order="asc"))
    assert len(items) == len(last.items) > 60 and items[0].id is None  # the id-less user message does not stop it
    assert [i.id for i in items] == [i.id for i in last.items]


class _Receiver:
    """A webhook receiver on 127.0.0.1: records every delivery; answers `statuses` in turn, then 200."""

    def __init__(self, statuses: list[int] | None = None) -> None:
        self.deliveries: list[tuple[dict[str, str], bytes]] = []
        self.statuses = list(statuses or [])
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                with receiver.lock:
                    receiver.deliveries.append(({k.lower(): v for k, v in self.headers.items()}, body))
                    status = receiver.statuses.pop(0) if receiver.statuses else 200
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                del format, args

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> _Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def wait_for(self, count: int, timeout: float = 15.0) -> list[tuple[dict[str, str], bytes]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.deliveries) >= count:
                    return list(self.deliveries)
            time.sleep(0.02)
        raise AssertionError(f"expected {count} deliveries, got {len(self.deliveries)}")


def _session_event(
    event: UnwrapWebhookEvent,
) -> AgentSessionInProgressWebhookEvent | AgentSessionActionRequiredWebhookEvent | AgentSessionIdleWebhookEvent:
    """`event` narrowed to the session-state kinds whose `data` is the session (its `id`); fails on any other."""
    session_kinds = (AgentSessionInProgressWebhookEvent, AgentSessionActionRequiredWebhookEvent,
                     AgentSessionIdleWebhookEvent)  # fmt: skip
    assert isinstance(event, session_kinds), type(event)
    return event


def _webhook_sim(clock: ManualClock, receiver: _Receiver, attempts: int = 5) -> Simulator:
    target = WebhookTarget(receiver.url, SECRET, attempts=attempts, backoff_s=0.01, timeout_s=5.0)
    return Simulator(scenario_named("quiet"), clock=clock, protocol="agents", webhooks=target)


def _turns(sim: Simulator, clock: ManualClock, outcomes: tuple[str, ...]) -> SimSession:
    """One session whose turns wait for a function call once each and end with `outcomes` (created, not run)."""
    assert sim.agents is not None
    engine = sim.agents.engine
    session = engine.create_session(clock.now())
    t = clock.now()
    for outcome in outcomes:
        knobs = TurnKnobs(kinds=("function_call",), seconds=0.5, outcome=outcome)
        t = engine.create_turn(session, t, knobs=knobs).end + 0.01
    return session


def test_webhooks_announce_session_states_signed_as_openai_signs_them(clock: ManualClock) -> None:
    """Each state change is POSTed once, verifies with the SDK's unwrap, and fails verification with another
    secret or a changed body."""
    with _Receiver() as receiver:
        sim = _webhook_sim(clock, receiver)
        session = _turns(sim, clock, ("completed", "completed"))
        with SimulatorServer(sim):
            clock.advance(60)
            deliveries = receiver.wait_for(8)
        sdk = openai.OpenAI(api_key="sk-sim", webhook_secret=SECRET)
        events = [sdk.webhooks.unwrap(body, headers) for headers, body in deliveries]
        kinds = [AgentSessionInProgressWebhookEvent, AgentSessionActionRequiredWebhookEvent,
                 AgentSessionInProgressWebhookEvent, AgentSessionIdleWebhookEvent] * 2  # fmt: skip
        assert [type(e) for e in events] == kinds
        assert {_session_event(e).data.id for e in events} == {session.id}
        action = events[1]
        assert isinstance(action, AgentSessionActionRequiredWebhookEvent)
        assert action.data.required_action.type == "function_call"
        assert [e.created_at for e in events] == sorted(e.created_at for e in events)
        assert len({h["webhook-id"] for h, _ in deliveries}) == len({e.id for e in events}) == 8
        headers, body = deliveries[0]
        with pytest.raises(openai.InvalidWebhookSignatureError):
            sdk.webhooks.unwrap(body, headers, secret="whsec_" + "d3Jvbmctc2VjcmV0")
        with pytest.raises(openai.InvalidWebhookSignatureError):
            sdk.webhooks.unwrap(body.replace(b"in_progress", b"idle"), headers)
        assert len(receiver.deliveries) == 8  # nothing more arrived in the meantime


def test_webhook_failure_event_and_retries_keep_the_webhook_id(clock: ManualClock) -> None:
    """A session-failing turn ends in agent.session.failed; a 5xx answer is retried with the same webhook-id."""
    with _Receiver(statuses=[503]) as receiver:
        sim = _webhook_sim(clock, receiver)
        assert sim.agents is not None
        engine = sim.agents.engine
        session = engine.create_session(clock.now())
        knobs = TurnKnobs(kinds=(), seconds=0.5, outcome="failed", fail_session=True)
        engine.create_turn(session, clock.now(), knobs=knobs)
        with SimulatorServer(sim):
            clock.advance(30)
            deliveries = receiver.wait_for(3)
            # The simulator counts a delivery once it has read the receiver's answer, a moment after the receiver
            # got the request.
            assert holds_within(lambda: sim.truth()["agents"]["webhooks"]["delivered"] == 2, 5)
            webhooks = sim.truth()["agents"]["webhooks"]
        sdk = openai.OpenAI(api_key="sk-sim", webhook_secret=SECRET)
        first, retry, last = deliveries
        assert first[0]["webhook-id"] == retry[0]["webhook-id"] and first[1] == retry[1]
        assert isinstance(sdk.webhooks.unwrap(retry[1], retry[0]), AgentSessionInProgressWebhookEvent)
        assert isinstance(sdk.webhooks.unwrap(last[1], last[0]), AgentSessionFailedWebhookEvent)
        assert webhooks["delivered"] == 2 and webhooks["deliveries"][0]["attempts"] == 2


def test_webhook_retries_are_bounded(clock: ManualClock) -> None:
    """A receiver that always fails gets each event `attempts` times, then the event is given up and counted."""
    with _Receiver(statuses=[500] * 100) as receiver:
        sim = _webhook_sim(clock, receiver, attempts=3)
        _turns(sim, clock, ("completed",))
        with SimulatorServer(sim):
            clock.advance(30)
            receiver.wait_for(12)
            deadline = time.monotonic() + 10
            while sim.truth()["agents"]["webhooks"]["given_up"] < 4 and time.monotonic() < deadline:
                time.sleep(0.02)
            webhooks = sim.truth()["agents"]["webhooks"]
        ids = [h["webhook-id"] for h, _ in receiver.deliveries]
        assert webhooks["given_up"] == 4 and webhooks["delivered"] == 0 and webhooks["attempts"] == 12
        assert all(ids.count(i) == 3 for i in ids) and len(set(ids)) == 4
