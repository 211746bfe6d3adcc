"""Whole `stepscope` processes on a port in use: no traceback anywhere on stderr, exit code 2."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from stepscope.simulator import Simulator, SimulatorServer, scenario_named
from tests.procs import stepscope_cmd

pytestmark = pytest.mark.slow


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A loopback port some other socket is listening on."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        yield int(sock.getsockname()[1])


def test_serve_on_a_busy_port(busy_port: int, tmp_path: Path) -> None:
    """serve at the default log level ends with the one-line bind error, exit 2 and no traceback."""
    with SimulatorServer(Simulator(scenario_named("quiet"))) as sim:
        env = {
            "PATH": "/usr/bin:/bin",
            "OPENAI_BASE_URL": sim.url,
            "OPENAI_API_KEY": sim.simulator.api_key,
            "STEPSCOPE_LISTEN": f"127.0.0.1:{busy_port}",
            "STEPSCOPE_STATE": str(tmp_path / "state.db"),
            "OTEL_TRACES_EXPORTER": "none",
        }
        result = subprocess.run(
            stepscope_cmd("serve"), env=env, capture_output=True, text=True, timeout=30, check=False
        )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.splitlines()[-1] == (
        f"stepscope: cannot listen on 127.0.0.1:{busy_port} (server.listen): address already in use; "
        "choose another address with --listen or STEPSCOPE_LISTEN"
    )


def test_simulate_on_a_busy_port(busy_port: int) -> None:
    """simulate on a port in use prints exactly one line, exits 2, and leaves no traceback."""
    result = subprocess.run(
        stepscope_cmd("simulate", "--port", str(busy_port)), capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 2
    assert result.stderr == (
        f"stepscope: cannot listen on 127.0.0.1:{busy_port}: address already in use; "
        "choose another with --port (0 picks a free one) or --host\n"
    )
