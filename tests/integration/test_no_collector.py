"""Metrics never wait for traces: `stepscope serve` with the trace collector absent, refusing, hanging or killed.

Each case runs `serve` as a subprocess against a finite simulator workload, checks that the counters equal the
simulator's truth while no span can be delivered, then lets a collector on the same address take the backlog and
checks that every span arrives exactly once while no counter moves. One-minute outages are shortened to
10 seconds: what matters is that the counters are exact *during* the outage and that the backlog drains after it.
"""

from __future__ import annotations

import re
import signal
import sqlite3
import subprocess
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from stepscope.simulator import SimulatorServer
from tests.integration._collectors import (
    Collector,
    Expected,
    domain,
    expected_from,
    finished,
    mismatches,
    scrape,
    total,
    truth,
    wait_for,
    workload,
)
from tests.procs import Proc, serve, spawn, stepscope_cmd

pytestmark = pytest.mark.slow

RUNS = 8
OUTAGE_S = 10.0  # a minute's outage, shortened
COUNTED_WITHIN_S = 10.0  # 50 poll intervals of 0.2 s: generous for a shared 2-core box
DELIVERED_WITHIN_S = 40.0  # export retries back off up to several seconds once the collector is back
STOPPED_LINE = re.compile(r"stepscope stopped in [0-9.]+ ?s: (\d+) span\(s\) kept in the backlog for the next start")


def serve_env(server: SimulatorServer, collector: Collector) -> dict[str, str]:
    return {
        "OPENAI_BASE_URL": server.url,
        "OPENAI_API_KEY": "sk-sim",
        "STEPSCOPE_THREADS": ",".join(truth(server)["threads"]),
        "STEPSCOPE_POLL_INTERVAL": "0.2",
        "STEPSCOPE_DISCOVERY_INTERVAL": "0.5",
        "OTEL_EXPORTER_OTLP_ENDPOINT": collector.endpoint,
        "OTEL_BSP_SCHEDULE_DELAY": "100",
    }


def counted_without_traces(server: SimulatorServer, base: str, proc: Proc) -> Expected:
    """Wait for the workload to finish, then for the counters to equal its truth; returns the truth."""
    assert wait_for(lambda: finished(server, RUNS), 30), "the simulator workload did not finish"
    want = expected_from(truth(server))
    assert want.steps > RUNS  # a workload worth checking
    exact = wait_for(lambda: not mismatches(scrape(base), want), COUNTED_WITHIN_S)
    assert exact, f"counters differ from the truth: {mismatches(scrape(base), want)}\n{proc.output()}"
    return want


def backlog_rows(state: Path) -> int:
    db = sqlite3.connect(state)
    try:
        return int(db.execute("SELECT count(*) FROM backlog").fetchone()[0])
    finally:
        db.close()


def drained(collector: Collector, base: str, want: Expected) -> bool:
    return len(collector.received()) >= want.spans and total(scrape(base), "stepscope_span_backlog") == 0


def assert_exactly_once(collector: Collector, server: SimulatorServer, want: Expected) -> None:
    """Every run, step and tool call arrived as one span, none twice."""
    spans = collector.received()
    copies = Counter((s.trace_id, s.span_id) for s in spans)
    twice = {key: n for key, n in copies.items() if n > 1}
    assert not twice, f"{len(twice)} span(s) delivered more than once"
    assert len(spans) == want.spans
    step_ids = {s.attributes["openai.run_step.id"] for s in spans if s.name.startswith("run_step")}
    assert step_ids == {step["id"] for run in truth(server)["runs"] for step in run["steps"]}


@pytest.mark.parametrize("outage", ["absent", "refusing"])
def test_counters_exact_while_collector_down_then_every_span_once(tmp_path: Path, outage: str) -> None:
    """With nothing listening (or a collector answering 503) the counters equal the truth and every span waits in the
    backlog; once a collector accepts on that address every span arrives exactly once and no counter moves."""
    with Collector() as collector, workload(seed=31 if outage == "absent" else 32) as server:
        if outage == "refusing":
            collector.refuse_status = 503
            collector.listen()
        down_since = time.monotonic()
        with serve(tmp_path, serve_env(server, collector)) as (proc, base):
            want = counted_without_traces(server, base, proc)
            samples = scrape(base)
            assert total(samples, "stepscope_span_backlog") == want.spans
            assert total(samples, "stepscope_span_backlog_age_seconds") > 0
            assert httpx.get(f"{base}/v1/status", timeout=5).json()["exporter"]["pending_spans"] == want.spans
            assert httpx.get(f"{base}/readyz", timeout=5).status_code == 200, "readiness must not depend on traces"
            if outage == "refusing":
                assert wait_for(lambda: collector.requests > 0, OUTAGE_S), "serve never tried the collector"
                time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - down_since)))
                assert collector.received() == []
                collector.refuse_status = None
            else:
                collector.listen()
            assert wait_for(lambda: drained(collector, base, want), DELIVERED_WITHIN_S), (
                f"{len(collector.received())} of {want.spans} spans delivered\n{proc.output()}"
            )
            assert domain(scrape(base)) == domain(samples), "a counter moved while the backlog was delivered"
            assert proc.stop() == 0, proc.output()
        assert_exactly_once(collector, server, want)


def test_hanging_collector_sigterm_keeps_spans_for_the_next_start(tmp_path: Path) -> None:
    """Against a collector that accepts and never answers, SIGTERM exits within 10 s and its last line says how many
    spans stay in the backlog; the next start delivers each of them once and counts nothing again."""
    with Collector() as collector, workload(seed=33) as server:
        collector.hang = True
        collector.listen()
        env = serve_env(server, collector)
        with serve(tmp_path, env) as (proc, base):
            want = counted_without_traces(server, base, proc)
            assert wait_for(lambda: collector.requests > 0, 10), "serve never reached the hanging collector"
            started = time.monotonic()
            code = proc.stop(signal.SIGTERM, timeout=30)
            took = time.monotonic() - started
            output = proc.output()
        assert code == 0, output
        assert took < 10.0, f"SIGTERM took {took:.1f}s"
        last = output.strip().splitlines()[-1]
        match = STOPPED_LINE.search(last)
        assert match, f"last line: {last!r}"
        assert int(match.group(1)) == want.spans
        assert backlog_rows(tmp_path / "state.db") == want.spans

        collector.hang = False
        with serve(tmp_path, env, name="serve-restart") as (proc2, base2):
            assert wait_for(lambda: drained(collector, base2, want), DELIVERED_WITHIN_S), proc2.output()
            recounted = {key: v for key, v in domain(scrape(base2)).items() if v}
            assert proc2.stop() == 0, proc2.output()
        assert not recounted, f"the restart counted committed work again: {recounted}"
        assert_exactly_once(collector, server, want)


def test_kill_9_with_a_backlog_loses_no_span_and_counts_nothing_twice(tmp_path: Path) -> None:
    """A `kill -9` while every span waits for an absent collector loses none: the restart delivers each once, and its
    counters stay at zero because every step was committed (and counted) before the kill."""
    with Collector() as collector, workload(seed=34) as server:
        env = serve_env(server, collector)
        with serve(tmp_path, env) as (proc, base):
            want = counted_without_traces(server, base, proc)
            assert total(scrape(base), "stepscope_span_backlog") == want.spans
            assert proc.stop(signal.SIGKILL) == -signal.SIGKILL
        assert backlog_rows(tmp_path / "state.db") == want.spans

        collector.listen()
        with serve(tmp_path, env, name="serve-restart") as (proc2, base2):
            assert wait_for(lambda: drained(collector, base2, want), DELIVERED_WITHIN_S), proc2.output()
            recounted = {key: v for key, v in domain(scrape(base2)).items() if v}
            assert proc2.stop() == 0, proc2.output()
        assert not recounted, f"the restart counted committed work again: {recounted}"
        assert_exactly_once(collector, server, want)


def test_backfill_without_collector_ends_keeping_its_spans(tmp_path: Path) -> None:
    """`stepscope backfill` with no collector ends on its own with a summary naming the spans kept, exits non-zero,
    and leaves every span of the thread's runs in the backlog."""
    with Collector() as collector, workload(seed=35) as server:
        assert wait_for(lambda: finished(server, RUNS), 30), "the simulator workload did not finish"
        world = truth(server)
        thread = next(r["thread_id"] for r in world["runs"])
        want = expected_from({"runs": [r for r in world["runs"] if r["thread_id"] == thread]})
        env = {
            "OPENAI_BASE_URL": server.url,
            "OPENAI_API_KEY": "sk-sim",
            "STEPSCOPE_STATE": str(tmp_path / "state.db"),
            "OTEL_EXPORTER_OTLP_ENDPOINT": collector.endpoint,
        }
        proc = spawn(stepscope_cmd("backfill", "--thread", thread, "--since", "24h"), tmp_path / "backfill.log", env)
        try:
            code: int | None = proc.popen.wait(timeout=60)
        except subprocess.TimeoutExpired:
            code = None
        finally:
            proc.stop(signal.SIGKILL)
        output = proc.output()
    assert code is not None, f"backfill still running after 60 s:\n{output}"
    assert code == 1, output
    kept = [line for line in output.splitlines() if "kept" in line]
    assert kept, output
    assert re.search(rf"\b{want.spans}\b", kept[-1]), f"the summary should say {want.spans} span(s) kept: {kept[-1]!r}"
    assert "Traceback" not in output
    assert backlog_rows(tmp_path / "state.db") == want.spans
