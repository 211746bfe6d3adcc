"""Fault cases 3 and 6: a collector that refuses for 30 seconds, and SIGTERM while a backlog is being exported."""

from __future__ import annotations

import re
import time
from pathlib import Path

import httpx
import pytest

from stepscope.testing import OtlpReceiver
from tests.faults.harness import (
    metric_sum,
    reexports_with_other_ids,
    serve_env,
    step_spans,
    terminal_steps,
    wait_all_exported,
)
from tests.procs import serve, simulator, wait_until

pytestmark = pytest.mark.slow

SIM_ARGS = ("--scenario", "steady", "--speed", "20")


def test_collector_refuses_for_30_seconds(tmp_path: Path, receiver: OtlpReceiver) -> None:
    """While the collector refuses for 30 s steps stay pending and the failure shows; once it accepts again every
    terminal step arrives, re-exports keep their ids and nothing is counted twice: no span is lost."""
    with simulator(tmp_path, *SIM_ARGS, "--seed", "13") as sim:
        threads = sim.truth()["threads"]
        assert isinstance(threads, list)
        with serve(tmp_path, serve_env(sim.url, receiver, threads)) as (proc, base):
            assert receiver.wait_for(lambda spans: len(step_spans(spans)) > 5, 20)
            receiver.refuse_status = 503
            refused_at = time.monotonic()
            wait_until(lambda: httpx.get(f"{base}/v1/status").json()["exporter"]["state"] == "failing", 25,
                       "the exporter to report failing", proc)  # fmt: skip
            during = httpx.get(f"{base}/metrics").text
            status = httpx.get(f"{base}/v1/status").json()
            time.sleep(max(0.0, 30 - (time.monotonic() - refused_at)))
            expected = set(terminal_steps(sim.truth()))
            before = len(step_spans(receiver.spans))
            receiver.refuse_status = None
            missing = wait_all_exported(receiver, expected, 45)
            recovered = httpx.get(f"{base}/v1/status").json()["exporter"]["state"]
            final = httpx.get(f"{base}/metrics").text
            assert proc.stop() == 0, proc.output()
            output = proc.output()
    assert len(expected) > before + 40, "the refusal window saw too little traffic to prove anything"
    assert not missing, f"{len(missing)} of {len(expected)} terminal steps lost to the refusal"
    # A batch split across a failing and a succeeding request re-exports the step it straddles: same ids only.
    received = step_spans(receiver.spans)
    assert not reexports_with_other_ids(received)
    assert metric_sum(final, "stepscope_run_steps_total") <= len(received), "a step was counted twice"
    assert metric_sum(during, "stepscope_span_export_failures_total") > 0
    assert status["api"]["state"] == "ok"  # a failing collector is not an API problem
    assert recovered == "ok"
    assert output.count("span export failing") == 1, "the state change is logged once, not per batch"


def test_sigterm_during_busy_export(tmp_path: Path, receiver: OtlpReceiver) -> None:
    """SIGTERM while a refused backlog is being exported delivers it within the deadline and exits 0, saying so; a
    restart on the same store exports the rest; re-exports keep their ids."""
    with simulator(tmp_path, "--scenario", "lively", "--speed", "30", "--seed", "14") as sim:
        threads = sim.truth()["threads"]
        assert isinstance(threads, list)
        env = serve_env(sim.url, receiver, threads)
        with serve(tmp_path, env) as (proc, _base):
            assert receiver.wait_for(lambda spans: len(step_spans(spans)) > 5, 20)
            receiver.refuse_status = 503
            time.sleep(4)
            receiver.refuse_status = None
            requests = receiver.requests
            assert receiver.wait_for_requests(requests + 1, 10), "no export in progress"
            started = time.monotonic()
            code = proc.stop()
            took = time.monotonic() - started
            output = proc.output()
            stopped_at_truth = set(terminal_steps(sim.truth()))
        assert code == 0, output
        assert took < 10.5, f"shutdown took {took:.1f}s"
        match = re.search(r"stepscope stopped in [0-9.]+s: (.*)", output)
        assert match, output
        assert match.group(1) == "all spans delivered"
        first_life = set(step_spans(receiver.spans))

        with serve(tmp_path, env, name="serve-again") as (proc2, _base2):
            missing = wait_all_exported(receiver, stopped_at_truth, 40)
            assert proc2.stop() == 0, proc2.output()
    assert not missing, f"{len(missing)} steps terminal at SIGTERM never exported"
    assert len(first_life) > 20
    received = step_spans(receiver.spans)
    assert not reexports_with_other_ids(received)
