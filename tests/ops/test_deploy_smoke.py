"""The compose demo's stepscope wiring, run without Docker: the simulator and `stepscope serve` as local processes,
started with the compose file's own commands, entrypoint script, environment and health-check commands (hosts and
ports rewritten to free ports on 127.0.0.1), plus the Dockerfile's HEALTHCHECK command.

No Docker engine exists where these tests run, so this is the closest check that the shell-free entrypoint and
the health checks actually work, and that `serve` exits 0 on SIGTERM well inside the grace period.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.kit.waits import holds_within
from tests.ops.test_deploy_common import COMPOSE_FILE, DEPLOY, load_yaml

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
START_TIMEOUT_S = 30.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def clean_env(extra: dict[str, str]) -> dict[str, str]:
    """The test's environment without stepscope/OpenAI/OTel settings, the venv first on PATH, plus ``extra``."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("STEPSCOPE_", "OPENAI_", "OTEL_"))}
    base["PATH"] = f"{BIN}{os.pathsep}{base.get('PATH', '')}"
    return {**base, **extra}


def localise(command: list[str], replacements: dict[str, str]) -> list[str]:
    """Point a container command at the local interpreter and rewrite in-network addresses."""
    out = []
    for part in command:
        rewritten = part
        for old, new in replacements.items():
            rewritten = rewritten.replace(old, new)
        out.append(sys.executable if rewritten == "python" else rewritten)
    return out


def wait_until_ok(command: list[str], env: dict[str, str], process: subprocess.Popen[bytes]) -> None:
    """Run a health-check command until it exits 0; fail early if the checked process died."""

    def healthy() -> bool:
        return subprocess.run(command, env=env, capture_output=True, timeout=10, check=False).returncode == 0

    def alive() -> str | None:
        exited = process.poll()
        return None if exited is None else f"process exited with {exited} before becoming healthy"

    if not holds_within(healthy, START_TIMEOUT_S, every=0.3, alive=alive):
        pytest.fail(f"health check never passed: {command}")


def stop(process: subprocess.Popen[bytes]) -> int:
    """SIGTERM and wait for the exit code, killing only if it overstays the 10 s budget."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout=12)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        return -9


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The compose `sim` and `stepscope` services as local processes, both healthy."""
    services = load_yaml(COMPOSE_FILE)["services"]
    sim_port, listen_port = free_port(), free_port()
    state = tmp_path_factory.mktemp("stepscope") / "state.db"
    addresses = {"sim:8080": f"127.0.0.1:{sim_port}", "127.0.0.1:8080": f"127.0.0.1:{sim_port}"}
    sim_command = localise(["stepscope", *services["sim"]["command"]], {"0.0.0.0": "127.0.0.1", "8080": str(sim_port)})
    env = clean_env({})
    sim = subprocess.Popen(sim_command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    serve: subprocess.Popen[bytes] | None = None
    log = None
    try:
        wait_until_ok(localise(services["sim"]["healthcheck"]["test"][1:], addresses), env, sim)
        compose_env = {k: str(v) for k, v in services["stepscope"]["environment"].items()}
        serve_env = clean_env(
            {
                **compose_env,
                "OPENAI_BASE_URL": compose_env["OPENAI_BASE_URL"].replace("sim:8080", f"127.0.0.1:{sim_port}"),
                "STEPSCOPE_LISTEN": f"127.0.0.1:{listen_port}",
                "STEPSCOPE_STATE": str(state),
                # No collector here; spans are not what this test checks.
                "OTEL_TRACES_EXPORTER": "none",
            }
        )
        # Logs go to a file: a pipe nobody drains would block the process once full.
        log = (state.parent / "serve.log").open("wb")
        serve = subprocess.Popen(
            localise(services["stepscope"]["entrypoint"], addresses), env=serve_env, stdout=log, stderr=log
        )
        health = localise(services["stepscope"]["healthcheck"]["test"][1:], {"9464": str(listen_port)})
        wait_until_ok(health, serve_env, serve)
        yield {
            "serve": serve,
            "env": serve_env,
            "url": f"http://127.0.0.1:{listen_port}",
            "sim_port": sim_port,
            "log": state.parent / "serve.log",
        }
    finally:
        if serve is not None:
            stop(serve)
        if log is not None:
            log.close()
        stop(sim)


def test_entrypoint_reads_the_simulators_threads(stack: dict[str, Any]) -> None:
    """The entrypoint script hands the simulator's threads to `stepscope serve`, which reports them as watched."""
    truth = json.load(urllib.request.urlopen(f"http://127.0.0.1:{stack['sim_port']}/_sim/truth", timeout=5))
    status = json.load(urllib.request.urlopen(f"{stack['url']}/v1/status", timeout=5))
    assert truth["threads"]
    assert status["watched_threads"] == len(truth["threads"])


def test_metrics_are_served_on_the_listen_address(stack: dict[str, Any]) -> None:
    """The container listen address serves stepscope's Prometheus metrics."""
    body = urllib.request.urlopen(f"{stack['url']}/metrics", timeout=5).read().decode()
    assert re.search(r"^stepscope_\w+", body, re.MULTILINE)


def test_dockerfile_healthcheck_command_passes(stack: dict[str, Any]) -> None:
    """The image's HEALTHCHECK command (exec form) succeeds against a running stepscope, following STEPSCOPE_LISTEN."""
    text = re.sub(r"\\\n", " ", (DEPLOY / "Dockerfile").read_text(encoding="utf-8"))
    match = re.search(r"^HEALTHCHECK .*?CMD (\[.*\])\s*$", text, re.MULTILINE)
    assert match, "no exec-form HEALTHCHECK"
    command = localise(json.loads(match.group(1)), {})
    result = subprocess.run(command, env=stack["env"], capture_output=True, timeout=10, check=False)
    assert result.returncode == 0, result.stderr


# Stops the module's stepscope, so it stays the last test of this file (pytest and xdist keep file order per worker).
def test_sigterm_exits_zero_within_grace_period(stack: dict[str, Any]) -> None:
    """SIGTERM makes `serve` (exec'd by the entrypoint, so it is the signalled process) exit 0 within 10 s."""
    serve: subprocess.Popen[bytes] = stack["serve"]
    started = time.monotonic()
    code = stop(serve)
    assert code == 0, stack["log"].read_text(errors="replace")[-2000:]
    assert time.monotonic() - started < 10
