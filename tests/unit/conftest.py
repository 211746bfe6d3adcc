"""Fixtures the unit tests share."""

from __future__ import annotations

import pytest

from stepscope.core.store import SqliteStore


@pytest.fixture
def store() -> SqliteStore:
    """An open store in memory."""
    s = SqliteStore(":memory:")
    s.open()
    return s
