"""Managed subprocesses for tests that run system tools: output to a log file, stopped at teardown."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


def stop_process(popen: subprocess.Popen[Any], sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
    """Send `sig` to a process still running and wait up to `timeout` seconds, then kill it; its exit code.
    Idempotent."""
    if popen.poll() is None:
        popen.send_signal(sig)
        try:
            popen.wait(timeout)
        except subprocess.TimeoutExpired:
            popen.kill()
            popen.wait(5)
    return popen.returncode


class ManagedProcess:
    """A subprocess whose stdout and stderr go to one log file; :meth:`log` reads it back for diagnosis."""

    def __init__(self, name: str, argv: Sequence[str], env: Mapping[str, str], log_path: Path) -> None:
        self.name = name
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.popen = subprocess.Popen(list(argv), env=dict(env), stdout=self._log, stderr=subprocess.STDOUT)

    def log(self, tail: int = 4000) -> str:
        """The last ``tail`` characters of the process output."""
        self._log.flush()
        return self.log_path.read_text(encoding="utf-8", errors="replace")[-tail:]

    def running(self) -> bool:
        return self.popen.poll() is None

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 5 s; idempotent."""
        stop_process(self.popen, timeout=5)
        self._log.close()


class ProcessGroup:
    """Starts named subprocesses and stops them all (last started first)."""

    def __init__(self, log_dir: Path) -> None:
        self._log_dir = log_dir
        self.started: list[ManagedProcess] = []

    def start(self, name: str, argv: Sequence[str], env: Mapping[str, str] | None = None) -> ManagedProcess:
        merged = {**os.environ, **(env or {})}
        proc = ManagedProcess(name, argv, merged, self._log_dir / f"{name}.log")
        self.started.append(proc)
        return proc

    def logs(self) -> str:
        """Every process' output tail, for assertion messages."""
        return "\n".join(f"----- {p.name} (exit {p.popen.poll()}) -----\n{p.log()}" for p in self.started)

    def stop_all(self) -> None:
        for proc in reversed(self.started):
            proc.stop()
