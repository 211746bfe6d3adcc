"""`stepscope serve` as a new user meets it, as a real process: each mistake is named in one line at once, and a
stop is prompt whatever the API does. Each test prints its figure (`pytest -s` shows it)."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from stepscope.commands.sidecar import PROBE_TIMEOUT_S, SHUTDOWN_BUDGET_S
from stepscope.simulator import Simulator, SimulatorServer, scenario_named
from tests.procs import free_port, serve, spawn, stepscope_cmd, wait_until

pytestmark = pytest.mark.slow

BASE_ENV = {"PATH": "/usr/bin:/bin", "OTEL_TRACES_EXPORTER": "none"}
STOPPED = re.compile(r"^(\S+ \S+) INFO +stepscope: stepscope stopped in (\d+\.\d)s", re.MULTILINE)


@pytest.fixture(scope="module")
def sim() -> Iterator[SimulatorServer]:
    """The Assistants simulator over real HTTP, key `sk-sim`."""
    with SimulatorServer(Simulator(scenario_named("quiet"))) as server:
        yield server


@pytest.fixture
def silent_api() -> Iterator[str]:
    """The base URL of a loopback server that accepts every connection (the kernel completes the handshake on its
    listening socket) and never answers a byte."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/v1"


def serve_once(env: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """`stepscope serve` with `env`, expected to end on its own."""
    full = {**BASE_ENV, "STEPSCOPE_STATE": str(tmp_path / "state.db"), "STEPSCOPE_LISTEN": "127.0.0.1:0", **env}
    return subprocess.run(stepscope_cmd("serve"), env=full, capture_output=True, text=True, timeout=60, check=False)


def test_a_base_url_that_does_not_serve_the_api_is_one_line(sim: SimulatorServer, tmp_path: Path) -> None:
    """A base URL without `/v1` is refused at start with exit 2 and one line naming OPENAI_BASE_URL, the request and
    what answered it, and nothing else on stderr (no "accepted the credentials", no thread dropped)."""
    result = serve_once({"OPENAI_BASE_URL": sim.root_url, "OPENAI_API_KEY": "sk-sim"}, tmp_path)
    assert result.returncode == 2
    assert result.stderr == (
        f"stepscope: OPENAI_BASE_URL (api.base_url): {sim.root_url} does not serve the Assistants API (GET "
        "/assistants/asst_stepscope_credential_check answered 404 Invalid URL); the base URL usually ends in /v1\n"
    )


def test_a_wrong_key_is_one_line_and_nothing_else(sim: SimulatorServer, tmp_path: Path) -> None:
    """A key the API refuses is exit 2 and exactly one line on stderr: no configuration dump before it, no
    unclosed connection or object dump after it."""
    result = serve_once({"OPENAI_BASE_URL": sim.url, "OPENAI_API_KEY": "sk-wrong"}, tmp_path)
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    assert line.startswith(
        f"stepscope: api.api_key (OPENAI_API_KEY, STEPSCOPE_AUTH): {sim.url} rejected the credentials: "
        "get_assistant: HTTP 401: Incorrect API key provided"
    )
    assert "sk-wrong" not in result.stderr


def test_an_unknown_variable_is_warned_about_with_the_nearest_name(sim: SimulatorServer, tmp_path: Path) -> None:
    """serve runs, and says once at start that STEPSCOPE_POLL_INTERVALL is ignored and which name was meant."""
    env = {**BASE_ENV, "OPENAI_BASE_URL": sim.url, "OPENAI_API_KEY": "sk-sim", "STEPSCOPE_POLL_INTERVALL": "5s"}
    with serve(tmp_path, env) as (proc, _base):
        pass
    lines = [line for line in proc.output().splitlines() if "STEPSCOPE_POLL_INTERVALL" in line]
    assert len(lines) == 1, proc.output()
    assert lines[0].endswith(
        "WARNING stepscope: STEPSCOPE_POLL_INTERVALL is not a stepscope setting and is ignored; did you mean "
        "STEPSCOPE_POLL_INTERVAL?"
    )


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_stop_while_the_api_never_answers_is_prompt(silent_api: str, sig: int, tmp_path: Path) -> None:
    """A signal during the credential check, with the API holding the request open, ends the process within the
    shutdown budget; the warning gives the reason and the "stopped in" figure is the time since the signal."""
    port = free_port()
    env = {**BASE_ENV, "OPENAI_BASE_URL": silent_api, "OPENAI_API_KEY": "sk-any",
           "STEPSCOPE_LISTEN": f"127.0.0.1:{port}", "STEPSCOPE_STATE": str(tmp_path / "state.db")}  # fmt: skip
    proc = spawn(stepscope_cmd("serve"), tmp_path / "serve.log", env)
    try:
        wait_until(lambda: "to answer the credential check" in proc.output(), 30, "the credential check to wait", proc)
        signalled_wall, signalled = time.time(), time.monotonic()
        proc.popen.send_signal(sig)
        proc.popen.wait(SHUTDOWN_BUDGET_S + 5)
        took = time.monotonic() - signalled
    finally:
        proc.stop()
    output = proc.output()
    print(f"\n{signal.Signals(sig).name} during the credential check: exited {took:.2f}s after the signal")
    assert proc.popen.returncode == 0, output
    assert took < SHUTDOWN_BUDGET_S, output
    assert re.search(rf"WARNING stepscope: cannot check the API at {re.escape(silent_api)} \(no answer in "
                     r"\d+\.\ds before the stop\)", output), output  # fmt: skip
    assert "()" not in output
    (stopped,) = STOPPED.findall(output)
    logged_at = datetime.strptime(stopped[0], "%Y-%m-%d %H:%M:%S,%f").timestamp()
    assert abs(float(stopped[1]) - (logged_at - signalled_wall)) < 0.2, output
    assert float(stopped[1]) <= took


def test_the_credential_check_is_bounded_and_then_a_stop_is_prompt(silent_api: str, tmp_path: Path) -> None:
    """With the API holding every request open, the start gives the check up at its bound with the reason, starts,
    and a SIGTERM afterwards (polls still waiting on the API) ends the process within the budget."""
    env = {**BASE_ENV, "OPENAI_BASE_URL": silent_api, "OPENAI_API_KEY": "sk-any", "STEPSCOPE_THREADS": "thread_a"}
    with serve(tmp_path, env) as (proc, _base):
        wait_until(lambda: " started: " in proc.output(), PROBE_TIMEOUT_S + 10, "the start to end", proc)
        signalled = time.monotonic()
        proc.popen.send_signal(signal.SIGTERM)
        proc.popen.wait(SHUTDOWN_BUDGET_S + 5)
        took = time.monotonic() - signalled
    output = proc.output()
    print(f"\nSIGTERM after the check gave up: exited {took:.2f}s after the signal")
    assert proc.popen.returncode == 0, output
    assert took < SHUTDOWN_BUDGET_S, output
    warning = f"WARNING stepscope: cannot check the API at {silent_api} yet (no answer in {PROBE_TIMEOUT_S:g}s); "
    assert warning + "polling retries with backoff" in output
    assert len(STOPPED.findall(output)) == 1, output
