"""Shared fixtures. Async tests use anyio's pytest plugin (`@pytest.mark.anyio`) on asyncio."""

from __future__ import annotations

import os

import pytest
from hypothesis import settings

# Property tests explore new examples on developers' machines; CI replays a fixed derivation so a run is
# repeatable. A counterexample found locally becomes an explicit regression test.
settings.register_profile("ci", derandomize=True, print_blob=True)
settings.load_profile("ci" if os.environ.get("CI") else "default")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
