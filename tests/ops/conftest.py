"""Shared fixtures and helpers for tests/ops: system tools, free loopback ports, managed subprocesses, PromQL walking.

Fixtures: ``repo_root``, ``promtool`` and ``prometheus_binary`` (paths; the test fails with a hint when Debian's
``prometheus`` package is missing), ``free_port`` (a callable), ``processes`` (starts subprocesses with their output
in log files and stops them all at teardown: SIGTERM, then SIGKILL after 5 s).

Helpers (import from ``tests.ops.conftest``): ``CONTRACT_METRICS``, ``metric_names(expr)``, ``walk(node)``.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import promql_parser
import pytest

from stepscope.metricdefs import ALL_METRICS

REPO = Path(__file__).resolve().parents[2]

# The metric contract: every metric a dashboard or rule may reference (histograms by family name), from the one
# table the exporters register.
CONTRACT_METRICS = frozenset(d.name for d in ALL_METRICS)
HISTOGRAMS = frozenset(d.name for d in ALL_METRICS if d.kind == "histogram")
# Series Prometheus itself produces for every target.
PROMETHEUS_METRICS = frozenset({"up"})


def walk(node: Any, parents: tuple[Any, ...] = ()) -> Iterator[tuple[Any, tuple[Any, ...]]]:
    """Every node of a ``promql_parser`` AST with its ancestors (outermost first), depth first."""
    yield node, parents
    if isinstance(node, promql_parser.AggregateExpr):
        children = [node.expr] + ([node.param] if node.param is not None else [])
    elif isinstance(node, promql_parser.BinaryExpr):
        children = [node.lhs, node.rhs]
    elif isinstance(node, promql_parser.ParenExpr | promql_parser.UnaryExpr | promql_parser.SubqueryExpr):
        children = [node.expr]
    elif isinstance(node, promql_parser.Call):
        children = list(node.args)
    elif isinstance(node, promql_parser.MatrixSelector):
        children = [node.vector_selector]
    else:
        children = []
    for child in children:
        yield from walk(child, (*parents, node))


def metric_names(expr: str) -> set[str]:
    """Metric names selected anywhere in ``expr`` (macros must already be substituted)."""
    tree = promql_parser.parse(expr)
    return {node.name for node, _ in walk(tree) if isinstance(node, promql_parser.VectorSelector) and node.name}


def in_contract(name: str) -> bool:
    """Whether ``name`` is a contract metric, a histogram's _bucket/_count/_sum series, or Prometheus' ``up``."""
    if name in CONTRACT_METRICS or name in PROMETHEUS_METRICS:
        return True
    return any(name == f"{family}{suffix}" for family in HISTOGRAMS for suffix in ("_bucket", "_count", "_sum"))


def _require(tool: str) -> str:
    path = shutil.which(tool) or (f"/usr/bin/{tool}" if Path(f"/usr/bin/{tool}").exists() else None)
    if path is None:
        pytest.fail(f"{tool} not found: install Debian's `prometheus` package (`make deps`)")
    return path


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """The repository root (holds deploy/, grafana/, tests/)."""
    return REPO


@pytest.fixture(scope="session")
def promtool() -> str:
    """Path of promtool (Debian's prometheus package)."""
    return _require("promtool")


@pytest.fixture(scope="session")
def prometheus_binary() -> str:
    """Path of the prometheus server binary (Debian's prometheus package)."""
    return _require("prometheus")


def pick_free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (bind to port 0, read it, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def free_port() -> Callable[[], int]:
    """Returns :func:`pick_free_port`, for tests that need several ports."""
    return pick_free_port


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
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=5)
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


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[ProcessGroup]:
    """A :class:`ProcessGroup` logging into ``tmp_path``; every process is stopped at teardown."""
    group = ProcessGroup(tmp_path)
    try:
        yield group
    finally:
        group.stop_all()
