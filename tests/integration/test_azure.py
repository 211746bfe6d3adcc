"""The bridge against the simulator's Azure AI Foundry Agents flavour, with every auth mode."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry

from stepscope.client.auth import Auth, AzureIdentityAuth
from stepscope.commands.sidecar import Sidecar
from stepscope.commands.wiring import Seams
from stepscope.config import load
from stepscope.simulator import SimClock, Simulator, SimulatorServer, scenario_named
from stepscope.testing import OtlpReceiver, eventually

pytestmark = [pytest.mark.anyio, pytest.mark.slow]
KEY = "az-key-0123456789"
TERMINAL = {"completed", "failed", "cancelled", "expired", "incomplete"}
RUNS = 12


@dataclass
class Token:
    token: str
    expires_on: int


class RotatingCredential:
    """An Entra-like credential whose tokens live `lifetime_s`; each new token revokes all but the previous one."""

    def __init__(self, simulator: Simulator, lifetime_s: float) -> None:
        self._simulator = simulator
        self._lifetime = lifetime_s
        self._lock = threading.Lock()
        self.issued = 0
        self.scopes: list[str] = []

    def get_token(self, scope: str) -> Token:
        with self._lock:
            self.issued += 1
            self.scopes.append(scope)
            current, previous = f"entra-{self.issued}", f"entra-{self.issued - 1}"
            self._simulator.app.accepted_keys = frozenset({current, previous})
            return Token(current, int(time.time() + self._lifetime))


@pytest.fixture
async def azure_sim() -> AsyncIterator[tuple[Simulator, SimulatorServer]]:
    scenario = scenario_named(
        "lively", runs_per_second=2.0, threads=4, total_runs=RUNS, expires_after_s=40.0, azure_tool_weight=0.6
    )
    simulator = Simulator(scenario, flavor="azure", api_key=KEY, accepted_tokens=("file-token-1",), seed=4,
                          clock=SimClock(25.0))  # fmt: skip
    server = SimulatorServer(simulator).start()
    yield simulator, server
    server.shutdown()


async def _run_to_quiescence(
    server: SimulatorServer,
    simulator: Simulator,
    tmp_path: Path,
    env: dict[str, str],
    auth: Auth | None = None,
    *,
    registry: CollectorRegistry | None = None,
    also: Callable[[], bool] = lambda: True,
) -> tuple[OtlpReceiver, CollectorRegistry, Sidecar]:
    receiver = OtlpReceiver().start()
    registry = registry or CollectorRegistry()
    config = load(
        env={
            "OPENAI_BASE_URL": server.url,
            "STEPSCOPE_FLAVOR": "azure",
            "STEPSCOPE_THREADS": ",".join(simulator.thread_ids),
            "STEPSCOPE_POLL_INTERVAL": "0.1",
            "STEPSCOPE_DISCOVERY_INTERVAL": "0.3",
            "STEPSCOPE_STATE": str(tmp_path / "state.db"),
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": receiver.url,
            "OTEL_BSP_SCHEDULE_DELAY": "50",
            **env,
        }
    )
    service = Sidecar(config, Seams(registry=registry, auth=auth), serve_http=False)
    await service.start()
    try:

        def settled() -> bool:
            runs = httpx.get(f"{server.root_url}/_sim/truth", timeout=10).json()["runs"]
            done = len(runs) == RUNS and all(r["status"] in TERMINAL for r in runs)
            return done and sum(1 for s in receiver.spans if s.kind == "client") >= RUNS and also()

        await eventually(settled, 60, "every Azure run exported")
    finally:
        await service.shutdown()
        receiver.shutdown()
    return receiver, registry, service


def _check_export(server: SimulatorServer, receiver: OtlpReceiver, registry: CollectorRegistry) -> None:
    truth = httpx.get(f"{server.root_url}/_sim/truth", timeout=10).json()
    spans = receiver.spans
    assert max(Counter(s.span_id for s in spans).values()) == 1
    assert {s.attributes.get("gen_ai.provider.name") for s in spans if s.kind == "client"} == {"azure.ai.agents"}
    steps = [s for r in truth["runs"] for s in r["steps"]]
    exported = {s.attributes["openai.run_step.id"] for s in spans if s.name.startswith("run_step")}
    assert exported == {s["id"] for s in steps}
    raw_tool_types = {c["type"] for s in steps for c in s["step_details"].get("tool_calls", [])}
    azure_only = raw_tool_types - {"function", "code_interpreter", "file_search"}
    assert azure_only, "the workload should include Azure's extra tool types"
    tool_spans = [s for s in spans if s.name.startswith("execute_tool")]
    for span in tool_spans:
        assert span.attributes["gen_ai.tool.type"] in ("function", "extension", "datastore")
    assert sum(_total(registry, "stepscope_runs_total", status=status) for status in TERMINAL) == RUNS
    assert _total(registry, "stepscope_api_requests_total", code="401") == 0  # no request ever used a stale token


def _total(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return sum(
        s.value
        for fam in registry.collect()
        for s in fam.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


@pytest.mark.parametrize("mode", ["api-key", "bearer", "token-file"])
async def test_auth_modes(mode: str, azure_sim: tuple[Simulator, SimulatorServer], tmp_path: Path) -> None:
    """With api-key, bearer and token-file auth every Azure run and step is exported once, as azure.ai.agents."""
    simulator, server = azure_sim
    env = {"STEPSCOPE_AUTH": mode}
    if mode == "token-file":
        token_file = tmp_path / "token"
        token_file.write_text("file-token-1\n")
        env["STEPSCOPE_TOKEN_FILE"] = str(token_file)
    else:
        env["OPENAI_API_KEY"] = KEY
    receiver, registry, _ = await _run_to_quiescence(server, simulator, tmp_path, env)
    _check_export(server, receiver, registry)


async def test_entra_token_refresh_loses_nothing(azure_sim: tuple[Simulator, SimulatorServer], tmp_path: Path) -> None:
    """Short-lived Entra tokens are refreshed before expiry, with the ai.azure.com scope; nothing is lost."""
    simulator, server = azure_sim
    simulator.app.accepted_keys = frozenset()  # only tokens the credential issues are valid
    # Tokens live 2-3 s (whole seconds) and are renewed 1 s before expiry: several rotations during the workload.
    credential = RotatingCredential(simulator, lifetime_s=3.0)
    auth = AzureIdentityAuth(credential, refresh_margin=1.0)
    receiver, registry, service = await _run_to_quiescence(
        server, simulator, tmp_path, {"STEPSCOPE_AUTH": "azure-identity"}, auth=auth
    )
    _check_export(server, receiver, registry)
    assert credential.issued >= 2
    assert set(credential.scopes) == {"https://ai.azure.com/.default"}
    assert service.parts.health.state == "ok"


async def test_rotated_token_file_is_reread(azure_sim: tuple[Simulator, SimulatorServer], tmp_path: Path) -> None:
    """A token file rewritten mid-run is picked up; the revoked token is never needed again."""
    simulator, server = azure_sim
    token_file = tmp_path / "token"
    token_file.write_text("file-token-1")

    registry = CollectorRegistry()
    requests_at_revocation: list[float] = []

    async def rotate() -> None:
        await asyncio.sleep(0.3)
        simulator.app.accepted_keys = frozenset({"file-token-1", "file-token-2"})
        token_file.write_text("file-token-2")
        await asyncio.sleep(1.5)  # the file is re-checked every second
        simulator.app.accepted_keys = frozenset({"file-token-2"})
        requests_at_revocation.append(_total(registry, "stepscope_api_requests_total"))

    rotation = asyncio.create_task(rotate())
    receiver, _, service = await _run_to_quiescence(
        server,
        simulator,
        tmp_path,
        {"STEPSCOPE_AUTH": "token-file", "STEPSCOPE_TOKEN_FILE": str(token_file)},
        registry=registry,
        also=rotation.done,
    )
    _check_export(server, receiver, registry)
    assert service.parts.health.state == "ok"
    assert _total(registry, "stepscope_api_requests_total") > requests_at_revocation[0]  # requests after revocation
