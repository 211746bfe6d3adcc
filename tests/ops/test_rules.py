"""Checks of deploy/prometheus/stepscope.rules.yml: generated from code, promtool, its unit tests, mixin style and
the metric contract."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from stepscope import cli
from stepscope.contract import rulefiles
from tests.kit.contract import REPO, in_contract, metric_names

RULES_FILE = REPO / "deploy" / "prometheus" / "stepscope.rules.yml"
RUNBOOK = REPO / "deploy" / "runbook.md"
RULE_TESTS = sorted((REPO / "tests" / "rules").glob("*_test.yml"))
# The runbook's path in the repository, not a URL: stepscope has no public home (deploy/runbook.md, "Runbook links").
RUNBOOK_BASE = "deploy/runbook.md#"
# level:metric:operations, with _total dropped once rate() is applied (prometheus.io docs/practices/rules).
RECORD_NAME = re.compile(r"^[a-z][a-z0-9_]*:[a-z][a-z0-9_]*:[a-z][a-z0-9_]*$")


def _rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULES_FILE.read_text(encoding="utf-8"))
    return [rule for group in doc["groups"] for rule in group["rules"]]


def _alerts() -> list[dict[str, Any]]:
    return [rule for rule in _rules() if "alert" in rule]


def _records() -> list[dict[str, Any]]:
    return [rule for rule in _rules() if "record" in rule]


def _github_anchor(heading: str) -> str:
    """GitHub's heading slug: lower-case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_committed_files_equal_generator_output() -> None:
    """The rules file and the PrometheusRule manifest under deploy/ are exactly what `rulefiles` renders."""
    assert rulefiles.RUNBOOK_URL == RUNBOOK_BASE
    assert rulefiles.check(REPO / "deploy") == []
    assert set(rulefiles.render_all()) == {RULES_FILE.relative_to(REPO / "deploy"), rulefiles.OPERATOR_FILE}


def test_write_and_check_round_trip(tmp_path: Path) -> None:
    """`stepscope rules --write` then `--check` is clean; an edited or missing file is reported with exit 1."""
    assert cli.run(["rules", "--write", str(tmp_path)], env={}) == 0
    assert cli.run(["rules", "--check", str(tmp_path)], env={}) == 0
    (tmp_path / rulefiles.OPERATOR_FILE).write_text("groups: []\n", encoding="utf-8")
    assert rulefiles.check(tmp_path) == [tmp_path / rulefiles.OPERATOR_FILE]
    assert cli.run(["rules", "--check", str(tmp_path)], env={}) == 1
    assert rulefiles.check(tmp_path / "missing") == [tmp_path / "missing" / path for path in rulefiles.render_all()]


def test_runbook_url_option_links_every_alert_and_stays_valid(tmp_path: Path, promtool: str) -> None:
    """`--runbook-url BASE` puts BASE before every alert's anchor, changes nothing else, and promtool accepts it."""
    base = "https://git.example.com/ops/stepscope/-/blob/main/deploy/runbook.md#"
    assert cli.run(["rules", "--write", str(tmp_path), "--runbook-url", base], env={}) == 0
    linked = yaml.safe_load((tmp_path / rulefiles.RULES_FILE).read_text(encoding="utf-8"))
    alerts = [rule for group in linked["groups"] for rule in group["rules"] if "alert" in rule]
    assert [a["annotations"]["runbook_url"] for a in alerts] == [base + a["alert"].lower() for a in alerts]
    shipped = yaml.safe_load(RULES_FILE.read_text(encoding="utf-8"))
    for alert in alerts:
        alert["annotations"]["runbook_url"] = RUNBOOK_BASE + alert["alert"].lower()
    assert linked == shipped
    operator = yaml.safe_load((tmp_path / rulefiles.OPERATOR_FILE).read_text(encoding="utf-8"))
    assert operator["spec"]["groups"] == yaml.safe_load((tmp_path / rulefiles.RULES_FILE).read_text())["groups"]
    result = subprocess.run(
        [promtool, "check", "rules", "--lint=all", "--lint-fatal", str(tmp_path / rulefiles.RULES_FILE)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_check_rules_with_lint(promtool: str) -> None:
    """promtool accepts the rules file with every linter on and lint problems fatal."""
    result = subprocess.run(
        [promtool, "check", "rules", "--lint=all", "--lint-fatal", str(RULES_FILE)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(_rules())} rules found" in result.stdout


def test_promtool_unit_tests_pass(promtool: str) -> None:
    """Every promtool unit test under tests/rules passes."""
    assert RULE_TESTS, "no tests/rules/*_test.yml found"
    result = subprocess.run(
        [promtool, "test", "rules", *map(str, RULE_TESTS)], capture_output=True, text=True, check=False, cwd=REPO
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "FAILED" not in result.stdout + result.stderr


def test_every_alert_has_a_firing_and_a_not_firing_case() -> None:
    """Each alert appears in the promtool tests at least once with expected alerts and once with none."""
    firing: set[str] = set()
    quiet: set[str] = set()
    for path in RULE_TESTS:
        for case in yaml.safe_load(path.read_text(encoding="utf-8"))["tests"]:
            for check in case.get("alert_rule_test", []):
                (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    names = {alert["alert"] for alert in _alerts()}
    assert names - firing == set(), "alerts without a firing case"
    assert names - quiet == set(), "alerts without a not-firing case"


def test_the_issue_alerts_all_exist() -> None:
    """The twelve alerts docs/telemetry.md and deploy/runbook.md name are defined, and no others."""
    assert {a["alert"] for a in _alerts()} == {
        "StepscopeRunFailureRatioHigh",
        "StepscopeStepFailureRatioHigh",
        "StepscopeRunsExpiring",
        "StepscopeTokenBurnHigh",
        "StepscopeApiErrors",
        "StepscopeRateLimited",
        "StepscopeSpanExportFailing",
        "StepscopeExportLagHigh",
        "StepscopeSpanBacklogGrowing",
        "StepscopeDown",
        "StepscopeTargetDown",
        "StepscopeDataDropped",
    }


@pytest.mark.parametrize("alert", _alerts(), ids=lambda a: a["alert"])
def test_alert_follows_mixin_style(alert: dict[str, Any]) -> None:
    """An alert has a CamelCase Stepscope name, a known severity, a static summary and a templated description."""
    assert re.fullmatch(r"^([A-Z]+[a-z0-9]+)+$", alert["alert"]), alert["alert"]
    assert alert["alert"].startswith("Stepscope")
    assert alert["labels"]["severity"] in {"critical", "warning", "info"}
    annotations = alert["annotations"]
    assert "{{" not in annotations["summary"]
    assert re.fullmatch(r"^[A-Z].+\.$", annotations["summary"]), annotations["summary"]
    assert "{{" in annotations["description"]
    assert "for" in alert, "alerts wait before firing, so one bad scrape does not page"


@pytest.mark.parametrize("alert", _alerts(), ids=lambda a: a["alert"])
def test_runbook_url_points_at_a_runbook_heading(alert: dict[str, Any]) -> None:
    """runbook_url is the runbook's repository path plus the lower-cased alert name, and that heading exists."""
    url = alert["annotations"]["runbook_url"]
    assert url == RUNBOOK_BASE + alert["alert"].lower()
    headings = re.findall(r"^#{1,6} (.+)$", RUNBOOK.read_text(encoding="utf-8"), flags=re.MULTILINE)
    assert alert["alert"].lower() in {_github_anchor(h) for h in headings}


@pytest.mark.parametrize("alert", _alerts(), ids=lambda a: a["alert"])
def test_runbook_section_explains_meaning_impact_diagnosis_fix(alert: dict[str, Any]) -> None:
    """The alert's runbook section covers meaning, impact, diagnosis and fix."""
    text = RUNBOOK.read_text(encoding="utf-8")
    section = text.split(f"## {alert['alert']}\n", 1)[1].split("\n## ", 1)[0]
    for part in ("**Meaning.**", "**Impact.**", "**Diagnose.**", "**Fix.**"):
        assert part in section, f"{alert['alert']}: {part} missing"


def test_recording_rule_names_follow_level_metric_operations() -> None:
    """Recording rules are named level:metric:operations and drop _total from rated counters."""
    for rule in _records():
        name = rule["record"]
        assert RECORD_NAME.fullmatch(name), name
        _level, metric, operations = name.split(":")
        assert metric.startswith("stepscope_"), name
        assert not metric.endswith("_total"), name
        if "rate(" in rule["expr"] and "ratio" not in operations and "quantile" not in operations:
            assert operations.startswith("rate"), name
        if "_per_" in metric:
            assert "ratio" in operations, name


def test_ratios_divide_sums_instead_of_averaging() -> None:
    """No rule averages a ratio; ratio rules divide two aggregations."""
    for rule in _rules():
        assert "avg(" not in rule["expr"], rule
        assert "avg by" not in rule["expr"], rule
    for rule in _records():
        if rule["record"].endswith(":ratio_rate5m"):
            assert rule["expr"].count("sum without") >= 2, rule["record"]


def test_aggregations_keep_job() -> None:
    """Aggregations drop instance and pod with `without` and never group away job."""
    for rule in _rules():
        expr = rule["expr"]
        assert "sum by" not in expr, f"{rule}: `sum by` would drop job and other target labels"
        assert not re.search(r"without \([^)]*\bjob\b", expr), rule


def test_rules_reference_only_contract_metrics_and_recorded_series() -> None:
    """Every metric in a rule is in the metric contract or a recording rule defined earlier (typo guard)."""
    defined: set[str] = set()
    for rule in _rules():
        for name in metric_names(rule["expr"]):
            assert in_contract(name) or name in defined, f"{name} in {rule.get('record') or rule.get('alert')}"
        if "record" in rule:
            defined.add(rule["record"])


def test_thresholds_are_documented_in_the_runbook() -> None:
    """Each threshold constant named in the rules header appears, with its value, in the runbook table."""
    header = RULES_FILE.read_text(encoding="utf-8").split("groups:", 1)[0]
    constants = re.findall(r"^#\s+([A-Z0-9_]+)\s+=\s+([0-9.]+)", header, flags=re.MULTILINE)
    assert len(constants) == 7
    runbook = RUNBOOK.read_text(encoding="utf-8")
    for name, value in constants:
        assert re.search(rf"`{name}` \| {re.escape(value)}\b", runbook), name


def test_test_files_load_the_real_rules_file() -> None:
    """The promtool tests exercise the committed rules file, not a copy."""
    for path in RULE_TESTS:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        assert [(path.parent / f).resolve() for f in doc["rule_files"]] == [RULES_FILE.resolve()]


def test_runbook_documents_how_to_turn_runbook_paths_into_links() -> None:
    """The runbook's rewrite command replaces exactly the prefix every shipped runbook_url starts with."""
    runbook = RUNBOOK.read_text(encoding="utf-8")
    section = runbook.split("## Runbook links\n", 1)[1]
    match = re.search(r'sed -i "s#runbook_url: (\S+)#runbook_url: \$\{RUNBOOK_BASE\}#"', section)
    assert match, "rewrite command missing from the Runbook links section"
    assert RUNBOOK_BASE.startswith(match.group(1))
    assert "deploy/kubernetes/base/prometheusrule.yaml" in section
