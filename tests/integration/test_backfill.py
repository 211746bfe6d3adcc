"""`stepscope backfill`: finished runs exported once, and never again."""

from __future__ import annotations

import io
import re
import signal
import sqlite3
from collections import Counter
from contextlib import redirect_stdout
from pathlib import Path

import httpx
import pytest

from stepscope.commands.backfill import run_backfill
from stepscope.config import load
from stepscope.simulator import SimClock, Simulator, SimulatorServer, scenario_named
from stepscope.testing import OtlpReceiver, eventually
from tests.procs import simulator as simulator_process
from tests.procs import spawn, stepscope_cmd, wait_until

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


async def test_backfill_with_traces_off_says_so(tmp_path: Path) -> None:
    """With traces off a backfill commits the runs and its summary says `traces off`, not that spans were
    delivered."""
    scenario = scenario_named("steady", runs_per_second=3.0, threads=1, total_runs=3)
    simulator = Simulator(scenario, seed=22, clock=SimClock(40.0))
    with SimulatorServer(simulator) as server:
        terminal = {"completed", "failed", "cancelled", "expired", "incomplete"}

        def finished() -> bool:
            runs = httpx.get(f"{server.root_url}/_sim/truth", timeout=10).json()["runs"]
            return len(runs) == 3 and all(r["status"] in terminal for r in runs)

        await eventually(finished, 30, "runs")
        config = load(
            env={
                "OPENAI_BASE_URL": server.url,
                "OPENAI_API_KEY": "sk-sim",
                "STEPSCOPE_THREADS": simulator.thread_ids[0],
                "STEPSCOPE_LOOKBACK": "1d",
                "STEPSCOPE_POLL_INTERVAL": "0.1",
                "STEPSCOPE_STATE": str(tmp_path / "state.db"),
                "OTEL_TRACES_EXPORTER": "none",
            }
        )
        out = io.StringIO()
        with redirect_stdout(out):
            assert await run_backfill(config) == 0
    assert "backfilled 3 of 3 run(s) from 1 thread(s); traces off" in out.getvalue()
    assert "delivered" not in out.getvalue()


def test_interrupted_backfill_exits_130_with_its_summary(tmp_path: Path) -> None:
    """SIGINT after a backfill of a slow API committed its first run stops it: exit 130 and a summary of the runs
    found and committed, instead of exit 0 and none."""
    with simulator_process(tmp_path, "--scenario", "steady", "--speed", "40", "--threads", "1",
                           "--fault-latency-ms", "250") as sim:  # fmt: skip
        thread = sim.truth()["threads"][0]
        terminal = {"completed", "failed", "cancelled", "expired", "incomplete"}
        wait_until(lambda: sum(r["status"] in terminal for r in sim.truth()["runs"]) >= 6, 30, "finished runs")
        state = tmp_path / "state.db"
        env = {"OPENAI_BASE_URL": sim.url, "OPENAI_API_KEY": "sk-sim", "OTEL_TRACES_EXPORTER": "none",
               "STEPSCOPE_CONCURRENCY": "1"}  # fmt: skip
        proc = spawn(stepscope_cmd("backfill", "--thread", thread, "--since", "1d", "--state", str(state)),
                     tmp_path / "backfill.log", env)  # fmt: skip
        wait_until(lambda: state.exists() and committed_runs(state) >= 1, 30, "the first run committed", proc)
        code = proc.stop(signal.SIGINT)
    output = proc.output()
    assert code == 130, output
    summary = re.search(r"interrupted: backfilled (\d+) of (\d+) run\(s\) found in 1 thread\(s\); traces off", output)
    assert summary is not None, output
    assert 1 <= int(summary.group(1)) < int(summary.group(2)), output
    assert "run backfill again to finish" in output


def committed_runs(state: Path) -> int:
    """Runs the store at `state` holds as done."""
    db = sqlite3.connect(state)
    try:
        return int(db.execute("SELECT count(*) FROM runs WHERE done = 1").fetchone()[0])
    except sqlite3.OperationalError:  # the schema is not there yet
        return 0
    finally:
        db.close()
