"""The bridge against the simulator over real HTTP, with a real OTLP receiver: exactly once, exact timing."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from stepscope.commands.sidecar import Sidecar
from stepscope.commands.wiring import Seams
from stepscope.config import Config, load
from stepscope.simulator import SimClock, Simulator, SimulatorServer, scenario_named
from stepscope.testing import OtlpReceiver, ReceivedSpan, eventually

pytestmark = [pytest.mark.anyio, pytest.mark.slow]
NS = 1_000_000_000
TERMINAL_RUN = {"completed", "failed", "cancelled", "expired", "incomplete"}


@pytest.fixture
def receiver() -> Any:
    with OtlpReceiver() as r:
        yield r


@pytest.fixture
async def sim() -> AsyncIterator[tuple[Simulator, SimulatorServer]]:
    scenario = scenario_named(
        "lively",
        runs_per_second=2.0,
        threads=6,
        total_runs=24,
        expires_after_s=40.0,
        submit_delay_s=(0.5, 2.0),
        failure_rate=0.2,
        cancel_rate=0.1,
        expire_rate=0.1,
        incomplete_rate=0.1,
    )
    simulator = Simulator(scenario, seed=11, clock=SimClock(25.0))
    server = SimulatorServer(simulator).start()
    yield simulator, server
    server.shutdown()


def _config(server: SimulatorServer, simulator: Simulator, receiver: OtlpReceiver, state: Path, **extra: str) -> Config:
    return load(
        env={
            **extra,
            "OPENAI_BASE_URL": server.url,
            "OPENAI_API_KEY": "sk-sim",
            "STEPSCOPE_THREADS": ",".join(simulator.thread_ids),
            "STEPSCOPE_POLL_INTERVAL": "0.1",
            "STEPSCOPE_DISCOVERY_INTERVAL": "0.3",
            "STEPSCOPE_STATE": str(state),
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": receiver.url,
            "OTEL_BSP_SCHEDULE_DELAY": "50",
        }
    )


def _truth(server: SimulatorServer) -> dict[str, Any]:
    import httpx  # noqa: PLC0415

    return httpx.get(f"{server.root_url}/_sim/truth", timeout=10).json()  # type: ignore[no-any-return]


def _sample(registries: list[CollectorRegistry], name: str, labels: dict[str, str] | None = None) -> float:
    total = 0.0
    for registry in registries:
        for family in registry.collect():
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in (labels or {}).items()):
                    total += sample.value
    return total


async def test_every_step_exactly_once_across_a_restart(
    sim: tuple[Simulator, SimulatorServer], receiver: OtlpReceiver, tmp_path: Path
) -> None:
    """Across a restart on the same store, every terminal step is exported once, timed and parented exactly."""
    simulator, server = sim
    config = _config(server, simulator, receiver, tmp_path / "state.db")
    registries = [CollectorRegistry(), CollectorRegistry()]

    first = Sidecar(config, Seams(registry=registries[0]), serve_http=False)
    await first.start()
    await eventually(lambda: len(receiver.spans) > 30, 30, "first spans")
    # A step exported is a step the server calls terminal (read the spans first: terminal is permanent).
    exported = {
        s.attributes["openai.run_step.id"] for s in list(receiver.spans) if "openai.run_step.id" in s.attributes
    }
    in_truth = {s["id"]: s for r in _truth(server)["runs"] for s in r["steps"]}
    assert all(in_truth[step_id]["status"] != "in_progress" for step_id in exported)
    await first.shutdown()

    second = Sidecar(config, Seams(registry=registries[1]), serve_http=False)
    await second.start()
    try:

        def settled() -> bool:
            truth = _truth(server)
            runs = truth["runs"]
            return (
                len(runs) == 24
                and all(r["status"] in TERMINAL_RUN for r in runs)
                and second.parts.poller.tracked_count == 0
                and sum(1 for s in receiver.spans if s.kind == "client") >= 24
            )

        await eventually(settled, 90, "every run exported")
    finally:
        await second.shutdown()

    truth = _truth(server)
    spans = list(receiver.spans)
    by_id = Counter(s.span_id for s in spans)
    assert max(by_id.values()) == 1, "a span was exported twice"
    runs_by_id: dict[str, ReceivedSpan] = {s.attributes["openai.run.id"]: s for s in spans if s.kind == "client"}
    steps_by_id = {s.attributes["openai.run_step.id"]: s for s in spans if "openai.run_step.id" in s.attributes
                   and not s.name.startswith("execute_tool")}  # fmt: skip
    tools = [s for s in spans if s.name.startswith("execute_tool")]
    status_counts: Counter[str] = Counter()
    tokens = {"input": 0, "output": 0}
    expected_tools = 0
    for run in truth["runs"]:
        status_counts[run["status"]] += 1
        run_span = runs_by_id[run["id"]]
        assert run_span.start_ns == run["created_at"] * NS
        end = (
            run["expires_at"]
            if run["status"] == "expired"
            else (run["completed_at"] or run["failed_at"] or run["cancelled_at"])
        )
        assert run_span.end_ns == end * NS
        assert run_span.attributes["openai.run.status"] == run["status"]
        assert (run_span.status == "error") == (run["status"] in ("failed", "expired", "incomplete"))
        for step in run["steps"]:
            span = steps_by_id[step["id"]]
            assert span.trace_id == run_span.trace_id
            assert span.parent_span_id == run_span.span_id
            assert span.start_ns == step["created_at"] * NS
            ended = step[f"{step['status']}_at"]
            assert span.end_ns == ended * NS
            assert span.attributes["openai.run_step.status"] == step["status"]
            calls = step["step_details"].get("tool_calls", [])
            expected_tools += len(calls)
            for call in calls:
                (tool,) = [t for t in tools if t.attributes["gen_ai.tool.call.id"] == call["id"]]
                assert tool.parent_span_id == span.span_id
                assert (tool.start_ns, tool.end_ns) == (span.start_ns, span.end_ns)
            if step.get("usage"):
                tokens["input"] += step["usage"]["prompt_tokens"]
                tokens["output"] += step["usage"]["completion_tokens"]
    assert len(steps_by_id) == sum(len(r["steps"]) for r in truth["runs"])
    assert len(tools) == expected_tools
    for status, n in status_counts.items():
        assert _sample(registries, "stepscope_runs_total", {"status": status}) == n, status
    assert _sample(registries, "stepscope_run_steps_total") == len(steps_by_id)
    for token_type, n in tokens.items():
        assert _sample(registries, "stepscope_tokens_total", {"token_type": token_type}) == n
    assert {"failed", "completed", "cancelled", "expired", "incomplete"} <= set(status_counts)


async def test_shards_together_export_every_run_exactly_once(
    sim: tuple[Simulator, SimulatorServer], receiver: OtlpReceiver, tmp_path: Path
) -> None:
    """Three replicas with STEPSCOPE_SHARD=i/3 and their own stores export every run once between them."""
    simulator, server = sim
    services = []
    for index in range(3):
        config = _config(server, simulator, receiver, tmp_path / f"state-{index}.db", STEPSCOPE_SHARD=f"{index}/3")
        services.append(Sidecar(config, serve_http=False))
    for service in services:
        await service.start()
    try:

        def settled() -> bool:
            runs = _truth(server)["runs"]
            done = len(runs) == 24 and all(r["status"] in TERMINAL_RUN for r in runs)
            return done and sum(1 for s in receiver.spans if s.kind == "client") >= 24

        await eventually(settled, 90, "every run exported")
        await asyncio.sleep(0.5)  # a duplicate, if any, would arrive now
        owned = [len(s.parts.finders.discovery.watched()) for s in services]
    finally:
        for service in services:
            await service.shutdown()
    runs = Counter(s.attributes["openai.run.id"] for s in receiver.spans if s.kind == "client")
    assert sorted(runs) == sorted(r["id"] for r in _truth(server)["runs"])
    assert set(runs.values()) == {1}
    assert all(s.parts.poller.tracked_count == 0 for s in services)
    assert sum(owned) == len(simulator.thread_ids)
