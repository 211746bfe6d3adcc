"""The Azure flavour, dropped connections over a real socket, and the `python -m stepscope.simulator` command."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from stepscope.simulator import FaultConfig, FaultSpec, ManualClock, Simulator, SimulatorServer, scenario_named

AZURE_QUERY = {"api-version": "v1"}


def _azure() -> tuple[Simulator, ManualClock]:
    clock = ManualClock()
    sim = Simulator(scenario_named("lively", azure_tool_weight=2.0), flavor="azure", api_key="az-key",
                    accepted_tokens=("entra-token",), clock=clock, seed=5)  # fmt: skip
    clock.advance(90)
    return sim, clock


def _azure_client(sim: Simulator, headers: dict[str, str]) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=sim.transport(), base_url="http://sim" + sim.base_path, headers=headers)


@pytest.mark.anyio
async def test_azure_serves_project_paths_with_api_key_or_bearer() -> None:
    """Azure paths live under /api/projects/{project} without /v1; api-key and Bearer both authenticate."""
    sim, _ = _azure()
    assert sim.base_path == "/api/projects/sim"
    thread = sim.thread_ids[0]
    for headers in ({"api-key": "az-key"}, {"Authorization": "Bearer entra-token"}):
        async with _azure_client(sim, headers) as client:
            resp = await client.get(f"/threads/{thread}/runs", params=AZURE_QUERY)
        assert resp.status_code == 200
    async with _azure_client(sim, {"api-key": "wrong"}) as client:
        assert (await client.get(f"/threads/{thread}/runs", params=AZURE_QUERY)).status_code == 401


@pytest.mark.anyio
async def test_azure_requires_api_version() -> None:
    """A request without api-version is 400 naming the parameter."""
    sim, _ = _azure()
    async with _azure_client(sim, {"api-key": "az-key"}) as client:
        resp = await client.get(f"/threads/{sim.thread_ids[0]}/runs")
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "api-version"


@pytest.mark.anyio
async def test_azure_lists_and_objects_have_the_azure_shape() -> None:
    """Azure lists are {data, last_id, has_more}; extra tool types appear, usage is sometimes absent."""
    sim, _ = _azure()
    tool_types: set[str] = set()
    no_usage = 0
    async with _azure_client(sim, {"api-key": "az-key"}) as client:
        for run in sim.truth()["runs"]:
            path = f"/threads/{run['thread_id']}/runs/{run['id']}/steps"
            body: dict[str, Any] = (await client.get(path, params={**AZURE_QUERY, "limit": 100})).json()
            assert set(body) == {"data", "last_id", "has_more"}
            for step in body["data"]:
                no_usage += "usage" not in step
                tool_types.update(c["type"] for c in step["step_details"].get("tool_calls", []))
        runs = (await client.get(f"/threads/{run['thread_id']}/runs", params=AZURE_QUERY)).json()["data"]
    assert {"bing_grounding", "mcp", "connected_agent", "azure_function"} <= tool_types
    assert no_usage > 0
    assert all("required_action" not in r for r in runs if r["status"] != "requires_action")


def test_drop_closes_the_socket_without_a_response() -> None:
    """Over uvicorn, drop_rate 1 closes the connection before any response byte; other endpoints still work."""
    sim = Simulator(scenario_named("quiet"), FaultConfig(endpoints={"list_runs": FaultSpec(drop_rate=1.0)}),
                    clock=ManualClock())  # fmt: skip
    headers = {"Authorization": "Bearer sk-sim", "OpenAI-Beta": "assistants=v2"}
    with SimulatorServer(sim) as server, httpx.Client(base_url=server.url, headers=headers) as client:
        with pytest.raises(httpx.RemoteProtocolError, match="without sending"):
            client.get(f"/threads/{sim.thread_ids[0]}/runs")
        assert client.get(f"/threads/{sim.thread_ids[0]}").status_code == 200


def test_module_command_serves_truth_and_exits_zero_on_sigterm(tmp_path: Path) -> None:
    """`python -m stepscope.simulator --port 0` logs its URL, serves /_sim/truth and exits 0 on SIGTERM."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    log_path = tmp_path / "sim.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "stepscope.simulator", "--port", "0", "--speed", "50", "--scenario", "lively",
             "--fault", "list_steps:error_rate=0.5"],
            stdout=log, stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 20
            while "listening url=" not in log_path.read_text():
                assert time.monotonic() < deadline and proc.poll() is None, log_path.read_text()
                time.sleep(0.05)
            url = log_path.read_text().split("listening url=")[1].split()[0]
            root = url.removesuffix("/v1")
            time.sleep(0.5)
            truth = httpx.get(root + "/_sim/truth").json()
            faults = httpx.get(root + "/_sim/faults").json()
            assert len(truth["threads"]) == 60 and truth["runs"]
            assert faults["endpoints"]["list_steps"]["error_rate"] == 0.5
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(15) == 0
