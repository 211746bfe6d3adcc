"""`STEPSCOPE_PROTOCOL=agents stepscope serve` end to end: the simulated Agents API over real HTTP, serve as a
subprocess, a real OTLP receiver.

Checked against the simulator's truth (`/_sim/truth`, agents section) and the traces it publishes
(`GET /agents/sessions/{id}/traces`): every terminal turn is one `invoke_agent` span from its `created_at` to its
`completed_at`; every published span arrives once, as published (ids, times, name, kind, status, attributes,
events, resource); nothing else arrives, so no span carries a duration the server never recorded; the counters
equal the truth; all of it across a `kill -9` and a restart on the same store. Webhooks: a delivery with a wrong
signature is refused and makes serve read nothing, a correctly signed one has the session's turns read at once.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import signal
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from stepscope.simulator import FaultConfig, FaultSpec, SimClock, Simulator, SimulatorServer, scenario_named
from stepscope.simulator.agents import TurnKnobs
from stepscope.simulator.agents.webhooks import WebhookTarget
from stepscope.testing import OtlpReceiver, ReceivedSpan
from tests.integration._collectors import Samples, quiet, scrape, status, total, wait_for
from tests.procs import free_port, serve

pytestmark = pytest.mark.slow

ROOT_TURNS = 8
TERMINAL = ("completed", "failed", "cancelled")
AGENTS = {"protocol": "agents"}
SECRET = "whsec_" + base64.b64encode(b"stepscope-agents-serve-test-key").decode()
WRONG_SECRET = "whsec_" + base64.b64encode(b"not-the-endpoint-secret").decode()
FROZEN = FaultConfig(default=FaultSpec(error_rate=1.0, error_statuses=(500,)))
"""Every API request answered 500: no turn can be committed, so the counters stand still for a scrape."""

SpanKey = tuple[str, str]
"""(trace id, span id) in lower-case hex."""


def serve_env(server: SimulatorServer, receiver: OtlpReceiver, **extra: str) -> dict[str, str]:
    return {
        "OPENAI_BASE_URL": server.url,
        "OPENAI_API_KEY": "sk-sim",
        "STEPSCOPE_PROTOCOL": "agents",
        "STEPSCOPE_POLL_INTERVAL": "0.2",
        "STEPSCOPE_DISCOVERY_INTERVAL": "0.5",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": receiver.url,
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        **extra,
    }


def agents_truth(server: SimulatorServer) -> dict[str, Any]:
    body = httpx.get(f"{server.root_url}/_sim/truth", timeout=10).json()
    return body["agents"]  # type: ignore[no-any-return]


def root_turns(world: dict[str, Any]) -> list[dict[str, Any]]:
    return [turn for session in world["sessions"] for turn in session["turns"]]


def workload_done(server: SimulatorServer, turns: int) -> bool:
    """Every root turn created, terminal and its trace published; every subagent turn terminal."""
    stats = agents_truth(server)["stats"]
    terminal = stats["terminal_turns"]
    return (
        stats["turns"]["root"] == turns
        and sum(terminal["root"].values()) == turns
        and len(stats["traces"]) == turns
        and sum(terminal["subagent"].values()) == stats["turns"]["subagent"]
    )


# --- what the truth says the counters are -------------------------------------------------------------------------


def expected_counters(stats: dict[str, Any], part: str = "root") -> dict[str, Counter[tuple[str, ...]]]:
    """The domain counters a correct stepscope reports for `part` ("root" or "subagent") turns, by label values."""
    items: Counter[tuple[str, ...]] = Counter()
    for item_type, by_status in stats["items"][part].items():
        for item_status, n in by_status.items():
            items[(item_type, "_unknown" if item_status == "none" else item_status)] += n
    tools: Counter[tuple[str, ...]] = Counter()
    for by_name in stats["tool_calls"][part].values():
        for name, n in by_name.items():
            tools[(name,)] += n
    usage = stats["usage"][part]
    tokens: Counter[tuple[str, ...]] = Counter()
    for token_type, key in (("input", "input_tokens"), ("output", "output_tokens"), ("cache_read", "cached_tokens"),
                            ("reasoning", "reasoning_tokens")):  # fmt: skip
        if usage[key]:
            tokens[(token_type,)] = usage[key]
    return {
        "runs": Counter({(s,): n for s, n in stats["terminal_turns"][part].items() if n}),
        "tokens": tokens,
        "items": items,
        "tools": tools,
    }


def counters(samples: Samples) -> dict[str, Counter[tuple[str, ...]]]:
    """The same figures as `expected_counters`, read from a scrape (agents series only, zeros left out)."""
    out: dict[str, Counter[tuple[str, ...]]] = {k: Counter() for k in ("runs", "tokens", "items", "tools")}
    families = {
        "stepscope_runs_total": ("runs", ("status",)),
        "stepscope_tokens_total": ("tokens", ("token_type",)),
        "stepscope_run_steps_total": ("items", ("step_type", "status")),
        "stepscope_tool_calls_total": ("tools", ("tool_name",)),
    }
    for (name, labels), value in samples.items():
        if name not in families or ("protocol", "agents") not in labels or not value:
            continue
        which, keys = families[name]
        by_key = dict(labels)
        out[which][tuple(by_key[k] for k in keys)] += int(value)
    return out


def plus(a: dict[str, Counter[tuple[str, ...]]], b: dict[str, Counter[tuple[str, ...]]]) -> dict[str, Any]:
    return {k: a[k] + b[k] for k in a}


# --- what the server published ------------------------------------------------------------------------------------


def _any_value(value: dict[str, Any]) -> Any:
    """An OTLP JSON `AnyValue` as the receiver decodes the protobuf one."""
    if "stringValue" in value:
        return value["stringValue"]
    if "intValue" in value:
        return int(value["intValue"])
    if "doubleValue" in value:
        return float(value["doubleValue"])
    if "boolValue" in value:
        return bool(value["boolValue"])
    if "arrayValue" in value:
        return [_any_value(v) for v in value["arrayValue"].get("values", [])]
    if "kvlistValue" in value:
        return _attrs(value["kvlistValue"].get("values", []))
    return None


def _attrs(kvs: list[dict[str, Any]]) -> dict[str, Any]:
    return {kv["key"]: _any_value(kv.get("value", {})) for kv in kvs}


KINDS = {0: "unspecified", 1: "internal", 2: "server", 3: "client", 4: "producer", 5: "consumer"}
STATUSES = {0: "unset", 1: "ok", 2: "error"}


def published_spans(server: SimulatorServer, session_ids: list[str]) -> dict[SpanKey, ReceivedSpan]:
    """Every span of every trace the simulated server published for these sessions, read over its API."""
    headers = {"Authorization": "Bearer sk-sim", "OpenAI-Beta": "agents=v1"}
    out: dict[SpanKey, ReceivedSpan] = {}
    for session_id in session_ids:
        page = httpx.get(f"{server.url}/agents/sessions/{session_id}/traces?limit=100", headers=headers, timeout=10)
        page.raise_for_status()
        assert page.json()["has_more"] is False
        for trace in page.json()["data"]:
            for rs in trace["otlp"]["resourceSpans"]:
                resource = _attrs(rs.get("resource", {}).get("attributes", []))
                for ss in rs["scopeSpans"]:
                    for s in ss["spans"]:
                        span = ReceivedSpan(
                            trace_id=s["traceId"],
                            span_id=s["spanId"],
                            parent_span_id=s.get("parentSpanId") or "",
                            name=s["name"],
                            kind=KINDS[int(s.get("kind", 0))],
                            start_ns=int(s["startTimeUnixNano"]),
                            end_ns=int(s["endTimeUnixNano"]),
                            attributes=_attrs(s.get("attributes", [])),
                            status=STATUSES[int(s.get("status", {}).get("code", 0))],
                            events=tuple(
                                (e["name"], int(e["timeUnixNano"]), _attrs(e.get("attributes", [])))
                                for e in s.get("events", [])
                            ),
                            resource=resource,
                        )
                        out[(span.trace_id, span.span_id)] = span
    return out


def comparable(span: ReceivedSpan) -> tuple[Any, ...]:
    """Everything but the trace flags, which OTLP JSON leaves out and the relay sets to sampled."""
    return (span.trace_id, span.span_id, span.parent_span_id, span.name, span.kind, span.start_ns, span.end_ns,
            json.dumps(span.attributes, sort_keys=True), span.status, json.dumps(span.events, sort_keys=True),
            json.dumps(span.resource, sort_keys=True))  # fmt: skip


# --- fixtures -----------------------------------------------------------------------------------------------------


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as running:
        yield running


def test_every_turn_once_with_server_times_and_published_spans_relayed_once_across_kill_9(
    tmp_path: Path, receiver: OtlpReceiver
) -> None:
    """Across a `kill -9` and a restart on the same store, each terminal root turn arrives as exactly one
    `invoke_agent` span timed `created_at` -> `completed_at`, each published span arrives once and as published,
    nothing else arrives, and the two processes' counters add up to the truth with nothing counted twice."""
    scenario = scenario_named(
        "steady", runs_per_second=1.5, threads=3, total_runs=ROOT_TURNS, submit_delay_s=(0.5, 2.0), failure_rate=0.2
    )
    simulator = Simulator(scenario, seed=41, clock=SimClock(8.0), protocol="agents")
    with SimulatorServer(simulator) as server:
        env = serve_env(server, receiver)
        with serve(tmp_path, env) as (proc, base):
            # Kill while the workload may still be running, but only once counting stood still: with every API
            # request failing, no commit can happen between the last scrape and the kill.
            assert wait_for(lambda: total(scrape(base), "stepscope_runs_total", **AGENTS) >= 2, 30), proc.output()
            simulator.set_faults(FROZEN)
            first = quiet(base, counters)
            assert wait_for(lambda: status(base)["exporter"]["pending_spans"] == 0, 20), proc.output()
            delivered_first = len(receiver.spans)
            assert proc.stop(signal.SIGKILL) == -signal.SIGKILL
        simulator.set_faults(None)
        assert wait_for(lambda: workload_done(server, ROOT_TURNS), 30), "the simulated workload did not finish"
        world = agents_truth(server)
        stats = world["stats"]
        assert stats["turns"]["subagent"] == 0, "seed with subagent turns: see the subagent test"
        want = expected_counters(stats)
        got_first = counters(first)
        with serve(tmp_path, env, name="serve-restart") as (proc2, base2):
            exact = wait_for(lambda: plus(got_first, counters(scrape(base2))) == want, 30)
            assert exact, f"{plus(got_first, counters(scrape(base2)))} != {want}\n{proc2.output()}"
            assert wait_for(lambda: status(base2)["exporter"]["pending_spans"] == 0, 20), proc2.output()
            got_second = counters(quiet(base2, counters))
            assert proc2.stop() == 0, proc2.output()
        published = published_spans(server, [s["id"] for s in world["sessions"]])

    assert (
        sum(got_first["runs"].values()) >= 2 and delivered_first > 0
    )  # the first process counted and delivered before the kill
    assert plus(got_first, got_second) == want
    spans = list(receiver.spans)
    copies = Counter((s.trace_id, s.span_id) for s in spans)
    assert [k for k, n in copies.items() if n > 1] == [], "a span arrived twice"

    turns = {t["id"]: t for t in root_turns(world)}
    assert set(turns) and all(t["status"] in TERMINAL for t in turns.values())
    invoke = [s for s in spans if s.name.startswith("invoke_agent")]
    assert sorted(s.attributes["openai.turn.id"] for s in invoke) == sorted(turns), "one span per terminal turn"
    for span in invoke:
        turn = turns[span.attributes["openai.turn.id"]]
        assert (span.start_ns, span.end_ns) == (turn["created_at"] * 10**9, turn["completed_at"] * 10**9)
        assert span.kind == "client" and span.parent_span_id == ""
        assert span.attributes["openai.turn.status"] == turn["status"]
        assert span.attributes["gen_ai.conversation.id"] == turn["session_id"]
        assert (span.status == "error") == (turn["status"] == "failed")
        if turn["usage"] is not None:
            assert span.attributes["gen_ai.usage.input_tokens"] == turn["usage"]["input_tokens"]
            assert span.attributes["gen_ai.usage.output_tokens"] == turn["usage"]["output_tokens"]

    assert {k[0] for k in published} == {t["trace_id"] for t in stats["traces"].values()}
    assert sum(len(t["span_ids"]) for t in stats["traces"].values()) == len(published)
    relayed = [s for s in spans if not s.name.startswith("invoke_agent")]
    # Nothing but turn spans and published spans: no span has a duration the server never recorded.
    assert sorted(comparable(s) for s in relayed) == sorted(comparable(s) for s in published.values())


def test_subagent_turns_each_get_one_span(tmp_path: Path, receiver: OtlpReceiver) -> None:
    """A turn a subagent ran is a terminal turn too: it arrives as one `invoke_agent` span of its own, timed by the
    server and naming its subagent, and counts in `stepscope_runs_total`; the delivery of the turns' spans moves
    `stepscope_export_lag_seconds`, as it does for run steps."""
    simulator = Simulator(scenario_named("quiet"), seed=5, clock=SimClock(8.0), protocol="agents")
    assert simulator.agents is not None
    engine = simulator.agents.engine
    now = simulator.clock.now()
    session = engine.create_session(now)
    knobs = TurnKnobs(kinds=("subagent", "message"), seconds=1.0, outcome="completed")
    engine.create_turn(session, now, knobs=knobs)
    with SimulatorServer(simulator) as server:
        assert wait_for(lambda: workload_done(server, 1), 20), "the turn did not finish"
        world = agents_truth(server)
        subagent_turns = [t for s in world["sessions"] for sub in s["subagents"] for t in sub["turns"]]
        assert len(subagent_turns) == 1
        with serve(tmp_path, serve_env(server, receiver)) as (proc, base):
            root = wait_for(lambda: total(scrape(base), "stepscope_runs_total", **AGENTS) >= 1, 10)
            assert root, proc.output()
            counted = wait_for(lambda: total(scrape(base), "stepscope_runs_total", **AGENTS) >= 2, 3)
            assert wait_for(lambda: status(base)["exporter"]["pending_spans"] == 0, 10), proc.output()
            lags = total(scrape(base), "stepscope_export_lag_seconds_count")
            proc.stop()
    assert lags >= 2, "each delivered turn span is an export-lag observation"
    invoke = {s.attributes["openai.turn.id"]: s for s in receiver.spans if s.name.startswith("invoke_agent")}
    sub = subagent_turns[0]
    assert sub["id"] in invoke, f"no span for subagent turn {sub['id']} (runs counted: {counted})"
    span = invoke[sub["id"]]
    assert (span.start_ns, span.end_ns) == (sub["created_at"] * 10**9, sub["completed_at"] * 10**9)
    assert span.attributes["openai.subagent.id"] == sub["subagent_id"]


# --- webhooks -----------------------------------------------------------------------------------------------------


def requests_to(samples: Samples, endpoint: str) -> float:
    return total(samples, "stepscope_api_requests_total", endpoint=endpoint)


def signed(secret: str, body: bytes, webhook_id: str) -> dict[str, str]:
    """Standard Webhooks headers for `body`, computed here rather than with stepscope's own code."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    stamp = str(int(time.time()))
    mac = hmac.new(key, f"{webhook_id}.{stamp}.".encode() + body, hashlib.sha256).digest()
    return {
        "webhook-id": webhook_id,
        "webhook-timestamp": stamp,
        "webhook-signature": "v1," + base64.b64encode(mac).decode(),
        "content-type": "application/json",
    }


def test_wrong_signature_changes_nothing_and_a_signed_session_event_is_read_at_once(
    tmp_path: Path, receiver: OtlpReceiver
) -> None:
    """With discovery listing only at start, a session event signed with the wrong secret gets 401 and serve reads
    nothing of the session; the simulator's correctly signed event has the session's new turn read and counted
    within seconds."""
    port = free_port()
    target = WebhookTarget(f"http://127.0.0.1:{port}/v1/webhooks", SECRET, attempts=3, backoff_s=0.2)
    simulator = Simulator(scenario_named("quiet"), seed=6, clock=SimClock(8.0), protocol="agents", webhooks=target)
    assert simulator.agents is not None
    engine = simulator.agents.engine
    extra = {
        "STEPSCOPE_WEBHOOK_SECRET": SECRET,
        "STEPSCOPE_DISCOVERY_INTERVAL": "300",  # one listing at start: later sessions are found only by webhooks
    }
    with (
        SimulatorServer(simulator) as server,
        serve(tmp_path, serve_env(server, receiver, **extra), port=port) as (
            proc,
            base,
        ),
    ):
        assert wait_for(lambda: status(base)["last_discovery"] is not None, 10), proc.output()
        session = engine.create_session(simulator.clock.now())
        before = scrape(base)

        body = json.dumps({"id": "evt_wrong", "object": "event", "type": "agent.session.in_progress",
                           "created_at": int(time.time()), "data": {"id": session.id}}).encode()  # fmt: skip
        refused = httpx.post(f"{base}/v1/webhooks", content=body, headers=signed(WRONG_SECRET, body, "wh_1"))
        assert refused.status_code == 401
        unsigned = httpx.post(f"{base}/v1/webhooks", content=body, headers={"content-type": "application/json"})
        assert unsigned.status_code == 400
        time.sleep(1.0)  # time enough for a session read the refused event might have caused
        after = scrape(base)
        for endpoint in ("list_agent_turns", "get_agent_session", "list_agent_sessions"):
            assert requests_to(after, endpoint) == requests_to(before, endpoint), f"{endpoint} was called"
        assert total(after, "stepscope_dropped_total", reason="webhook_invalid") == 2

        turn = engine.create_turn(session, simulator.clock.now(), knobs=TurnKnobs(seconds=0.5, outcome="completed"))
        read = wait_for(lambda: total(scrape(base), "stepscope_runs_total", **AGENTS, status="completed") == 1, 10)
        hooks = agents_truth(server)
        assert read, f"the turn was not read after the webhook: {hooks.get('webhooks')}\n{proc.output()}"
        assert hooks["webhooks"]["delivered"] >= 1 and hooks["webhooks"]["given_up"] == 0
        assert wait_for(lambda: any(s.attributes.get("openai.turn.id") == turn.id for s in receiver.spans), 10)
