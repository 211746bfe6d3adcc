"""Every metric stepscope exposes, defined once: name, kind, help text, label names, and whether it has exemplars.

This table is the telemetry contract. The Prometheus exporter (`export/prometheus.py`) and the self metrics
(`selfmetrics.py`) register exactly these families; the mapping (`mapping/metrics.py`) emits observations under
these names; the Grafana dashboards (`dashboards.py`) and the Prometheus rules (`rules.py`) build their queries
from them; tests compare docs/telemetry.md's metric table and a live registry against it. To add a metric, add a
`MetricDef` here, then record it where it happens.

Names are as Prometheus exposes them: a counter's ends in `_total`, a histogram's is the family name (its series
add `_bucket`, `_count`, `_sum`).

- Domain metrics (from every protocol's units and records: runs and steps, turns and items, ...; with exemplars):
  `stepscope_run_steps_total`, `stepscope_tokens_total`, `stepscope_runs_total`,
  `stepscope_run_step_duration_seconds`, `stepscope_run_duration_seconds`, `stepscope_run_queue_seconds`,
  `stepscope_tool_calls_total`. Every one but the step duration (items have no times) has a last label
  `protocol` (`assistants` or `agents`), so one dashboard and one set of alerts serve both protocols.
- Self metrics (stepscope's own health): API requests and latency, export lag, drops, invalid objects, span and
  OTLP metric export failures, the last successful poll, build info, and the gauges read at scrape time (tracked
  runs, span backlog).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Kind = Literal["counter", "histogram", "gauge"]
_HISTOGRAM_SUFFIXES = ("_bucket", "_count", "_sum")


@dataclass(frozen=True, slots=True)
class MetricDef:
    """One metric family as exposed. `labels` are in exposition order; `exemplars` marks the families whose
    samples carry `{trace_id, span_id}` exemplars linking to the span they count."""

    name: str
    kind: Kind
    help: str
    labels: tuple[str, ...] = ()
    exemplars: bool = False

    @property
    def family(self) -> str:
        """The name `prometheus_client` takes: a counter's without `_total` (the client appends it)."""
        return self.name.removesuffix("_total") if self.kind == "counter" else self.name

    @property
    def series(self) -> tuple[str, ...]:
        """Every sample name a query may select: the name, or a histogram's `_bucket`, `_count` and `_sum`."""
        if self.kind == "histogram":
            return tuple(self.name + suffix for suffix in _HISTOGRAM_SUFFIXES)
        return (self.name,)

    def __str__(self) -> str:
        return self.name


# --- domain labels: their values are bounded by `mapping/attributes.py` (known sets, `_other`, `_unknown`) ----

LABEL_STEP_TYPE = "step_type"
LABEL_STATUS = "status"
LABEL_MODEL = "model"
LABEL_ASSISTANT_ID = "assistant_id"
LABEL_TOKEN_TYPE = "token_type"  # noqa: S105 - a label name, not a credential
TOKEN_TOTALS = ("input", "output")
"""The `token_type` values a token total sums: `cache_read` and `reasoning` are parts of them, not more tokens."""
LABEL_TOOL_TYPE = "tool_type"
LABEL_TOOL_NAME = "tool_name"
LABEL_PROTOCOL = "protocol"  # which API the unit came from; set by the mapping, never by the server

# --- domain metrics: what runs and steps add (mapping/metrics.py emits them, export/prometheus.py records them) ---

RUN_STEPS = MetricDef(
    "stepscope_run_steps_total",
    "counter",
    "Terminal steps and items of runs, turns and responses, by type, status, model, agent and protocol.",
    (LABEL_STEP_TYPE, LABEL_STATUS, LABEL_MODEL, LABEL_ASSISTANT_ID, LABEL_PROTOCOL),
    exemplars=True,
)
TOKENS = MetricDef(
    "stepscope_tokens_total",
    "counter",
    "Tokens from run step or turn usage (each counted once; run usage is never added).",
    (LABEL_TOKEN_TYPE, LABEL_STEP_TYPE, LABEL_MODEL, LABEL_ASSISTANT_ID, LABEL_PROTOCOL),
    exemplars=True,
)
RUNS = MetricDef(
    "stepscope_runs_total",
    "counter",
    "Finished runs, turns and responses, by terminal status, model, agent and protocol.",
    (LABEL_STATUS, LABEL_MODEL, LABEL_ASSISTANT_ID, LABEL_PROTOCOL),
    exemplars=True,
)
RUN_STEP_DURATION = MetricDef(
    "stepscope_run_step_duration_seconds",
    "histogram",
    "Step duration from created_at to its terminal timestamp, in seconds (protocols whose steps have times).",
    (LABEL_STEP_TYPE, LABEL_STATUS),
    exemplars=True,
)
RUN_DURATION = MetricDef(
    "stepscope_run_duration_seconds",
    "histogram",
    "Run or turn duration from created_at to its terminal timestamp, in seconds.",
    (LABEL_STATUS, LABEL_PROTOCOL),
    exemplars=True,
)
RUN_QUEUE = MetricDef(
    "stepscope_run_queue_seconds",
    "histogram",
    "Time a run or root turn waited from created_at to started_at, in seconds.",
    (LABEL_PROTOCOL,),
    exemplars=True,
)
TOOL_CALLS = MetricDef(
    "stepscope_tool_calls_total",
    "counter",
    "Tool calls in terminal run steps and tool-call items, by tool type, name and protocol.",
    (LABEL_TOOL_TYPE, LABEL_TOOL_NAME, LABEL_PROTOCOL),
    exemplars=True,
)

# --- self metrics: stepscope's own health (selfmetrics.py) ---------------------------------------------------

LABEL_ENDPOINT = "endpoint"  # one of `vocabulary.Endpoint`
LABEL_CODE = "code"  # HTTP status as text, or `error`, `invalid_body`, `too_large`, `deadline`
LABEL_REASON = "reason"  # one of `vocabulary.DropReason`
LABEL_KIND = "kind"  # the kind of an unparsable API object: run, run_step, tool_call, list, assistant
LABEL_VERSION = "version"

API_REQUESTS = MetricDef(
    "stepscope_api_requests_total",
    "counter",
    "API requests by endpoint and HTTP status (or error).",
    (LABEL_ENDPOINT, LABEL_CODE),
)
API_REQUEST_DURATION = MetricDef(
    "stepscope_api_request_duration_seconds",
    "histogram",
    "API request duration by endpoint, in seconds.",
    (LABEL_ENDPOINT,),
)
EXPORT_LAG = MetricDef(
    "stepscope_export_lag_seconds",
    "histogram",
    "Seconds from the end of what a span stands for (a run, step, turn or tool call) to the span's delivery.",
)
DROPPED = MetricDef("stepscope_dropped_total", "counter", "Items dropped or degraded, by reason.", (LABEL_REASON,))
INVALID_OBJECTS = MetricDef(
    "stepscope_invalid_objects_total", "counter", "API objects that could not be parsed, by kind.", (LABEL_KIND,)
)
SPAN_EXPORT_FAILURES = MetricDef(
    "stepscope_span_export_failures_total", "counter", "Spans the trace backend did not accept."
)
METRIC_EXPORT_FAILURES = MetricDef(
    "stepscope_metric_export_failures_total",
    "counter",
    "OTLP metric exports the metrics backend did not accept (OTEL_METRICS_EXPORTER=otlp).",
)
LAST_SUCCESSFUL_POLL = MetricDef(
    "stepscope_last_successful_poll_timestamp_seconds",
    "gauge",
    "Unix time of the last successful API request.",
)
BUILD_INFO = MetricDef("stepscope_build_info", "gauge", "stepscope build; the value is always 1.", (LABEL_VERSION,))
TRACKED_RUNS = MetricDef("stepscope_tracked_runs", "gauge", "Runs currently tracked by the poller.")
SPAN_BACKLOG = MetricDef(
    "stepscope_span_backlog", "gauge", "Spans committed and waiting for delivery to the trace backend."
)
SPAN_BACKLOG_AGE = MetricDef(
    "stepscope_span_backlog_age_seconds",
    "gauge",
    "Age of the oldest span waiting for delivery; 0 when none waits.",
)

DOMAIN_METRICS: tuple[MetricDef, ...] = (
    RUN_STEPS,
    TOKENS,
    RUNS,
    RUN_STEP_DURATION,
    RUN_DURATION,
    RUN_QUEUE,
    TOOL_CALLS,
)
SELF_METRICS: tuple[MetricDef, ...] = (
    API_REQUESTS,
    API_REQUEST_DURATION,
    TRACKED_RUNS,
    SPAN_BACKLOG,
    SPAN_BACKLOG_AGE,
    EXPORT_LAG,
    DROPPED,
    INVALID_OBJECTS,
    SPAN_EXPORT_FAILURES,
    METRIC_EXPORT_FAILURES,
    LAST_SUCCESSFUL_POLL,
    BUILD_INFO,
)
READ_GAUGES: tuple[MetricDef, ...] = (TRACKED_RUNS, SPAN_BACKLOG, SPAN_BACKLOG_AGE)
"""Self metrics read from a callable at scrape time rather than updated as events happen."""
ALL_METRICS: tuple[MetricDef, ...] = DOMAIN_METRICS + SELF_METRICS

# --- selectors dashboards and alerts share, so a panel and its alert count the same things as failures ---------

RUN_FAILED_STATUSES = ("failed", "expired", "incomplete")  # cancelled is the application's choice, not a failure
STEP_FAILED_STATUSES = ("failed", "expired")  # cancelled steps follow a cancelled run
API_ERROR_CODES = ("5..", "error", "invalid_body", "401", "403")  # `code` values (regex) of a failed API request


def matcher(label: str, values: tuple[str, ...]) -> str:
    """A PromQL label matcher for any of `values`: `matcher("status", ("failed", "expired"))` is
    `status=~"failed|expired"`; a single value gives `status="failed"`."""
    if len(values) == 1:
        return f'{label}="{values[0]}"'
    return f'{label}=~"{"|".join(values)}"'


_BY_SERIES = {series: d for d in ALL_METRICS for series in d.series}


def by_name(name: str) -> MetricDef | None:
    """The definition a sample name belongs to (`stepscope_runs_total`, `…_seconds_bucket`); None if none."""
    return _BY_SERIES.get(name)
