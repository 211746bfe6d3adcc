"""`stepscope serve` as a subprocess against the simulator, with a real OTLP receiver."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import httpx
import pytest

from stepscope.testing import OtlpReceiver
from tests.procs import Sim, serve, simulator, stepscope_cmd, wait_until

pytestmark = pytest.mark.slow
WATCH_TOKEN = "watch-token-s3cret"


def _serve_env(sim: Sim, receiver: OtlpReceiver, threads: list[str]) -> dict[str, str]:
    return {
        "OPENAI_BASE_URL": sim.url,
        "OPENAI_API_KEY": "sk-sim",
        "STEPSCOPE_THREADS": ",".join(threads),
        "STEPSCOPE_POLL_INTERVAL": "0.2",
        "STEPSCOPE_DISCOVERY_INTERVAL": "1",
        "STEPSCOPE_WATCH_TOKEN": WATCH_TOKEN,
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": receiver.url,
        "OTEL_BSP_SCHEDULE_DELAY": "100",
    }


def _sample_sum(text: str, metric: str) -> float:
    return sum(float(m.group(1)) for m in re.finditer(rf"^{metric}\{{[^}}]*\}} ([0-9.e+]+)", text, re.M))


def test_serve_end_to_end(tmp_path: Path) -> None:
    """serve exports spans, answers every endpoint, flushes on SIGTERM, exits 0 and never prints the key."""
    with OtlpReceiver() as receiver, simulator(tmp_path, "--scenario", "lively", "--speed", "20", "--seed", "3") as sim:
        threads = sim.truth()["threads"]
        assert isinstance(threads, list)
        with serve(tmp_path, _serve_env(sim, receiver, threads[:30])) as (proc, base):
            assert receiver.wait_for(lambda spans: any(s.name.startswith("invoke_agent") for s in spans), 40)
            assert httpx.get(f"{base}/healthz").status_code == 200
            assert httpx.get(f"{base}/readyz").status_code == 200

            openmetrics = httpx.get(f"{base}/metrics", headers={"Accept": "application/openmetrics-text"}).text
            assert re.search(r'stepscope_run_steps_total\{.*\} \d+\.\d+ # \{.*trace_id="[0-9a-f]{32}"', openmetrics)
            plain = httpx.get(f"{base}/metrics").text
            assert "stepscope_build_info" in plain
            assert "# {" not in plain  # exemplars only in OpenMetrics

            status = httpx.get(f"{base}/v1/status").json()
            assert status["api"]["state"] == "ok"
            assert status["watched_threads"] == 30

            auth = {"Authorization": f"Bearer {WATCH_TOKEN}"}
            good = {"thread_id": threads[40]}
            assert httpx.post(f"{base}/v1/watch", json=good, headers=auth).status_code == 202
            assert httpx.get(f"{base}/v1/status").json()["watched_threads"] == 31
            assert httpx.post(f"{base}/v1/watch", json=good).status_code == 401
            assert (
                httpx.post(f"{base}/v1/watch", json=good, headers={"Authorization": "Bearer nope"}).status_code == 401
            )
            as_json = {**auth, "Content-Type": "application/json"}
            assert httpx.post(f"{base}/v1/watch", content=b"{not json", headers=as_json).status_code == 400
            assert httpx.post(f"{base}/v1/watch", content=b"{}", headers=auth).status_code == 415  # not said JSON
            assert httpx.post(f"{base}/v1/watch", json={"thread_id": "../etc"}, headers=auth).status_code == 400
            bad_run = {"thread_id": threads[0], "run_id": "thread_x"}
            assert httpx.post(f"{base}/v1/watch", json=bad_run, headers=auth).status_code == 400
            huge = b'{"thread_id": "' + b"a" * 100_000 + b'"}'
            assert httpx.post(f"{base}/v1/watch", content=huge, headers=as_json).status_code == 413
            assert httpx.get(f"{base}/v1/watch").status_code == 405
            assert httpx.request("DELETE", f"{base}/v1/watch", json=good, headers=auth).status_code == 200
            assert httpx.get(f"{base}/v1/status").json()["watched_threads"] == 30

            committed = _sample_sum(httpx.get(f"{base}/metrics").text, "stepscope_run_steps_total")
            assert committed > 0
            code = proc.stop()
            output = proc.output()
        assert code == 0, output
        assert "stepscope stopped in" in output and "all spans delivered" in output
        step_spans = {s.span_id for s in receiver.spans if "openai.run_step.id" in s.attributes}
        assert len(step_spans) >= committed
        assert "sk-sim" not in output
        assert WATCH_TOKEN not in output
        assert all("sk-sim" not in json.dumps(s.attributes) for s in receiver.spans)


def test_config_errors_name_their_setting(tmp_path: Path) -> None:
    """Bad settings make serve exit 2 and name every offending variable."""
    env = {"STEPSCOPE_POLL_INTERVAL": "often", "STEPSCOPE_LISTEN": "nowhere", "PATH": "/usr/bin:/bin"}
    result = subprocess.run(stepscope_cmd("serve"), env=env, capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 2
    for name in ("STEPSCOPE_POLL_INTERVAL", "STEPSCOPE_LISTEN", "OPENAI_API_KEY"):
        assert name in result.stderr


def test_config_check_prints_effective_values() -> None:
    """config check prints the merged settings with the key redacted and exits 0."""
    env = {"OPENAI_API_KEY": "sk-verysecret", "STEPSCOPE_POLL_INTERVAL": "2s", "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        stepscope_cmd("config", "check", "--lookback", "30m"),
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert re.search(r"poll.interval\s+2s\n", result.stdout)
    assert re.search(r"poll.lookback\s+30m\n", result.stdout)
    assert "sk-verysecret" not in result.stdout + result.stderr
    assert re.search(r"api.api_key\s+\*\*\*", result.stdout)


def test_demo_and_inspect(tmp_path: Path) -> None:
    """demo runs for its duration and reports exported steps; inspect draws a finished run's waterfall, piped in 80
    columns with every column."""
    result = subprocess.run(
        stepscope_cmd("demo", "--duration", "6", "--no-view", "--listen", "127.0.0.1:0"),
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    match = re.search(r"demo finished: (\d+) steps and (\d+) runs exported", result.stdout)
    assert match, result.stdout
    assert int(match.group(1)) > 0
    assert int(match.group(2)) > 0
    assert "recent steps" in result.stdout

    with simulator(tmp_path, "--scenario", "steady", "--speed", "30", "--seed", "5") as sim:

        def finished_run() -> bool:
            return any(r["status"] == "completed" for r in sim.truth()["runs"])

        wait_until(finished_run, 30, "a completed run")
        run = next(r for r in sim.truth()["runs"] if r["status"] == "completed")
        env = {"OPENAI_API_KEY": "sk-sim", "PATH": "/usr/bin:/bin"}
        args = ("inspect", run["id"], "--thread", run["thread_id"], "--base-url", sim.url)
        text = subprocess.run(stepscope_cmd(*args), env=env, capture_output=True, text=True, timeout=30, check=False)
        assert text.returncode == 0, text.stderr
        assert "invoke_agent" in text.stdout
        assert "completed" in text.stdout
        lines = text.stdout.splitlines()  # piped: 80 columns, every column still there
        assert max(len(line) for line in lines) <= 80, text.stdout
        assert any(re.match(r"span\s+status\s+start\s+took\s+tokens in/out\s+0s", line) for line in lines)
        as_json = subprocess.run(
            stepscope_cmd(*args, "--json"), env=env, capture_output=True, text=True, timeout=30, check=False
        )
        data = json.loads(as_json.stdout)
        calls = sum(len(s["step_details"].get("tool_calls", [])) for s in run["steps"])
        assert len(data["spans"]) == 1 + len(run["steps"]) + calls
        assert data["spans"][0]["start"] == run["created_at"]
        assert data["spans"][0]["end"] == run["completed_at"]


def test_with_the_proxy_each_lifecycle_line_is_printed_once(tmp_path: Path) -> None:
    """With the proxy on, serve's start-up and shutdown lines each appear once, and no server library adds its own
    (the HTTP surface and the proxy run on stepscope's server, not uvicorn)."""
    with simulator(tmp_path, "--scenario", "quiet") as sim:
        env = {"OPENAI_BASE_URL": sim.url, "OPENAI_API_KEY": "sk-sim", "STEPSCOPE_PROXY_LISTEN": "127.0.0.1:0",
               "OTEL_TRACES_EXPORTER": "none"}  # fmt: skip
        with serve(tmp_path, env) as (proc, _base):
            pass
        output = proc.output()
    assert proc.popen.returncode == 0, output
    lines = output.splitlines()
    for said in ("proxy listening on", "stepscope 0.", "shutting down", "stepscope stopped in"):
        assert sum(said in line for line in lines) == 1, f"{said!r}:\n{output}"
    assert not re.search(r"Uvicorn running|Started server process|Application startup|Finished server", output)
