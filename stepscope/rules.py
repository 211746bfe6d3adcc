"""Prometheus recording and alerting rules for stepscope, generated from the metric definitions.

The committed `deploy/prometheus/stepscope.rules.yml` and the PrometheusRule `deploy/kubernetes/base/
prometheusrule.yaml` are the output of :func:`render_all`; a test asserts they are equal, so edit this module and
run `stepscope rules --write deploy`, never the YAML. Both carry the same groups: the first as a plain rules file,
the second wrapped for the Prometheus Operator.

Every metric name and label comes from `stepscope.metricdefs`, and the failure selectors are the ones the
dashboards use, so a panel and its alert count the same things. Conventions:

- Recording rules are named `level:metric:operations`, with `_total` dropped once `rate()` is applied.
- Aggregations drop only the labels of one scrape target (`instance`, `pod`) and the metric's own labels they sum
  over, with `sum without (...)`, so `job` (and namespace, cluster, ...) survive and one Prometheus can watch
  several stepscope deployments. `protocol` (`assistants`, `agents`) survives the same way (`KEPT_LABELS`) and is
  not named in the level, so the rules' names stay as they were: every ratio and alert holds per protocol, and a
  surge of Agents API failures is not diluted by healthy Assistants runs. Series without `protocol` (from a
  stepscope before the label) keep working as before. Only the job's token rate sums the protocols, since a token
  budget is the job's.
- Ratios divide separately summed numerators and denominators; a numerator without series reads 0 (the
  `or ... * 0` branch) instead of vanishing.

`runbook_url` is `RUNBOOK_URL` (the runbook's path in the repository, `deploy/runbook.md#`) plus the alert name in
lower case, the anchor of its section; `--runbook-url BASE` puts where you host the runbook in front instead.
"""

from __future__ import annotations

import json
import re
import textwrap
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from stepscope import metricdefs as md
from stepscope.metricdefs import MetricDef

RUNBOOK_URL = "deploy/runbook.md#"
"""Default `runbook_url` prefix: the runbook's path in the repository (stepscope has no public home to link to)."""
RULES_FILE = Path("prometheus/stepscope.rules.yml")
OPERATOR_FILE = Path("kubernetes/base/prometheusrule.yaml")
"""Where the two outputs live, relative to the `deploy/` directory."""
WINDOW = "5m"
TARGET_LABELS = ("instance", "pod")  # one scrape target's labels: summed away, everything else kept
KEPT_LABELS = (md.LABEL_PROTOCOL,)  # a metric's own labels that survive every aggregation, like job
SCRAPE_JOB = "stepscope"  # StepscopeDown needs a job name; Prometheus only knows targets it has seen


@dataclass(frozen=True, slots=True)
class Threshold:
    """A documented constant of an alert expression; `shown` is how the header and the runbook write it."""

    name: str
    value: float
    shown: str
    alert: str
    meaning: str

    def __str__(self) -> str:
        return f"{self.value:g}"


RUN_FAILURE_RATIO = Threshold(
    "RUN_FAILURE_RATIO", 0.10, "0.10", "StepscopeRunFailureRatioHigh", "failed|expired|incomplete / all terminal runs"
)
STEP_FAILURE_RATIO = Threshold(
    "STEP_FAILURE_RATIO", 0.10, "0.10", "StepscopeStepFailureRatioHigh", "failed|expired / all terminal steps"
)
TOKEN_BURN_RATE = Threshold(
    "TOKEN_BURN_RATE", 2000, "2000 tok/s", "StepscopeTokenBurnHigh", "input + output tokens per job"
)
API_ERROR_RATIO = Threshold("API_ERROR_RATIO", 0.05, "0.05", "StepscopeApiErrors", "5xx, transport `error`, 401, 403")
RATE_LIMITED_RATIO = Threshold("RATE_LIMITED_RATIO", 0.10, "0.10", "StepscopeRateLimited", "429 / all API requests")
EXPORT_LAG_P95 = Threshold(
    "EXPORT_LAG_P95", 120, "120 s", "StepscopeExportLagHigh", "step terminal timestamp -> export"
)
SPAN_BACKLOG_AGE = Threshold(
    "SPAN_BACKLOG_AGE", 600, "600 s", "StepscopeSpanBacklogGrowing", "oldest span waiting for the trace backend"
)
THRESHOLDS = (
    RUN_FAILURE_RATIO,
    STEP_FAILURE_RATIO,
    TOKEN_BURN_RATE,
    API_ERROR_RATIO,
    RATE_LIMITED_RATIO,
    EXPORT_LAG_P95,
    SPAN_BACKLOG_AGE,
)


@dataclass(frozen=True, slots=True)
class Record:
    """A recording rule; `comment` opens a block of related rules."""

    record: str
    expr: str
    labels: dict[str, str] = field(default_factory=dict)
    comment: str = ""


@dataclass(frozen=True, slots=True)
class Alert:
    """An alerting rule: `summary` is static, `description` a template; `note` is a comment for readers."""

    alert: str
    expr: str
    wait: str
    summary: str
    description: str
    severity: str = "warning"
    note: str = ""


def _list(labels: Sequence[str]) -> str:
    return ", ".join(labels)


def _rate(metric: MetricDef, keep: Sequence[str], comment: str = "", *, bucket: bool = False) -> Record:
    """`level:metric:rate5m` of `metric` summed over everything but `job` and `keep` (plus `le` for buckets)."""
    suffix = "_bucket" if bucket else ""
    dropped = (*TARGET_LABELS, *(label for label in metric.labels if label not in (*keep, *KEPT_LABELS)))
    level = "_".join(("job", *keep))
    expr = f"sum without ({_list(dropped)}) (rate({metric.name}{suffix}[{WINDOW}]))"
    return Record(f"{level}:{metric.name.removesuffix('_total')}{suffix}:rate{WINDOW}", expr, comment=comment)


def _ratio(record: str, source: Record, over: Sequence[str], selector: str) -> Record:
    """`source` restricted to `selector` over all of `source`, both summed over the labels `over`."""
    total = f"sum without ({_list(over)})"
    expr = (
        f"(\n  {total} ({source.record}{{{selector}}})\n  or\n  {total} ({source.record}) * 0\n)\n"
        f"/ {total} ({source.record})\n"
    )
    return Record(record, expr)


def _quantiles(buckets: Record, quantiles: Sequence[str], comment: str = "") -> list[Record]:
    record = buckets.record.replace("_bucket:rate" + WINDOW, ":histogram_quantile")
    return [
        Record(record, f"histogram_quantile({q}, {buckets.record})", {"quantile": q}, comment if i == 0 else "")
        for i, q in enumerate(quantiles)
    ]


STATUS, CODE, ENDPOINT = md.LABEL_STATUS, md.LABEL_CODE, md.LABEL_ENDPOINT
RUNS = _rate(
    md.RUNS,
    (STATUS,),
    "Runs and turns by terminal status and protocol; the basis of the run failure ratio and the expiry alert.",
)
RUNS_FAILED = _ratio(
    "job:stepscope_runs_failed_per_runs:ratio_rate5m", RUNS, (STATUS,), md.matcher(STATUS, md.RUN_FAILED_STATUSES)
)
STEPS = _rate(
    md.RUN_STEPS,
    (STATUS,),
    "Steps and items by status and protocol; cancelled steps follow a cancelled run.",
)
STEPS_FAILED = _ratio(
    "job:stepscope_run_steps_failed_per_run_steps:ratio_rate5m",
    STEPS,
    (STATUS,),
    md.matcher(STATUS, md.STEP_FAILED_STATUSES),
)
TOKENS_BY_ASSISTANT = _rate(
    md.TOKENS,
    (md.LABEL_MODEL, md.LABEL_ASSISTANT_ID),
    "Token rates (input + output), per model, assistant and protocol, and per job (both protocols).",
)
TOKENS = Record(
    "job:stepscope_tokens:rate5m",
    f"sum without ({md.LABEL_MODEL}, {md.LABEL_ASSISTANT_ID}, {md.LABEL_PROTOCOL}) ({TOKENS_BY_ASSISTANT.record})",
)
STEP_BUCKETS = _rate(
    md.RUN_STEP_DURATION, (md.LABEL_STEP_TYPE,),
    "Step duration quantiles by step type, from the aggregated buckets; Assistants only (items have no times).",
    bucket=True,
)  # fmt: skip
API = _rate(md.API_REQUESTS, (ENDPOINT, CODE), "Assistants API health: requests by endpoint and code, error ratios.")
API_ERRORS = _ratio(
    "job:stepscope_api_request_errors_per_api_requests:ratio_rate5m",
    API,
    (ENDPOINT, CODE),
    md.matcher(CODE, md.API_ERROR_CODES),
)
API_LIMITED = _ratio(
    "job:stepscope_api_requests_rate_limited_per_api_requests:ratio_rate5m", API, (ENDPOINT, CODE), f'{CODE}="429"'
)
LAG_BUCKETS = _rate(
    md.EXPORT_LAG, (), "Export health: lag from a step's terminal timestamp to its export, span export failures.",
    bucket=True,
)  # fmt: skip
LAG = _quantiles(LAG_BUCKETS, ("0.95",))
EXPORT_FAILURES = _rate(md.SPAN_EXPORT_FAILURES, ())

RECORDS: tuple[Record, ...] = (
    RUNS,
    RUNS_FAILED,
    STEPS,
    STEPS_FAILED,
    TOKENS_BY_ASSISTANT,
    TOKENS,
    STEP_BUCKETS,
    *_quantiles(STEP_BUCKETS, ("0.5", "0.95", "0.99")),
    API,
    API_ERRORS,
    API_LIMITED,
    LAG_BUCKETS,
    *LAG,
    EXPORT_FAILURES,
)

_TARGETS = f"without ({_list(TARGET_LABELS)})"
# Names the protocol in a description when the series has one (series from before the label have none).
_PROTOCOL = "{{ with $labels.protocol }} for {{ . }}{{ end }}"
ALERTS: tuple[Alert, ...] = (
    Alert(
        "StepscopeRunFailureRatioHigh",
        f"{RUNS_FAILED.record} > {RUN_FAILURE_RATIO}",
        "15m",
        "More than 10% of runs or Agents API turns end failed, expired or incomplete.",
        "{{ $value | humanizePercentage }} of the runs seen by {{ $labels.job }}" + _PROTOCOL + " ended failed, "
        "expired or incomplete over the last 5 minutes (threshold 10%).",
        note=f"{RUN_FAILURE_RATIO.name} = {RUN_FAILURE_RATIO.shown}",
    ),
    Alert(
        "StepscopeStepFailureRatioHigh",
        f"{STEPS_FAILED.record} > {STEP_FAILURE_RATIO}",
        "15m",
        "More than 10% of run steps or Agents API items end failed or expired.",
        "{{ $value | humanizePercentage }} of the run steps seen by {{ $labels.job }}" + _PROTOCOL + " ended failed "
        "or expired over the last 5 minutes (threshold 10%).",
        note=f"{STEP_FAILURE_RATIO.name} = {STEP_FAILURE_RATIO.shown}",
    ),
    Alert(
        "StepscopeRunsExpiring",
        f'sum without ({STATUS}) ({RUNS.record}{{{STATUS}="expired"}}) > 0',
        "10m",
        "Assistants runs keep expiring before they finish.",
        'Runs seen by {{ $labels.job }} have been expiring for 10 minutes, currently {{ printf "%.3f" $value }} runs '
        "per second.",
    ),
    Alert(
        "StepscopeTokenBurnHigh",
        f"{TOKENS.record} > {TOKEN_BURN_RATE}",
        "15m",
        "Assistants runs consume tokens faster than the configured budget.",
        "Runs seen by {{ $labels.job }} consume {{ $value | humanize }} tokens per second (threshold 2000 tokens/s).",
        note=f"{TOKEN_BURN_RATE.name} = 2000 tokens/s; per-assistant budgets can use {TOKENS_BY_ASSISTANT.record}.",
    ),
    Alert(
        "StepscopeApiErrors",
        f"{API_ERRORS.record} > {API_ERROR_RATIO}",
        "15m",
        "Stepscope requests to the Assistants API are failing.",
        "{{ $value | humanizePercentage }} of the Assistants API requests made by {{ $labels.job }} failed with 5xx, "
        "401, 403 or a transport error over the last 5 minutes (threshold 5%).",
        note=f"{API_ERROR_RATIO.name} = {API_ERROR_RATIO.shown}",
    ),
    Alert(
        "StepscopeRateLimited",
        f"{API_LIMITED.record} > {RATE_LIMITED_RATIO}",
        "15m",
        "The Assistants API is rate limiting stepscope.",
        "{{ $value | humanizePercentage }} of the Assistants API requests made by {{ $labels.job }} were answered 429 "
        "over the last 5 minutes (threshold 10%).",
        note=f"{RATE_LIMITED_RATIO.name} = {RATE_LIMITED_RATIO.shown}",
    ),
    Alert(
        "StepscopeSpanExportFailing",
        f"{EXPORT_FAILURES.record} > 0",
        "10m",
        "Stepscope cannot export spans to the OTLP endpoint.",
        '{{ $labels.job }} has failed {{ printf "%.3f" $value }} span exports per second for 10 minutes; traces of '
        "runs are being lost.",
    ),
    Alert(
        "StepscopeExportLagHigh",
        f'{LAG[0].record}{{quantile="0.95"}} > {EXPORT_LAG_P95}',
        "15m",
        "Stepscope exports run steps long after they finish.",
        "95% of the steps exported by {{ $labels.job }} reached the exporters within {{ $value | humanizeDuration }} "
        "of finishing over the last 5 minutes (threshold 2m).",
        note=f"{EXPORT_LAG_P95.name} = {EXPORT_LAG_P95.shown}",
    ),
    Alert(
        "StepscopeSpanBacklogGrowing",
        f"max {_TARGETS} ({md.SPAN_BACKLOG_AGE.name}) > {SPAN_BACKLOG_AGE}",
        "10m",
        "Spans have been waiting for the trace backend for more than 10 minutes.",
        "The oldest span {{ $labels.job }} keeps for the trace backend has waited {{ $value | humanizeDuration }} "
        "(threshold 10m); traces are late, and spans past the backlog's bounds are dropped.",
        note=f"{SPAN_BACKLOG_AGE.name} = {SPAN_BACKLOG_AGE.shown}; the oldest span of any pod of the job counts.",
    ),
    Alert(
        "StepscopeDown",
        f'absent(up{{job="{SCRAPE_JOB}"}} == 1)',
        "5m",
        "No stepscope target is up.",
        f'No target with job="{SCRAPE_JOB}" has been up for 5 minutes{{{{ with $externalURL }}}} on {{{{ . }}}}'
        "{{ end }}; Assistants runs are not observed.",
        severity="critical",
        note=f'The scrape job must be named "{SCRAPE_JOB}"; absent() also fires when the target vanished entirely.',
    ),
    Alert(
        "StepscopeDataDropped",
        f"sum {_TARGETS} (rate({md.DROPPED.name}[{WINDOW}])) > 0\nor\n"
        f"sum {_TARGETS} (rate({md.INVALID_OBJECTS.name}[{WINDOW}])) > 0\n",
        "10m",
        "Stepscope is dropping or rejecting data.",
        '{{ $labels.job }} has been losing data for 10 minutes: {{ printf "%.3f" $value }} per second '
        "{{ if $labels.reason }}dropped ({{ $labels.reason }}){{ else }}invalid {{ $labels.kind }} objects{{ end }}.",
    ),
)


# --- rendering: a small YAML writer for this one shape, so the generator needs no YAML library ----------------

_NOT_PLAIN = re.compile(r"^[-?:,\[\]{}#&*!|>'\"%@`\s]|: | #|:$|\s$")
_NOT_STRING = re.compile(r"^([-+]?[\d._]*([eE][-+]?\d+)?|true|false|yes|no|on|off|null|~)$", re.IGNORECASE)
_DESCRIPTION_WIDTH = 100


def _scalar(text: str) -> str:
    """`text` as a one-line YAML scalar: plain where YAML reads it back as this string, else double-quoted."""
    if _NOT_PLAIN.search(text) or _NOT_STRING.fullmatch(text):
        return json.dumps(text, ensure_ascii=False)
    return text


def _block(key: str, text: str, pad: str) -> list[str]:
    """`key:` with `text` as a plain scalar, or as a literal block when it spans lines."""
    if "\n" not in text:
        return [f"{pad}{key}: {_scalar(text)}"]
    return [f"{pad}{key}: |", *(f"{pad}  {line}" for line in text.rstrip("\n").split("\n"))]


def _folded(key: str, text: str, pad: str) -> list[str]:
    """`key: >-` with `text` wrapped; folding joins the lines back with single spaces."""
    lines = textwrap.wrap(text, _DESCRIPTION_WIDTH, break_long_words=False, break_on_hyphens=False)
    return [f"{pad}{key}: >-", *(f"{pad}  {line}" for line in lines)]


def _record_lines(rule: Record, pad: str) -> Iterator[str]:
    if rule.comment:
        yield f"{pad}# {rule.comment}"
    yield f"{pad}- record: {rule.record}"
    yield from _block("expr", rule.expr, pad + "  ")
    if rule.labels:
        yield f"{pad}  labels:"
        yield from (f"{pad}    {key}: {_scalar(value)}" for key, value in rule.labels.items())


def _alert_lines(alert: Alert, pad: str, runbook_url: str) -> Iterator[str]:
    yield f"{pad}- alert: {alert.alert}"
    inner = pad + "  "
    if alert.note:
        yield f"{inner}# {alert.note}"
    yield from _block("expr", alert.expr, inner)
    yield f"{inner}for: {alert.wait}"
    yield f"{inner}labels:"
    yield f"{inner}  severity: {alert.severity}"
    yield f"{inner}annotations:"
    yield f"{inner}  summary: {_scalar(alert.summary)}"
    yield from _folded("description", alert.description, inner + "  ")
    yield f"{inner}  runbook_url: {_scalar(runbook_url + alert.alert.lower())}"


def _groups(pad: str, runbook_url: str) -> list[str]:
    """The `groups:` list, every line prefixed with `pad`."""
    out = [f"{pad}- name: stepscope.rules", f"{pad}  rules:"]
    for i, rule in enumerate(RECORDS):
        if rule.comment and i:
            out.append("")
        out.extend(_record_lines(rule, pad + "    "))
    out += ["", f"{pad}- name: stepscope.alerts", f"{pad}  rules:"]
    for i, alert in enumerate(ALERTS):
        if i:
            out.append("")
        out.extend(_alert_lines(alert, pad + "    ", runbook_url))
    return out


def _header(runbook_url: str) -> list[str]:
    shown = "a path in the repository, not a link" if runbook_url == RUNBOOK_URL else "a link"
    text = (
        "Prometheus recording and alerting rules for stepscope, generated by `stepscope rules --write deploy` from "
        "stepscope/rules.py and the metric definitions in stepscope/metricdefs.py: edit those and regenerate, never "
        "this file. Checked by `promtool check rules --lint=all --lint-fatal` and unit-tested in "
        "tests/rules/*_test.yml. deploy/runbook.md has one section per alert (meaning, impact, diagnosis, fix); each "
        f"alert's runbook_url is {runbook_url} plus the alert name in lower case, {shown} (`stepscope rules "
        "--runbook-url BASE` puts another address in front)."
    )
    lines = [f"# {line}" for line in textwrap.wrap(text, 114, break_on_hyphens=False)]
    lines += ["#", "# Thresholds (constants in stepscope/rules.py; change one together with deploy/runbook.md and"]
    lines += ["# tests/rules/alerts_test.yml):"]
    width = max(len(f"{t.name} = {t.shown}") for t in THRESHOLDS) + 2
    for t in THRESHOLDS:
        lines.append(f"#   {f'{t.name} = {t.shown}':<{width}}{t.alert:<30}({t.meaning})")
    lines.append(
        f'# StepscopeDown assumes the scrape job is named "{SCRAPE_JOB}"; edit the `job` matcher if yours differs.'
    )
    return lines


def render_rules(runbook_url: str = RUNBOOK_URL) -> str:
    """The plain Prometheus rules file (`deploy/prometheus/stepscope.rules.yml`)."""
    return "\n".join([*_header(runbook_url), "groups:", *_groups("  ", runbook_url)]) + "\n"


def render_operator(runbook_url: str = RUNBOOK_URL) -> str:
    """The same groups as a Prometheus Operator `PrometheusRule` (`deploy/kubernetes/base/prometheusrule.yaml`)."""
    head = (
        "The stepscope recording and alerting rules for the Prometheus Operator, generated with "
        "deploy/prometheus/stepscope.rules.yml by `stepscope rules --write deploy` from stepscope/rules.py: edit "
        "that module and regenerate, never this file. `release: kube-prometheus-stack` matches that chart's default "
        "ruleSelector; use the label your Prometheus CR selects. runbook_url is "
        f"{runbook_url} plus the alert name in lower case."
    )
    lines = [f"# {line}" for line in textwrap.wrap(head, 114, break_on_hyphens=False)]
    lines += [
        "apiVersion: monitoring.coreos.com/v1",
        "kind: PrometheusRule",
        "metadata:",
        "  name: stepscope",
        "  labels:",
        "    app.kubernetes.io/name: stepscope",
        "    release: kube-prometheus-stack",
        "spec:",
        "  groups:",
        *_groups("    ", runbook_url),
    ]
    return "\n".join(lines) + "\n"


def render_all(runbook_url: str = RUNBOOK_URL) -> dict[Path, str]:
    """Path under `deploy/` -> file text; deterministic."""
    return {RULES_FILE: render_rules(runbook_url), OPERATOR_FILE: render_operator(runbook_url)}


def write(deploy_dir: Path | str, runbook_url: str = RUNBOOK_URL) -> list[Path]:
    """Write both files under `deploy_dir` (directories created if missing); return the paths written."""
    written = []
    for relative, text in render_all(runbook_url).items():
        path = Path(deploy_dir) / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


def check(deploy_dir: Path | str, runbook_url: str = RUNBOOK_URL) -> list[Path]:
    """Files under `deploy_dir` that are missing or differ from :func:`render_all` (empty: up to date)."""
    stale = []
    for relative, text in render_all(runbook_url).items():
        path = Path(deploy_dir) / relative
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            stale.append(path)
    return stale
