"""`STEPSCOPE_PROTOCOL=responses stepscope serve` reading Foundry's listing end to end: the simulated Agent Service
(flavour `azure`) over real HTTP, serve as a subprocess, a real OTLP receiver.

Checked against the simulator's truth (`/_sim/truth`, responses section): every terminal response is exactly one
span, completed ones timed `created_at` -> `completed_at`, the others ending at an observed moment after their real
end; a listing of more than 100 responses is read in pages and each committed once without a request of its own;
the counters equal the truth across a `kill -9` and a restart on the same store; a response the proxy, the listing
and a webhook all show is committed once.
"""

from __future__ import annotations

import base64
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from stepscope.simulator import FaultConfig, FaultSpec, SimClock, Simulator, SimulatorServer, scenario_named
from stepscope.simulator.responses import ResponseKnobs
from stepscope.simulator.responses.params import CreateParams
from stepscope.simulator.webhooks import WebhookTarget
from stepscope.testing import OtlpReceiver
from tests.integration._collectors import quiet, scrape, status, total, wait_for
from tests.integration._responses import (
    NOT_TOOL_CALLS,
    RESPONSES,
    TERMINAL,
    assert_response_span,
    counters,
    expected_counters,
    one_span_each,
    plus,
    requests_to,
    responses_truth,
    serve_env,
    tool_spans,
    workload,
    workload_done,
)
from tests.procs import free_port, serve

pytestmark = pytest.mark.slow

FROZEN = FaultConfig(default=FaultSpec(error_rate=1.0, error_statuses=(500,)))
"""Every API request answered 500: nothing new can be read, so the counters stand still for a scrape."""
PAGED = 130
TOOLS: Any = [{"type": "web_search"}, {"type": "code_interpreter", "container": {"type": "auto"}}]
SECRET = "whsec_" + base64.b64encode(b"stepscope-responses-serve-key").decode()


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as running:
        yield running


def test_every_terminal_response_is_one_span_completed_ones_exact_to_the_second(
    tmp_path: Path, receiver: OtlpReceiver
) -> None:
    """With a Foundry workload running while serve lists it, each terminal response arrives as exactly one span,
    `invoke_agent {agent}` or `chat {model}`, starting at `created_at`; completed ones end exactly at
    `completed_at`, failed, cancelled and incomplete ones at an observed moment after their real end, flagged, and
    failed and incomplete ones are errors typed by their code or reason."""
    sim = Simulator(workload(12), seed=12, clock=SimClock(1.0), protocol="responses", flavor="azure")
    with SimulatorServer(sim) as server:
        env = serve_env(server.url, receiver.url, azure=True)
        with serve(tmp_path, env) as (proc, base):
            assert wait_for(lambda: workload_done(responses_truth(server.root_url), 12), 30), "workload unfinished"
            world = responses_truth(server.root_url)
            terminal = world["stats"]["terminal"]
            assert all(terminal.values()), f"the seed must end responses in every status: {terminal}"
            want = sum(terminal.values())
            committed = wait_for(lambda: total(scrape(base), "stepscope_runs_total", **RESPONSES) == want, 20)
            assert committed, proc.output()
            assert wait_for(lambda: status(base)["exporter"]["pending_spans"] == 0, 20), proc.output()
            samples = scrape(base)
            assert proc.stop() == 0, proc.output()
        seen_by = time.time()

    assert counters(samples)["runs"] == expected_counters(world["stats"])["runs"]
    assert requests_to(samples, "get_response", code="200") > 0, "some were read until terminal, not only listed"
    spans = one_span_each(list(receiver.spans))
    responses = {r["id"]: r for r in world["responses"]}
    assert sorted(spans) == sorted(responses), "one span per terminal response, and no other"
    for rid, response in responses.items():
        assert_response_span(spans[rid], response, provider="azure.ai.foundry", seen_by=seen_by)
    assert {r["agent_reference"] is None for r in responses.values()} == {True, False}  # both span names occur
    assert tool_spans(list(receiver.spans)) == [], "no tool span without a stream through the proxy to time it"


def test_a_listing_of_more_than_100_responses_is_paged_and_each_committed_once(
    tmp_path: Path, receiver: OtlpReceiver
) -> None:
    """130 terminal responses created before serve starts are read in two listing pages on its first pass, each
    is committed once (counted and one span) from its listed copy, without a `GET /responses/{id}` of its own."""
    sim = Simulator(scenario_named("quiet"), seed=3, clock=SimClock(1.0), protocol="responses", flavor="azure")
    assert sim.responses is not None
    engine = sim.responses.engine
    agent = engine.agents[0]["name"]
    start = sim.clock.now() - 2 * PAGED
    outcomes = ("completed", "failed", "completed", "incomplete", "cancelled")
    for k in range(PAGED):
        outcome = outcomes[k % len(outcomes)]
        params = CreateParams(model=None if k % 2 else "gpt-4.1", input="x", background=outcome == "cancelled",
                              agent={"name": agent} if k % 2 else None)  # fmt: skip
        knobs = ResponseKnobs(kinds=("web_search_call",), seconds=0.2, outcome=outcome)
        engine.create_response(start + 2 * k, params, knobs=knobs)
    with SimulatorServer(sim) as server:
        world = responses_truth(server.root_url)
        assert world["stats"]["responses"] == sum(world["stats"]["terminal"].values()) == PAGED
        # One listing pass, at start: what it reads is all that serve learns of the project.
        env = serve_env(server.url, receiver.url, azure=True, STEPSCOPE_DISCOVERY_INTERVAL="300")
        with serve(tmp_path, env) as (proc, base):
            committed = wait_for(lambda: total(scrape(base), "stepscope_runs_total", **RESPONSES) == PAGED, 20)
            assert committed, proc.output()
            assert wait_for(lambda: status(base)["exporter"]["pending_spans"] == 0, 20), proc.output()
            samples = scrape(base)
            assert proc.stop() == 0, proc.output()
        seen_by = time.time()

    assert requests_to(samples, "list_responses") == requests_to(samples, "list_responses", code="200") == 2
    # The only read of one response is the credential check's, which the simulator answers 404.
    assert requests_to(samples, "get_response") == requests_to(samples, "get_response", code="404") == 1
    assert counters(samples)["runs"] == expected_counters(world["stats"])["runs"]
    spans = one_span_each(list(receiver.spans))
    responses = {r["id"]: r for r in world["responses"]}
    assert sorted(spans) == sorted(responses)
    for rid, response in responses.items():
        assert_response_span(spans[rid], response, provider="azure.ai.foundry", seen_by=seen_by)


def test_counters_equal_the_truth_across_kill_9_and_a_restart(tmp_path: Path, receiver: OtlpReceiver) -> None:
    """Across a `kill -9` while the workload runs and a restart on the same store, the two processes' runs by
    status, tokens (input, output, cached, reasoning), items by type and status, tool calls by name and completed
    durations add up to the simulator's truth, and each response arrives as exactly one span."""
    total_runs = 20
    sim = Simulator(workload(total_runs, runs_per_second=3.0), seed=13, clock=SimClock(1.0), protocol="responses",
                    flavor="azure")  # fmt: skip
    with SimulatorServer(sim) as server:
        env = serve_env(server.url, receiver.url, azure=True)
        with serve(tmp_path, env) as (proc, base):
            # Kill while the workload runs, once counting stood still: with every API request failing, nothing
            # new is read, so no commit can happen between the last scrape and the kill.
            assert wait_for(lambda: total(scrape(base), "stepscope_runs_total", **RESPONSES) >= 3, 30), proc.output()
            sim.set_faults(FROZEN)
            first = counters(quiet(base, counters))
            assert wait_for(lambda: status(base)["exporter"]["pending_spans"] == 0, 20), proc.output()
            delivered_first = len(receiver.spans)
            assert proc.stop(signal.SIGKILL) == -signal.SIGKILL
        sim.set_faults(None)
        assert not workload_done(responses_truth(server.root_url), total_runs), "killed after the workload ended"
        assert wait_for(lambda: workload_done(responses_truth(server.root_url), total_runs), 30), "workload unfinished"
        world = responses_truth(server.root_url)
        want = expected_counters(world["stats"])
        with serve(tmp_path, env, name="serve-restart") as (proc2, base2):
            exact = wait_for(lambda: plus(first, counters(scrape(base2))) == want, 30)
            assert exact, f"{plus(first, counters(scrape(base2)))} != {want}\n{proc2.output()}"
            assert wait_for(lambda: status(base2)["exporter"]["pending_spans"] == 0, 20), proc2.output()
            second = counters(quiet(base2, counters))
            assert proc2.stop() == 0, proc2.output()
        seen_by = time.time()

    assert sum(first["runs"].values()) >= 3 and delivered_first > 0  # the first process counted and delivered
    assert sum(second["runs"].values()) > 0  # ... and so did the second
    assert plus(first, second) == want
    assert all(want[k] for k in want), f"every family moves: {want}"
    assert want["tokens"].keys() == {("input",), ("output",), ("cache_read",), ("reasoning",)}
    steps = {step_type for step_type, _ in want["items"]}
    assert steps >= NOT_TOOL_CALLS, "the seed must have Foundry workflow steps (counted as items, not tool calls)"
    spans = one_span_each(list(receiver.spans))
    responses = {r["id"]: r for r in world["responses"]}
    assert sorted(spans) == sorted(responses)
    for rid, response in responses.items():
        assert_response_span(spans[rid], response, provider="azure.ai.foundry", seen_by=seen_by)


def test_a_response_seen_by_the_proxy_the_listing_and_a_webhook_is_committed_once(tmp_path: Path) -> None:
    """On Foundry, with the listing, the proxy and webhooks all on, each background response created through the
    proxy (read by the application until terminal through it, cancelled through it, or never read again), and a
    JSON and a streamed one, is counted once and arrives as one span; the simulator's webhook for each background
    response was delivered to serve and accepted."""
    port, proxy_port = free_port(), free_port()
    target = WebhookTarget(f"http://127.0.0.1:{port}/v1/webhooks", SECRET, attempts=5, backoff_s=0.2)
    scenario = scenario_named("quiet", step_seconds=(0.2, 0.8), queue_seconds=(0.1, 0.3), failure_rate=0.2,
                              incomplete_rate=0.2)  # fmt: skip
    sim = Simulator(scenario, seed=12, clock=SimClock(1.0), protocol="responses", flavor="azure", webhooks=target)
    with SimulatorServer(sim) as server, OtlpReceiver() as receiver:
        agent = responses_truth(server.root_url)["agents"][0]["name"]
        env = serve_env(server.url, receiver.url, azure=True, STEPSCOPE_WEBHOOK_SECRET=SECRET,
                        STEPSCOPE_PROXY_LISTEN=f"127.0.0.1:{proxy_port}")  # fmt: skip
        with serve(tmp_path, env, port=port) as (proc, base):
            proxy = f"http://127.0.0.1:{proxy_port}{sim.base_path}"
            with openai.OpenAI(base_url=proxy, api_key="sk-sim", max_retries=0, timeout=30) as client:
                created = [client.responses.create(model="gpt-5", input=f"task {k}", tools=TOOLS, background=True)
                           for k in range(5)]  # fmt: skip
                created.append(client.responses.create(input="hi", background=True, extra_body={
                    "agent_reference": {"type": "agent_reference", "name": agent}}))  # fmt: skip
                client.responses.cancel(created[2].id)
                for k in range(2):  # the application waits for these two, reading them through the proxy
                    while created[k].status in ("queued", "in_progress"):
                        created[k] = client.responses.retrieve(created[k].id)
                client.responses.create(model="gpt-4.1", input="plain", tools=TOOLS)
                assert list(client.responses.create(model="gpt-4.1", input="streamed", stream=True))
            assert wait_for(lambda: _all_ended(responses_truth(server.root_url)), 30), "responses unfinished"
            world = responses_truth(server.root_url)
            want = expected_counters(world["stats"])["runs"]
            exact = wait_for(lambda: counters(scrape(base))["runs"] == want, 20)
            assert exact, f"{counters(scrape(base))['runs']} != {want}\n{proc.output()}"
            assert wait_for(lambda: status(base)["exporter"]["pending_spans"] == 0, 20), proc.output()
            samples = scrape(base)
            assert proc.stop() == 0, proc.output()
        seen_by = time.time()
        hooks = responses_truth(server.root_url)["webhooks"]

    responses = {r["id"]: r for r in world["responses"]}
    background = [rid for rid, r in responses.items() if r["background"]]
    assert sorted(background) == sorted(r.id for r in created) and len(responses) == len(created) + 2
    assert responses[created[2].id]["status"] == "cancelled"
    assert hooks["given_up"] == 0 and hooks["delivered"] == len(background)
    assert total(samples, "stepscope_dropped_total", reason="webhook_invalid") == 0
    assert counters(samples)["runs"] == want and sum(want.values()) == len(responses)
    spans = one_span_each(list(receiver.spans))
    assert sorted(spans) == sorted(responses)
    for rid, response in responses.items():
        assert_response_span(spans[rid], response, provider="azure.ai.foundry", seen_by=seen_by)


def _all_ended(world: dict[str, Any]) -> bool:
    """Every response terminal, and the webhook of every background one delivered."""
    background = {r["id"] for r in world["responses"] if r["background"]}
    delivered = {d["response_id"] for d in world["webhooks"]["deliveries"] if d["delivered"]}
    return all(r["status"] in TERMINAL for r in world["responses"]) and background <= delivered
