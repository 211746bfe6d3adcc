"""The metric definitions are the contract: what the registry exposes and what docs/telemetry.md lists match them."""

from __future__ import annotations

import re

from prometheus_client import CollectorRegistry

from stepscope.contract import metricdefs as md
from stepscope.export.prometheus import PrometheusMetrics
from stepscope.export.selfmetrics import SelfMetrics
from stepscope.protocols.assistants.observations import run_observations, step_observations
from stepscope.protocols.assistants.records import ToolCall, Usage
from tests.kit.contract import REPO
from tests.kit.samples import make_run, make_step

TELEMETRY = REPO / "docs" / "telemetry.md"
_ROW = re.compile(r"^\| `(stepscope_[a-z_]+)` \| (\w+) \|([^|]*)\|", re.MULTILINE)


def _exposed() -> dict[str, tuple[str, str, set[str]]]:
    """Exposed name -> (type, help, label names seen on its samples) of a registry after one event of each kind."""
    registry = CollectorRegistry()
    sink = PrometheusMetrics(registry)
    health = SelfMetrics(registry, version="0")
    health.observe_request("get_run", "200", 0.1)
    run = make_run()
    step = make_step(type="tool_calls", usage=Usage(3, 2, 5), tool_calls=(ToolCall("c1", "function", "f"),))
    sink.record(step_observations(run, step) + run_observations(run))
    out = {}
    for family in registry.collect():
        name = family.name + ("_total" if family.type == "counter" else "")
        labels = {label for sample in family.samples for label in sample.labels} - {"le"}
        out[name] = (family.type, family.documentation, labels)
    return out


def test_the_registry_exposes_exactly_the_defined_metrics() -> None:
    """Every family the exporters register is a MetricDef with its kind, help text and label names, and vice versa."""
    exposed = _exposed()
    assert set(exposed) == {d.name for d in md.ALL_METRICS}
    for definition in md.ALL_METRICS:
        kind, text, labels = exposed[definition.name]
        assert (kind, text) == (definition.kind, definition.help), definition.name
        assert labels == set(definition.labels), definition.name


def test_docs_table_lists_each_metric_with_its_kind_and_labels() -> None:
    """docs/telemetry.md's metric table has one row per definition, with the same type and label names."""
    rows = {name: (kind, cell) for name, kind, cell in _ROW.findall(TELEMETRY.read_text(encoding="utf-8"))}
    assert set(rows) == {d.name for d in md.ALL_METRICS}
    for definition in md.ALL_METRICS:
        kind, cell = rows[definition.name]
        # A label cell names each label first in its comma-separated part: "`token_type` (`input`/`output`), ...".
        labels = tuple(re.findall(r"`([a-z_]+)`", part)[0] for part in cell.split(",") if "`" in part)
        assert (kind, labels) == (definition.kind, definition.labels), definition.name


def test_by_name_finds_a_family_from_any_of_its_series() -> None:
    """A histogram's _bucket/_count/_sum series and a counter's _total name resolve to their definition."""
    assert md.by_name("stepscope_export_lag_seconds_bucket") is md.EXPORT_LAG
    assert md.by_name("stepscope_runs_total") is md.RUNS
    assert md.by_name("stepscope_runs") is None
