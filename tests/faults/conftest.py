"""Fixtures of the fault suite; its harness (recorded simulator, serve settings, truth comparisons) is harness.py."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from stepscope.testing import OtlpReceiver


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as r:
        yield r
