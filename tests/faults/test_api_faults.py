"""Fault cases 1 and 2: a flaky, rate-limiting, slow API and a malformed, drifting one. Nothing lost, nothing twice."""

from __future__ import annotations

import json
import time
import zlib
from pathlib import Path

import httpx
import pytest

from stepscope.simulator.faults import FaultConfig, FaultSpec
from stepscope.testing import OtlpReceiver
from tests.faults.harness import (
    Exchange,
    RecordedSimulator,
    metric_sum,
    serve_env,
    step_spans,
    terminal_steps,
    wait_all_exported,
)
from tests.procs import serve

pytestmark = pytest.mark.slow

# A 429 answer and a request the client had already sent can cross on the wire: allow this much after the answer.
IN_FLIGHT_GRACE_S = 0.15


def retry_after_violations(log: list[Exchange]) -> list[tuple[Exchange, Exchange]]:
    """Pairs (429 with retry-after R, a request that arrived after it but before R elapsed, past the grace)."""
    violations: list[tuple[Exchange, Exchange]] = []
    limited = [e for e in log if e.status == 429 and e.retry_after]
    for answer in limited:
        assert answer.retry_after is not None
        opens, closes = answer.answered + IN_FLIGHT_GRACE_S, answer.answered + answer.retry_after - 0.02
        violations.extend((answer, e) for e in log if opens < e.arrived < closes)
    return violations


def test_retry_after_check_can_fail() -> None:
    """The retry-after check flags a request sent 0.5 s into a 1 s retry-after, and not one sent after it."""
    answer = Exchange("/v1/threads/t/runs", 10.0, 10.0, 429, 1.0)
    early = Exchange("/v1/threads/t/runs/r/steps", 10.5, 10.5, 200, None)
    late = Exchange("/v1/threads/t/runs/r/steps", 11.01, 11.01, 200, None)
    assert retry_after_violations([answer, early, late]) == [(answer, early)]


def test_flaky_rate_limited_slow_api(tmp_path: Path, receiver: OtlpReceiver) -> None:
    """With 10% 5xx, 429 bursts with retry-after and jittered latency every terminal step is exported exactly once
    and no request reaches the API before a retry-after elapsed."""
    flaky = FaultSpec(latency_ms=15, jitter_ms=15, error_rate=0.1, rate_limit_rate=0.03, rate_limit_burst=2,
                      retry_after_s=1)  # fmt: skip
    with RecordedSimulator("steady", seed=11, faults=FaultConfig(default=flaky)) as sim:
        env = serve_env(sim.url, receiver, sim.threads)
        with serve(tmp_path, env) as (proc, base):
            time.sleep(12)
            expected = set(terminal_steps(sim.truth()))
            missing = wait_all_exported(receiver, expected, 40)
            metrics = httpx.get(f"{base}/metrics").text
            assert proc.stop() == 0, proc.output()
            assert "all spans delivered" in proc.output()
            received = step_spans(receiver.spans)
    log = list(sim.recorder.log)
    statuses = {e.status for e in log}
    print(f"\nrequests {len(log)}, 429s {sum(e.status == 429 for e in log)}")
    assert {429, 200} <= statuses and statuses & {500, 502, 503}, statuses
    assert len(expected) > 40
    assert not missing, f"{len(missing)} of {len(expected)} terminal steps never exported"
    duplicates = {k: len(v) for k, v in received.items() if len(v) > 1}
    assert not duplicates, f"steps exported more than once: {duplicates}"
    counted = metric_sum(metrics, "stepscope_run_steps_total")
    # A step is counted when committed, and every committed span was delivered by the shutdown: bounded by both sides.
    assert len(expected) <= counted <= len(received)
    assert metric_sum(metrics, "stepscope_api_requests_total", 'code="429"') > 0
    bad = retry_after_violations(log)
    assert not bad, f"{len(bad)} requests inside a retry-after window, e.g. {bad[:3]}"


def poisoned(step_id: str) -> bool:
    """About one step in eight is permanently invalid (its created_at unreadable) in every answer."""
    return zlib.crc32(step_id.encode()) % 8 == 0


def poison_steps(path: str, body: bytes) -> bytes:
    """Make the poisoned steps of a step list or a single step unparseable; other bodies pass unchanged."""
    if "/steps" not in path:
        return body
    try:
        obj = json.loads(body)
    except ValueError:
        return body  # already truncated or malformed by the simulator
    items = obj.get("data") if isinstance(obj.get("data"), list) else [obj]
    for item in items:
        if isinstance(item, dict) and isinstance(item.get("id"), str) and poisoned(item["id"]):
            item["created_at"] = "yesterday"
    return json.dumps(obj).encode()


def test_malformed_and_drifting_api(tmp_path: Path, receiver: OtlpReceiver) -> None:
    """Truncated and malformed bodies, unknown fields and enum values, missing optional fields and invalid objects
    crash nothing; invalid objects are counted and skipped, and every valid terminal step is exported once."""
    bad = FaultSpec(truncate_rate=0.05, malformed_rate=0.05, drift_rate=0.2)
    with RecordedSimulator("steady", seed=12, faults=FaultConfig(default=bad), rewrite=poison_steps) as sim:
        with serve(tmp_path, serve_env(sim.url, receiver, sim.threads)) as (proc, base):
            time.sleep(10)
            terminal = set(terminal_steps(sim.truth()))
            expected = {s for s in terminal if not poisoned(s)}
            missing = wait_all_exported(receiver, expected, 40)
            time.sleep(1)  # a poisoned step exported by mistake would arrive with its run's others
            metrics = httpx.get(f"{base}/metrics").text
            assert httpx.get(f"{base}/healthz").status_code == 200
            assert proc.stop() == 0, proc.output()
            output = proc.output()
    assert len(expected) > 40
    assert len(terminal - expected) > 3
    assert not missing, f"{len(missing)} of {len(expected)} valid terminal steps never exported"
    received = step_spans(receiver.spans)
    assert all(len(v) == 1 for v in received.values())
    assert not {s for s in received if poisoned(s)}, "an invalid step became a span"
    assert metric_sum(metrics, "stepscope_invalid_objects_total", 'kind="run_step"') >= len(terminal - expected)
    assert "Traceback" not in output
    # Drift renames step types: drifted steps still arrive, their unknown type kept as a string.
    types = {str(spans[0].attributes["openai.run_step.type"]) for spans in received.values()}
    assert "activities" in types
