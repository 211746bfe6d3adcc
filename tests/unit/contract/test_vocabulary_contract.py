"""The simulator keeps its own words on purpose (it plays a foreign server); here they must agree with the bridge's.

Each test compares one of the simulator's copies with `stepscope.contract.vocabulary`, the records or the mapping, or
runs the simulator and checks that everything it serves is something the bridge knows.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from stepscope.client.auth import make_auth
from stepscope.contract.vocabulary import AuthMode, Flavor
from stepscope.protocols.agents import records as agents_models
from stepscope.protocols.agents import vocabulary as agents_vocabulary
from stepscope.protocols.assistants import records as models
from stepscope.protocols.assistants import vocabulary as assistants_vocabulary
from stepscope.simulator import Simulator, scenario_named
from stepscope.simulator import core as sim_core
from stepscope.simulator import faults as sim_faults
from stepscope.simulator import scenario as sim_scenario
from stepscope.simulator import state as sim_state
from stepscope.simulator.agents import state as sim_agents_state
from stepscope.testing import FakeClock

KEY = "sk-contract-0123456789"


def _served(flavor: str) -> list[dict[str, Any]]:
    """Every run (with its steps) a lively simulator of `flavor` served after ten simulated minutes."""
    clock = FakeClock()
    sim = Simulator(scenario_named("lively"), flavor=flavor, clock=clock, seed=7)
    clock.advance(600)
    runs: list[dict[str, Any]] = sim.truth()["runs"]
    return runs


def test_flavours_agree() -> None:
    """The simulator serves exactly the flavours the bridge can be configured for."""
    assert tuple(sim_core.FLAVORS) == tuple(Flavor)


def test_every_bridge_endpoint_is_one_the_simulator_serves() -> None:
    """Each endpoint the clients name is an endpoint of the simulator, so faults can target every one of them."""
    assert set(assistants_vocabulary.Endpoint) <= sim_faults.ENDPOINTS
    assert set(agents_vocabulary.Endpoint) <= sim_faults.AGENTS_ENDPOINTS


def test_terminal_run_statuses_agree() -> None:
    """The simulator ends runs in exactly the statuses the models and the metrics call terminal."""
    assert sim_state.RUN_TERMINAL == models.RUN_TERMINAL == frozenset(assistants_vocabulary.RUN_STATUSES)


def test_terminal_turn_statuses_and_tool_call_items_agree() -> None:
    """The simulated Agents API ends turns, and makes tool calls, with exactly the statuses and item types the
    Agents models call terminal and tool calls."""
    assert sim_agents_state.TURN_TERMINAL == agents_models.TURN_TERMINAL
    assert sim_agents_state.TOOL_CALL_TYPES == agents_models.TOOL_CALL_ITEM_TYPES


def test_simulated_tool_kinds_are_known_to_the_mapping() -> None:
    """Every tool kind the simulator can put in a step has a `gen_ai.tool.type` of its own in the mapping."""
    kinds = {k for k in sim_scenario.STEP_KINDS if k != "message_creation"} | set(sim_scenario.AZURE_TOOL_KINDS)
    assert kinds <= set(assistants_vocabulary.TOOL_TYPES)


@pytest.mark.parametrize("flavor", list(Flavor))
def test_served_runs_and_steps_use_the_bridges_values(flavor: str) -> None:
    """Runs, steps and tool calls the simulator serves carry only statuses and types the bridge knows."""
    runs = _served(flavor)
    steps = [step for run in runs for step in run["steps"]]
    assert runs and steps
    assert {run["status"] for run in runs if run["status"] in sim_state.RUN_TERMINAL} <= models.RUN_TERMINAL
    assert {step["type"] for step in steps} <= set(assistants_vocabulary.STEP_TYPES)
    finished = {step["status"] for step in steps if step["status"] != "in_progress"}
    assert finished <= set(assistants_vocabulary.STEP_STATUSES)
    calls = [call for step in steps for call in (step["step_details"].get("tool_calls") or [])]
    assert calls
    assert {call["type"] for call in calls} <= set(assistants_vocabulary.TOOL_TYPES)


@pytest.mark.parametrize(
    ("flavor", "mode"),
    [(Flavor.OPENAI, AuthMode.BEARER), (Flavor.AZURE, AuthMode.BEARER), (Flavor.AZURE, AuthMode.API_KEY)],
)
def test_simulator_accepts_the_auth_headers_the_bridge_sends(flavor: Flavor, mode: AuthMode) -> None:
    """The headers each static-key auth mode produces are accepted by the flavour that takes them."""

    async def status() -> int:
        sim = Simulator(scenario_named("quiet"), flavor=flavor, api_key=KEY, clock=FakeClock())
        headers = await make_auth(mode, key=KEY).headers()
        params = {"api-version": "v1"} if flavor == Flavor.AZURE else {}
        async with httpx.AsyncClient(transport=sim.transport(), base_url="http://sim" + sim.base_path) as http:
            wrong = await http.get("assistants", headers={"authorization": "Bearer sk-wrong-000000"}, params=params)
            assert wrong.status_code == 401
            reply = await http.get("assistants", headers={**headers, "OpenAI-Beta": "assistants=v2"}, params=params)
            return reply.status_code

    assert asyncio.run(status()) == 200
