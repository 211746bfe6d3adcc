"""Prometheus recording and alerting rules for stepscope, defined from the metric definitions.

This module holds what the rules are: their thresholds (`THRESHOLDS`), the recording rules (`RECORDS`) and the
alerts (`ALERTS`) as plain records. `stepscope.contract.rulefiles` writes them out as the committed
`deploy/prometheus/stepscope.rules.yml` and the PrometheusRule `deploy/kubernetes/base/prometheusrule.yaml`; a test
asserts those equal its output, so edit this module and run `stepscope rules --write deploy`, never the YAML.

Every metric name and label comes from `stepscope.contract.metricdefs`, and the failure selectors are the ones the
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

Each alert's `runbook_url` is added when the files are written (`stepscope.contract.rulefiles`): a prefix plus the alert
name in lower case, the anchor of its section in `deploy/runbook.md`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from stepscope.contract import metricdefs as md
from stepscope.contract.metricdefs import MetricDef

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


def _rate(
    metric: MetricDef, keep: Sequence[str], comment: str = "", *, bucket: bool = False, selector: str = ""
) -> Record:
    """`level:metric:rate5m` of `metric` (its series matching `selector`) summed over everything but `job` and
    `keep` (plus `le` for buckets)."""
    suffix = "_bucket" if bucket else ""
    dropped = (*TARGET_LABELS, *(label for label in metric.labels if label not in (*keep, *KEPT_LABELS)))
    level = "_".join(("job", *keep))
    matching = f"{{{selector}}}" if selector else ""
    expr = f"sum without ({_list(dropped)}) (rate({metric.name}{suffix}{matching}[{WINDOW}]))"
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
    "Token rates (input + output), per model, assistant and protocol, and per job (every protocol).",
    selector=md.matcher(md.LABEL_TOKEN_TYPE, md.TOKEN_TOTALS),
)
TOKENS = Record(
    "job:stepscope_tokens:rate5m",
    f"sum without ({md.LABEL_MODEL}, {md.LABEL_ASSISTANT_ID}, {md.LABEL_PROTOCOL}) ({TOKENS_BY_ASSISTANT.record})",
)
STEP_BUCKETS = _rate(
    md.RUN_STEP_DURATION, (md.LABEL_STEP_TYPE,),
    "Step duration quantiles by step type, from the aggregated buckets (protocols whose steps have times).",
    bucket=True,
)  # fmt: skip
API = _rate(md.API_REQUESTS, (ENDPOINT, CODE), "API health: requests by endpoint and code, error ratios.")
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
        "More than 10% of runs (turns, responses) end failed, expired or incomplete.",
        "{{ $value | humanizePercentage }} of the runs seen by {{ $labels.job }}" + _PROTOCOL + " ended failed, "
        "expired or incomplete over the last 5 minutes (threshold 10%).",
        note=f"{RUN_FAILURE_RATIO.name} = {RUN_FAILURE_RATIO.shown}",
    ),
    Alert(
        "StepscopeStepFailureRatioHigh",
        f"{STEPS_FAILED.record} > {STEP_FAILURE_RATIO}",
        "15m",
        "More than 10% of steps or items end failed or expired.",
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
        "Stepscope requests to the API are failing.",
        "{{ $value | humanizePercentage }} of the API requests made by {{ $labels.job }} failed with 5xx, "
        "401, 403 or a transport error over the last 5 minutes (threshold 5%).",
        note=f"{API_ERROR_RATIO.name} = {API_ERROR_RATIO.shown}",
    ),
    Alert(
        "StepscopeRateLimited",
        f"{API_LIMITED.record} > {RATE_LIMITED_RATIO}",
        "15m",
        "The API is rate limiting stepscope.",
        "{{ $value | humanizePercentage }} of the API requests made by {{ $labels.job }} were answered 429 "
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
        "{{ end }}; agent work is not observed.",
        severity="critical",
        note=f'The scrape job must be named "{SCRAPE_JOB}"; absent() also fires when the target vanished entirely.',
    ),
    Alert(
        "StepscopeTargetDown",
        f'up{{job="{SCRAPE_JOB}"}} == 0',
        "5m",
        "A stepscope target is down.",
        "{{ $labels.instance }} of job {{ $labels.job }} has not been scraped successfully for 5 minutes; the agent "
        "work it watches is not observed.",
        note="One alert per target: StepscopeDown cannot fire while another target of the job is up.",
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
