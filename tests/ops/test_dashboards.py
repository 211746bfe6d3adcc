"""Dashboard lint (grafana/dashboard-linter's rules re-implemented), generator round trip and provisioning checks."""

from __future__ import annotations

import json
import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import promql_parser
import pytest
import yaml

from stepscope import cli
from stepscope.contract import dashboards
from stepscope.contract import metricdefs as md
from tests.kit.contract import REPO, in_contract, metric_names, walk

GRAFANA = REPO / "grafana"
# dashboard-linter substitutes a magic duration for $__rate_interval and looks for it under rate()/irate().
RATE_INTERVAL_MAGIC = "7777s"
MACROS = {
    "$__rate_interval": RATE_INTERVAL_MAGIC,
    "$__interval": "15s",
    "$__range": "1h",
    "$job": ".+",
    "$protocol": ".*",
    "$assistant_id": ".*",
    "$model": ".*",
}
# Grafana unit ids (packages/grafana-data/src/valueFormats/categories.ts), the subset a dashboard here may use.
VALID_UNITS = frozenset(
    [
        "none",
        "short",
        "percent",
        "percentunit",
        "s",
        "ms",
        "us",
        "ns",
        "m",
        "h",
        "d",
        "dtdurations",
        "ops",
        "reqps",
        "rps",
        "wps",
        "cps",
        "opm",
        "rpm",
        "bytes",
        "decbytes",
        "bool",
        "dateTimeAsIso",
        "dateTimeFromNow",
    ]
)
UNIT_PANELS = {"stat", "singlestat", "graph", "table", "timeseries", "gauge", "bargauge"}


def _models() -> list[dict[str, Any]]:
    return list(dashboards.dashboards().values())


def _panels(model: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in dashboards.iter_panels(model["panels"]) if p["type"] != "row"]


def _targets() -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    return [(m["uid"], p, t) for m in _models() for p in _panels(m) for t in p["targets"]]


def _expand(expr: str) -> str:
    for macro, value in sorted(MACROS.items(), key=lambda kv: -len(kv[0])):
        expr = expr.replace(macro, value)
    assert "$" not in expr, f"unknown macro or variable in {expr}"
    return expr


def _target_id(item: tuple[str, dict[str, Any], dict[str, Any]]) -> str:
    uid, panel, target = item
    return f"{uid}/{panel['id']}{target['refId']}"


TARGETS = _targets()


def test_committed_json_equals_generator_output() -> None:
    """grafana/dashboards holds exactly what render_all() produces, byte for byte."""
    committed = {p.name for p in (GRAFANA / "dashboards").glob("*.json")}
    assert committed == set(dashboards.render_all())
    assert dashboards.check(GRAFANA / "dashboards") == []


def test_rendering_is_deterministic_and_sorted() -> None:
    """Two renders are identical and keys are sorted, so diffs stay minimal."""
    first, second = dashboards.render_all(), dashboards.render_all()
    assert first == second
    for text in first.values():
        assert text == json.dumps(json.loads(text), indent=2, sort_keys=True) + "\n"


def test_write_and_check_round_trip(tmp_path: Path) -> None:
    """write() then check() is clean; an edited file is reported; the CLI maps that to exit codes."""
    assert cli.run(["dashboards", "--write", str(tmp_path)], env={}) == 0
    assert dashboards.check(tmp_path) == []
    (tmp_path / "stepscope-health.json").write_text("{}\n", encoding="utf-8")
    assert dashboards.check(tmp_path) == ["stepscope-health.json"]
    assert cli.run(["dashboards", "--check", str(tmp_path)], env={}) == 1
    assert dashboards.check(tmp_path / "missing") == sorted(dashboards.render_all(), reverse=True)


def test_uids_titles_and_schema() -> None:
    """Dashboards have fixed valid uids, titles, the stepscope tag and schemaVersion 39."""
    by_uid = {m["uid"]: m for m in _models()}
    assert set(by_uid) == {"stepscope-overview", "stepscope-health"}
    for uid, model in by_uid.items():
        assert re.fullmatch(r"[A-Za-z0-9_-]{1,40}", uid)
        assert model["title"] == uid.replace("-", " ")
        assert model["schemaVersion"] == 39
        assert "stepscope" in model["tags"]
        assert model["description"]


def test_template_datasource_rule() -> None:
    """Each dashboard has a `datasource` variable of type datasource for Prometheus."""
    for model in _models():
        variables = {v["name"]: v for v in model["templating"]["list"]}
        assert variables["datasource"]["type"] == "datasource"
        assert variables["datasource"]["query"] == "prometheus"


def test_job_protocol_assistant_and_model_variables() -> None:
    """job comes from stepscope_build_info; protocol, assistant_id and model from stepscope_runs_total, multi with .*
    All."""
    for model in _models():
        variables = {v["name"]: v for v in model["templating"]["list"]}
        assert variables["job"]["query"] == "label_values(stepscope_build_info, job)"
        for name in ("protocol", "assistant_id", "model"):
            var = variables[name]
            assert var["query"] == f'label_values(stepscope_runs_total{{job=~"$job"}}, {name})'
            assert (var["multi"], var["includeAll"], var["allValue"]) == (True, True, ".*")
        for name in ("job", "protocol", "assistant_id", "model"):
            assert variables[name]["datasource"] == {"type": "prometheus", "uid": "${datasource}"}


def test_panel_datasource_rule() -> None:
    """Every panel and target queries the `${datasource}` variable, never a fixed data source."""
    for model in _models():
        for panel in _panels(model):
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
            for target in panel["targets"]:
                assert target["datasource"] == panel["datasource"]


def test_panel_title_description_rule() -> None:
    """Every panel has a title and a description."""
    for model in _models():
        for panel in _panels(model):
            assert panel["title"].strip()
            assert len(panel["description"]) > 20, panel["title"]


def test_panel_units_rule() -> None:
    """Every value panel sets a valid Grafana unit."""
    for model in _models():
        for panel in _panels(model):
            assert panel["type"] in UNIT_PANELS
            assert panel["fieldConfig"]["defaults"]["unit"] in VALID_UNITS, panel["title"]


def test_panel_no_targets_rule() -> None:
    """Every panel has at least one target with an expression and a unique refId."""
    for model in _models():
        for panel in _panels(model):
            refs = [t["refId"] for t in panel["targets"]]
            assert refs, panel["title"]
            assert len(refs) == len(set(refs))
            assert all(t["expr"].strip() for t in panel["targets"])


def test_panel_ids_unique_and_grid_fits() -> None:
    """Panel ids are unique per dashboard and panels neither overlap nor leave the 24-column grid."""
    for model in _models():
        everything = list(dashboards.iter_panels(model["panels"]))
        ids = [p["id"] for p in everything]
        assert len(ids) == len(set(ids))
        cells: set[tuple[int, int]] = set()
        for panel in everything:
            grid = panel["gridPos"]
            assert grid["x"] + grid["w"] <= 24
            mine = {
                (x, y) for x in range(grid["x"], grid["x"] + grid["w"]) for y in range(grid["y"], grid["y"] + grid["h"])
            }
            assert not cells & mine, f"{panel['title']} overlaps another panel"
            cells |= mine


@pytest.mark.parametrize("item", TARGETS, ids=_target_id)
def test_target_promql_rule(item: tuple[str, dict[str, Any], dict[str, Any]]) -> None:
    """The target's PromQL parses after macro and variable substitution."""
    promql_parser.parse(_expand(item[2]["expr"]))


@pytest.mark.parametrize("item", TARGETS, ids=_target_id)
def test_target_rate_interval_rule(item: tuple[str, dict[str, Any], dict[str, Any]]) -> None:
    """Every range selector directly inside rate() or irate() uses $__rate_interval."""
    tree = promql_parser.parse(_expand(item[2]["expr"]))
    magic = timedelta(seconds=int(RATE_INTERVAL_MAGIC.removesuffix("s")))
    for node, parents in walk(tree):
        if isinstance(node, promql_parser.MatrixSelector) and parents:
            parent = parents[-1]
            if isinstance(parent, promql_parser.Call) and parent.func.name in {"rate", "irate"}:
                assert node.range == magic, item[2]["expr"]


@pytest.mark.parametrize("item", TARGETS, ids=_target_id)
def test_target_counter_agg_rule(item: tuple[str, dict[str, Any], dict[str, Any]]) -> None:
    """Every *_total selector sits in a range directly inside rate(), irate() or increase()."""
    tree = promql_parser.parse(_expand(item[2]["expr"]))
    for node, parents in walk(tree):
        if isinstance(node, promql_parser.VectorSelector) and (node.name or "").endswith("_total"):
            assert len(parents) >= 2, item[2]["expr"]
            assert isinstance(parents[-1], promql_parser.MatrixSelector), item[2]["expr"]
            assert isinstance(parents[-2], promql_parser.Call), item[2]["expr"]
            assert parents[-2].func.name in {"rate", "irate", "increase"}, item[2]["expr"]


@pytest.mark.parametrize("item", TARGETS, ids=_target_id)
def test_target_metrics_are_in_the_contract(item: tuple[str, dict[str, Any], dict[str, Any]]) -> None:
    """Every metric a panel reads is in the metric contract (a guard against typos)."""
    for name in metric_names(_expand(item[2]["expr"])):
        assert in_contract(name), name


@pytest.mark.parametrize("item", TARGETS, ids=_target_id)
def test_exemplars_on_for_exemplar_metrics(item: tuple[str, dict[str, Any], dict[str, Any]]) -> None:
    """Range targets reading a metric that carries exemplars have exemplars on; others have them off."""
    target = item[2]
    families = {re.sub(r"_(bucket|count|sum)$", "", n) for n in metric_names(_expand(target["expr"]))}
    expected = bool(families & dashboards.EXEMPLAR_METRICS) and not target["instant"]
    assert target["exemplar"] is expected


def test_domain_queries_filter_on_protocol() -> None:
    """Every selector of a domain family with a protocol label has protocol=~"$protocol"; the step duration, which
    has no such label, has none and its panel says it is Assistants-only."""
    with_protocol = {name for d in md.DOMAIN_METRICS if md.LABEL_PROTOCOL in d.labels for name in d.series}
    step_duration = set(md.RUN_STEP_DURATION.series)
    selector = re.compile(r"\b(stepscope_[a-z_]+)\{([^}]*)\}")
    checked = 0
    for _, panel, target in TARGETS:
        for name, matchers in selector.findall(target["expr"]):
            if name in with_protocol:
                assert 'protocol=~"$protocol"' in matchers, target["expr"]
                checked += 1
            elif name in step_duration:
                assert "protocol" not in matchers, target["expr"]
                assert "protocol variable does not apply" in panel["description"], panel["title"]
    assert checked >= 10


def test_rates_use_rate_interval_everywhere() -> None:
    """No target hard-codes a range: ranges are $__rate_interval, or $__range for totals over the time picker."""
    for _, _, target in TARGETS:
        assert not re.search(r"\[\d+[smhd]\]", target["expr"]), target["expr"]


def test_the_issue_panels_exist() -> None:
    """The panels docs/telemetry.md promises are present on the right dashboard."""
    titles = {m["uid"]: {p["title"] for p in _panels(m)} for m in _models()}
    assert {
        "Runs per second by status",
        "Run and step failure ratios",
        "Tokens per second by model and assistant",
        "Step duration by step type",
        "Run duration",
        "Run queue time",
        "Tool calls per second by type",
        "Top assistants by tokens",
        "Tracked runs",
    } <= titles["stepscope-overview"]
    assert {
        "API requests per second by endpoint and code",
        "API latency by endpoint",
        "429 responses per second by endpoint",
        "Span export failures per second",
        "Export lag",
        "Span backlog",
        "Oldest span in backlog",
        "Dropped objects per second by reason",
        "Invalid objects per second by kind",
        "Build info",
    } <= titles["stepscope-health"]


def test_datasource_provisioning_links_exemplars_to_tempo() -> None:
    """Prometheus' exemplarTraceIdDestinations maps trace_id to the provisioned Tempo data source."""
    doc = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "datasources.yaml").read_text(encoding="utf-8"))
    assert doc["apiVersion"] == 1
    by_type = {d["type"]: d for d in doc["datasources"]}
    prometheus, tempo = by_type["prometheus"], by_type["tempo"]
    assert prometheus["uid"] == "prometheus"
    destinations = prometheus["jsonData"]["exemplarTraceIdDestinations"]
    assert destinations[0]["name"] == "trace_id"
    assert destinations[0]["datasourceUid"] == tempo["uid"]


def test_dashboard_provisioning_is_a_read_only_file_provider() -> None:
    """The dashboards provider reads files and forbids UI edits and deletion of the generated dashboards."""
    doc = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "stepscope.yaml").read_text(encoding="utf-8"))
    (provider,) = doc["providers"]
    assert provider["type"] == "file"
    assert provider["allowUiUpdates"] is False
    assert provider["disableDeletion"] is True
    assert provider["options"]["path"].startswith("/")
