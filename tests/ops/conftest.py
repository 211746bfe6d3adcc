"""Fixtures for tests/ops: system tools, free loopback ports, managed subprocesses.

Fixtures: ``repo_root``, ``promtool`` and ``prometheus_binary`` (paths; the test fails with a hint when Debian's
``prometheus`` package is missing), ``free_port`` (a callable), ``processes`` (starts subprocesses with their output
in log files and stops them all at teardown: SIGTERM, then SIGKILL after 5 s). Helpers live in ``tests.kit``
(``contract``: the metric contract and PromQL walking; ``processes``: ``ProcessGroup``).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.kit.contract import REPO
from tests.kit.processes import ProcessGroup
from tests.procs import free_port as pick_free_port


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


@pytest.fixture
def free_port() -> Callable[[], int]:
    """Picks a TCP port on 127.0.0.1 that was free a moment ago, for tests that need several ports."""
    return pick_free_port


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[ProcessGroup]:
    """A :class:`ProcessGroup` logging into ``tmp_path``; every process is stopped at teardown."""
    group = ProcessGroup(tmp_path)
    try:
        yield group
    finally:
        group.stop_all()
