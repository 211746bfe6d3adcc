"""The simulated Responses application: the workload sent over HTTP from outside the simulator, as the demo sends it
through the proxy. Most tests run it against the simulator under uvicorn; the bounds and the lifecycle are checked
against a transport that never answers, on a `ManualClock`."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from stepscope.simulator import ManualClock, SimClock, Simulator, SimulatorServer, scenario_named
from stepscope.simulator.responses import ResponsesWorkload
from stepscope.simulator.responses.application import GIVE_UP_S, ResponsesApplication

pytestmark = pytest.mark.anyio

CALM: dict[str, Any] = {"failure_rate": 0.0, "incomplete_rate": 0.0, "cancel_rate": 0.0}
WAIT_S = 20.0  # a bound on waiting for the application to get somewhere, never an expected duration


@pytest.fixture
def server() -> Iterator[SimulatorServer]:
    """A calm `lively` Responses simulator over real HTTP, 50 simulated seconds per second, its workload outside."""
    sim = Simulator(scenario_named("lively", **CALM), clock=SimClock(50), seed=3, protocol="responses",
                    external_workload=True)  # fmt: skip
    with SimulatorServer(sim) as running:
        yield running


async def _until(done: Callable[[], bool], what: str) -> None:
    """Wait until `done()` holds, failing with `what` after `WAIT_S`."""
    try:
        async with asyncio.timeout(WAIT_S):
            while True:
                if done():
                    return
                await asyncio.sleep(0.02)
    except TimeoutError:
        pytest.fail(f"still waiting for {what}")


async def _truth(server: SimulatorServer) -> dict[str, Any]:
    """The simulator's Responses truth, read over HTTP (the simulator's loop runs in its own thread)."""
    async with httpx.AsyncClient() as client:
        answer = await client.get(f"{server.root_url}/_sim/truth")
    truth: dict[str, Any] = answer.json()["responses"]
    return truth


def _blocked(clock: ManualClock, *, max_in_flight: int, gate: asyncio.Event) -> ResponsesApplication:
    """An application on `clock` whose requests are answered only once `gate` is set."""

    async def handler(request: httpx.Request) -> httpx.Response:
        await gate.wait()
        return httpx.Response(500)

    return ResponsesApplication("http://api.invalid/v1", "sk-sim", scenario_named("lively"), knobs=ResponsesWorkload(),
                                clock=clock, seed=1, max_in_flight=max_in_flight,
                                transport=httpx.MockTransport(handler))  # fmt: skip


async def test_sends_every_mode_over_http_and_answers_function_calls(server: SimulatorServer) -> None:
    """Over real HTTP the application creates plain, streamed and background responses with tools, answers function
    calls with follow-ups, and every response in the simulator is one it created (`source` `client`)."""
    app = server.simulator.application(server.url)
    assert isinstance(app, ResponsesApplication)
    await app.start()
    stats = app.stats
    try:
        await _until(lambda: stats.finished >= 20 and min(stats.creates.values()) > 0 and stats.follow_ups > 0,
                     f"every mode and a follow-up: {stats}")  # fmt: skip
    finally:
        await app.stop()
    assert stats.failed == stats.dropped == stats.gave_up == 0
    assert stats.polls > 0  # background responses were read until terminal
    truth = await _truth(server)
    responses = truth["responses"]
    assert {r["source"] for r in responses} == {"client"}
    assert len(responses) <= sum(stats.creates.values())  # a create cancelled by stop() may not have arrived
    assert any(r["background"] for r in responses)
    follow_ups = [r for r in responses if r["previous_response_id"]]
    assert follow_ups
    assert all(r["input_items"][0]["type"] == "function_call_output" for r in follow_ups)
    assert any(r["tools"] for r in responses) and any(not r["tools"] for r in responses)
    calls = truth["stats"]["tool_calls"]
    assert "function_call" in calls and set(calls) - {"function_call"}  # hosted tool calls too


async def test_a_failing_api_is_counted_logged_once_and_survived(
    server: SimulatorServer, caplog: pytest.LogCaptureFixture
) -> None:
    """While every create fails the application counts the failures and logs the first only; once the API answers
    again it says so once and goes on creating responses."""
    caplog.set_level(logging.INFO, logger="stepscope.simulator.responses.application")
    app = server.simulator.application(server.url)
    assert isinstance(app, ResponsesApplication)
    async with httpx.AsyncClient(base_url=server.root_url) as control:
        failing = {"endpoints": {"create_response": {"error_rate": 1.0}}}
        assert (await control.post("/_sim/faults", json=failing)).status_code == 200
        await app.start()
        try:
            await _until(lambda: app.stats.failed >= 5, f"failures: {app.stats}")
            assert (await control.post("/_sim/faults", json={})).status_code == 200
            finished = app.stats.finished
            await _until(lambda: app.stats.finished >= finished + 3, f"recovery: {app.stats}")
        finally:
            await app.stop()
    messages = [r.getMessage() for r in caplog.records]
    assert len([m for m in messages if "failed (status 5" in m]) == 1, messages
    assert len([m for m in messages if "succeed again" in m]) == 1, messages


async def test_arrivals_past_the_bound_are_dropped_and_counted(caplog: pytest.LogCaptureFixture) -> None:
    """With `max_in_flight` exchanges waiting on the API, further arrivals are dropped and counted, with one
    warning for the episode; nothing is sent for them."""
    clock, gate = ManualClock(), asyncio.Event()
    app = _blocked(clock, max_in_flight=2, gate=gate)
    await app.start()
    try:
        clock.advance(60.0)  # about 90 arrivals of `lively` are due at once
        await _until(lambda: app.stats.dropped > 0, f"drops: {app.stats}")
        assert app.in_flight == app.stats.started == 2
        assert sum(app.stats.creates.values()) == 2
        assert len([r for r in caplog.records if "dropping" in r.getMessage()]) == 1
    finally:
        gate.set()
        await app.stop()


async def test_stop_cancels_what_is_in_flight_and_is_idempotent() -> None:
    """`stop()` cancels exchanges still waiting on the API; a second `stop()`, a `stop()` without `start()` and a
    `start()` after `stop()` do nothing."""
    clock, gate = ManualClock(), asyncio.Event()
    never_started = _blocked(clock, max_in_flight=4, gate=gate)
    await never_started.stop()
    app = _blocked(clock, max_in_flight=4, gate=gate)
    await app.start()
    clock.advance(10.0)
    await _until(lambda: app.in_flight == 4, f"exchanges in flight: {app.stats}")
    await app.stop()
    assert app.in_flight == 0
    assert app.stats.failed == 0  # cancelled, not failed
    await app.stop()
    await app.start()
    clock.advance(10.0)
    await asyncio.sleep(0.05)
    assert app.stats.started == 4


async def test_a_background_response_stuck_in_queued_is_cancelled() -> None:
    """A background response still queued `GIVE_UP_S` simulated seconds after its create is cancelled, as an
    application gives up on it; the exchange counts as given up."""
    clock = ManualClock()
    stuck = ResponsesWorkload(background_share=1.0, stuck_queued_rate=1.0)
    sim = Simulator(scenario_named("steady", total_runs=1), clock=clock, protocol="responses", external_workload=True,
                    responses_workload=stuck)  # fmt: skip
    app = ResponsesApplication("http://sim/v1", sim.api_key, sim.scenario, knobs=stuck, clock=clock, seed=1,
                               transport=sim.transport())  # fmt: skip
    await app.start()
    try:
        async with asyncio.timeout(WAIT_S):
            while app.stats.gave_up == 0:
                clock.advance(GIVE_UP_S / 20)
                await asyncio.sleep(0.01)
    finally:
        await app.stop()
    assert app.stats.creates == {"plain": 0, "stream": 0, "background": 1}
    [response] = sim.truth()["responses"]["responses"]
    assert response["status"] == "cancelled" and response["background"]


def test_only_a_workload_that_must_run_outside_has_an_application() -> None:
    """`application()` exists for Responses on openai with `external_workload`, whose in-simulator workload then
    stays off; Foundry (which lists responses) and the other protocols keep theirs inside and have none."""
    clock = ManualClock()
    outside = Simulator(scenario_named("lively"), clock=clock, protocol="responses", external_workload=True)
    inside = Simulator(scenario_named("lively"), clock=clock, protocol="responses")
    assert isinstance(outside.application("http://127.0.0.1:1/v1"), ResponsesApplication)
    assert inside.application("http://127.0.0.1:1/v1") is None
    for protocol, flavor in (("responses", "azure"), ("assistants", "openai"), ("agents", "openai")):
        sim = Simulator(scenario_named("lively"), clock=clock, protocol=protocol, flavor=flavor,
                        external_workload=True)  # fmt: skip
        assert sim.application("http://127.0.0.1:1/v1") is None
        assert not sim.external_workload
    clock.advance(60.0)
    assert outside.truth()["responses"]["stats"]["responses"] == 0
    assert inside.truth()["responses"]["stats"]["responses"] > 0
