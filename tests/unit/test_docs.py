"""README.md stays in step with the code it documents."""

from __future__ import annotations

from pathlib import Path

from stepscope.config import SETTINGS
from stepscope.selfmetrics import SelfMetrics

README = (Path(__file__).parents[2] / "README.md").read_text(encoding="utf-8")


def test_every_setting_is_documented() -> None:
    """Each environment variable the config reads appears in the README's reference."""
    missing = [s.env for s in SETTINGS if f"`{s.env}`" not in README]
    assert missing == []


def test_every_metric_is_documented() -> None:
    """Each metric family stepscope registers is listed in the telemetry contract."""
    from prometheus_client import CollectorRegistry  # noqa: PLC0415

    from stepscope.export.prometheus import PrometheusMetrics  # noqa: PLC0415

    registry = CollectorRegistry()
    PrometheusMetrics(registry)
    SelfMetrics(registry, version="0")
    names = set()
    for family in registry.collect():
        names.add(family.name + ("_total" if family.type == "counter" else ""))
    missing = sorted(n for n in names if f"`{n}`" not in README)
    assert missing == []
