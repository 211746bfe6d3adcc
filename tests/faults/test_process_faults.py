"""Fault cases 4 and 5: kill -9 under load three times on one store; a 401 and a missing thread."""

from __future__ import annotations

import random
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
BATCH = 512  # spans per delivery batch (the default export batch size)


def test_kill_9_three_times_under_load(tmp_path: Path, receiver: OtlpReceiver) -> None:
    """Three kill -9 at random moments under load, restarting on the same store, lose no step, re-export at most the
    delivery batch in flight at each crash, with the same ids, and never count a step twice."""
    rng = random.Random(4)
    counted = 0.0
    with simulator(tmp_path, "--scenario", "lively", "--speed", "30", "--seed", "15") as sim:
        threads = sim.truth()["threads"]
        assert isinstance(threads, list)
        env = serve_env(sim.url, receiver, threads)
        for life in range(3):
            with serve(tmp_path, env, name=f"life{life}") as (proc, base):
                time.sleep(rng.uniform(1.5, 4.0))
                counted += metric_sum(httpx.get(f"{base}/metrics").text, "stepscope_run_steps_total")
                proc.popen.kill()
                assert proc.popen.wait(10) == -9
        with serve(tmp_path, env, name="last") as (proc, base):
            time.sleep(3)
            expected = set(terminal_steps(sim.truth()))
            missing = wait_all_exported(receiver, expected, 40)
            counted += metric_sum(httpx.get(f"{base}/metrics").text, "stepscope_run_steps_total")
            assert proc.stop() == 0, proc.output()
    received = step_spans(receiver.spans)
    assert not missing, f"{len(missing)} of {len(expected)} terminal steps lost across the crashes"
    assert not reexports_with_other_ids(received), "a re-exported span changed its ids"
    again = sum(1 for copies in received.values() if len(copies) > 1)
    # A span leaves the backlog only after the backend took it: a crash can repeat the batch in flight, no more.
    assert again <= 3 * BATCH, f"{again} of {len(received)} steps exported again"
    # A step is counted in the transaction that commits it, and a committed step is never read again. Steps
    # committed between a scrape and its kill are counted but not scraped, so the sum can only fall short.
    assert counted <= len(received), "a step was counted twice"
    assert counted >= 0.9 * len(expected)


def test_auth_failure_and_missing_thread(tmp_path: Path, receiver: OtlpReceiver) -> None:
    """A 404 thread is dropped with a log line while the others export; a 401 leaves readiness alone and shows
    in /v1/status, in a metric and in one state-change log line (not one per request), never with the key."""
    with simulator(tmp_path, "--scenario", "steady", "--speed", "20", "--seed", "16") as sim:
        threads = sim.truth()["threads"]
        assert isinstance(threads, list)
        ghost = "thread_doesnotexist00000000000"
        with serve(tmp_path, serve_env(sim.url, receiver, [*threads[:10], ghost])) as (proc, base):
            wait_until(lambda: ghost in proc.output(), 15, "the missing thread to be logged", proc)
            assert receiver.wait_for(lambda spans: len(step_spans(spans)) > 10, 30), "the other threads stalled"
            status = httpx.get(f"{base}/v1/status").json()
            assert status["watched_threads"] == 10
            assert status["api"]["state"] == "ok"

            sim.set_faults({"default": {"auth_fail": True}})
            failing_at = time.monotonic()
            wait_until(lambda: httpx.get(f"{base}/v1/status").json()["api"]["state"] == "auth_failed", 15,
                       "auth_failed in /v1/status", proc)  # fmt: skip
            assert httpx.get(f"{base}/readyz").status_code == 200
            assert httpx.get(f"{base}/healthz").status_code == 200
            metrics = httpx.get(f"{base}/metrics").text
            time.sleep(max(0.0, 3 - (time.monotonic() - failing_at)))  # long enough for repeats to show
            output = proc.output()
            assert proc.stop() == 0, output
    assert metric_sum(metrics, "stepscope_api_requests_total", 'code="401"') > 0
    # One line each: the stage that acts on the error logs it; the client only counts.
    ghost_lines = [line for line in output.splitlines() if ghost in line]
    assert len(ghost_lines) == 1, ghost_lines
    assert "no longer watching" in ghost_lines[0]
    # A status 401 or the state change; not a port or a path that happens to contain the digits 401.
    auth_lines = [line for line in output.splitlines() if re.search(r"\b401\b", line) or "auth failed" in line]
    assert len(auth_lines) == 1, auth_lines
    assert "Assistants API auth failed" in auth_lines[0]
    assert "sk-sim" not in output
