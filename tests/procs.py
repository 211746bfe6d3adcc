"""Subprocess helpers for end-to-end tests: the simulator and `stepscope serve` as real processes."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tests.kit.processes import stop_process
from tests.kit.waits import holds_within

_URL = re.compile(r"url=(http://127\.0\.0\.1:(\d+)\S*)")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stepscope_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "stepscope", *args]


@dataclass
class Proc:
    popen: subprocess.Popen[str]
    log_path: Path

    def output(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        return stop_process(self.popen, sig, timeout)


def spawn(args: list[str], log_path: Path, env: Mapping[str, str] | None = None) -> Proc:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "STEPSCOPE_", "OPENAI_"))}
    full_env.update(env or {})
    full_env["PYTHONUNBUFFERED"] = "1"
    handle = log_path.open("w", encoding="utf-8")
    popen = subprocess.Popen(args, stdout=handle, stderr=subprocess.STDOUT, env=full_env, text=True)
    handle.close()
    return Proc(popen, log_path)


def wait_until(predicate: Callable[[], object], timeout: float, what: str, proc: Proc | None = None) -> None:
    """`AssertionError` naming `what` unless `predicate` holds within `timeout` (sooner when `proc` exits)."""

    def alive() -> str | None:
        if proc is None or proc.popen.poll() is None:
            return None
        return f"process exited ({proc.popen.returncode}) while waiting for {what}:\n{proc.output()}"

    if not holds_within(predicate, timeout, alive=alive):
        raise AssertionError(f"timed out waiting for {what}" + (f":\n{proc.output()}" if proc else ""))


@dataclass
class Sim:
    proc: Proc
    url: str  # API base URL, e.g. http://127.0.0.1:1234/v1
    root: str  # http://127.0.0.1:1234

    def truth(self) -> dict[str, Any]:
        return httpx.get(f"{self.root}/_sim/truth", timeout=10).json()  # type: ignore[no-any-return]

    def set_faults(self, faults: dict[str, object]) -> None:
        httpx.post(f"{self.root}/_sim/faults", json=faults, timeout=10).raise_for_status()


@contextlib.contextmanager
def simulator(tmp: Path, *args: str) -> Iterator[Sim]:
    proc = spawn(stepscope_cmd("simulate", "--port", "0", *args), tmp / "simulator.log")
    try:
        found: list[re.Match[str]] = []

        def listening() -> bool:
            match = _URL.search(proc.output())
            if match:
                found.append(match)
            return bool(match)

        wait_until(listening, 20, "the simulator to listen", proc)
        url = found[0].group(1)
        yield Sim(proc, url, f"http://127.0.0.1:{found[0].group(2)}")
    finally:
        proc.stop()


@contextlib.contextmanager
def serve(
    tmp: Path, env: Mapping[str, str], name: str = "serve", *, port: int | None = None
) -> Iterator[tuple[Proc, str]]:
    """`stepscope serve` with `env` (on `port`, chosen beforehand when a simulator must know serve's URL first);
    yields the process and its base URL once /readyz answers 200."""
    port = port or free_port()
    full = {"STEPSCOPE_LISTEN": f"127.0.0.1:{port}", "STEPSCOPE_STATE": str(tmp / "state.db"), **env}
    proc = spawn(stepscope_cmd("serve"), tmp / f"{name}.log", full)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: httpx.get(f"{base}/readyz", timeout=2).status_code == 200, 30, "serve to be ready", proc)
        yield proc, base
    finally:
        proc.stop()
