"""`stepscope backfill`: finished runs exported once, and never again."""

from __future__ import annotations

import io
from collections import Counter
from contextlib import redirect_stdout
from pathlib import Path

import httpx
import pytest

from stepscope.commands.backfill import run_backfill
from stepscope.config import load
from stepscope.simulator import SimClock, Simulator, SimulatorServer, scenario_named
from stepscope.testing import OtlpReceiver, eventually

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


async def test_backfill_exports_finished_runs_once(tmp_path: Path) -> None:
    """A backfill exports every finished run of the thread; a second one over the same store exports nothing."""
    scenario = scenario_named("steady", runs_per_second=3.0, threads=2, total_runs=8)
    simulator = Simulator(scenario, seed=21, clock=SimClock(40.0))
    with SimulatorServer(simulator) as server, OtlpReceiver() as receiver:

        def truth() -> list[dict[str, object]]:
            return httpx.get(f"{server.root_url}/_sim/truth", timeout=10).json()["runs"]  # type: ignore[no-any-return]

        terminal = {"completed", "failed", "cancelled", "expired", "incomplete"}
        await eventually(lambda: len(truth()) == 8 and all(r["status"] in terminal for r in truth()), 30, "runs")
        thread = simulator.thread_ids[0]
        expected = sorted(r["id"] for r in truth() if r["thread_id"] == thread)  # type: ignore[type-var]
        assert expected
        config = load(
            env={
                "OPENAI_BASE_URL": server.url,
                "OPENAI_API_KEY": "sk-sim",
                "STEPSCOPE_THREADS": thread,
                "STEPSCOPE_LOOKBACK": "1d",
                "STEPSCOPE_POLL_INTERVAL": "0.1",
                "STEPSCOPE_STATE": str(tmp_path / "state.db"),
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": receiver.url,
                "OTEL_BSP_SCHEDULE_DELAY": "50",
            }
        )
        out = io.StringIO()
        with redirect_stdout(out):
            assert await run_backfill(config) == 0
            assert await run_backfill(config) == 0
        runs = Counter(s.attributes["openai.run.id"] for s in receiver.spans if s.kind == "client")
        assert sorted(runs) == expected
        assert set(runs.values()) == {1}
        n = len(expected)
        assert f"backfilled {n} of {n} run(s) from 1 thread(s); all spans delivered" in out.getvalue()
        assert "backfilled 0 of 0 run(s)" in out.getvalue()
