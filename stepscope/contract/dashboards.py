"""Grafana dashboards for stepscope, generated from code (one source of truth).

The committed files in ``grafana/dashboards/`` are the output of :func:`render_all`; a test asserts they are equal,
so edit this module and run ``stepscope dashboards --write grafana/dashboards`` (or :func:`write`), never the JSON.

Contract of the generated dashboards (classic JSON model, ``schemaVersion`` 39, fixed ``uid``s; for Grafana 11.6 and 12,
whose JSON Schemas ``tests/ops/test_dashboard_schemas.py`` checks them against):

- template variables ``datasource`` (type datasource, Prometheus), ``job`` (from ``stepscope_build_info``), and
  ``protocol`` / ``assistant_id`` / ``model`` (from ``stepscope_runs_total``, multi-value with an ``.*`` "All");
- every query of a domain family with a ``protocol`` label filters ``protocol=~"$protocol"``; the step duration has
  no such label (Agents API items have no times), so its panel says it is Assistants-only;
- every panel and target uses ``{"type": "prometheus", "uid": "${datasource}"}``, has a title, a description and a
  unit; every ``rate()`` uses ``$__rate_interval``;
- targets that read a metric carrying exemplars (``EXEMPLAR_METRICS``) have ``"exemplar": true`` so a point links
  to the run's trace through the data source's ``exemplarTraceIdDestinations``.

Output is deterministic: ``json.dumps(..., indent=2, sort_keys=True)`` plus a trailing newline.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stepscope.contract import metricdefs as md

__all__ = ["EXEMPLAR_METRICS", "Panel", "Query", "check", "dashboards", "iter_panels", "render_all", "write"]

JSON = dict[str, Any]

SCHEMA_VERSION = 39
DATASOURCE: JSON = {"type": "prometheus", "uid": "${datasource}"}
# Metrics the exporter annotates with trace_id/span_id exemplars (histograms: every series of the family).
EXEMPLAR_METRICS = frozenset(d.name for d in md.ALL_METRICS if d.exemplars)
_METRIC_RE = re.compile(r"\bstepscope_[a-z_]+")
_HISTOGRAM_SUFFIXES = ("_bucket", "_count", "_sum")

# Selectors: domain counters carry model/assistant_id and protocol; the run histograms and tool calls protocol; the
# step duration and health metrics only the target labels. The "All" value `.*` also matches series without
# `protocol` (written before the label existed), so history stays on the dashboards.
RUNS = 'job=~"$job",protocol=~"$protocol",assistant_id=~"$assistant_id",model=~"$model"'
DOMAIN = 'job=~"$job",protocol=~"$protocol"'
JOB = 'job=~"$job"'
QUANTILES = ((0.5, "p50"), (0.95, "p95"), (0.99, "p99"))


@dataclass(frozen=True, slots=True)
class Query:
    """One PromQL target: ``instant`` queries feed tables and bar gauges, the rest are range queries."""

    expr: str
    legend: str
    instant: bool = False


@dataclass(frozen=True, slots=True)
class Panel:
    """A panel before layout: ``kind`` is a Grafana panel type, ``unit`` a Grafana unit id, ``width`` of 24."""

    title: str
    description: str
    unit: str
    queries: tuple[Query, ...]
    kind: str = "timeseries"
    width: int = 12
    height: int = 8


def _carries_exemplars(expr: str) -> bool:
    return any(_base_metric(name) in EXEMPLAR_METRICS for name in _METRIC_RE.findall(expr))


def _base_metric(name: str) -> str:
    for suffix in _HISTOGRAM_SUFFIXES:
        name = name.removesuffix(suffix)
    return name


def _rate(metric: str, selector: str, by: str = "") -> str:
    group = f" by ({by}) " if by else ""
    return f"sum{group}(rate({metric}{{{selector}}}[$__rate_interval]))"


def _quantiles(metric: str, selector: str, by: str = "") -> tuple[Query, ...]:
    """p50/p95/p99 of a classic histogram, grouped by ``by`` (plus ``le``)."""
    labels = f"{by}, le" if by else "le"
    legend_suffix = f" {{{{{by}}}}}" if by else ""
    return tuple(
        Query(
            f"histogram_quantile({q}, sum by ({labels}) (rate({metric}_bucket{{{selector}}}[$__rate_interval])))",
            f"{name}{legend_suffix}",
        )
        for q, name in QUANTILES
    )


def _ratio(metric: str, selector: str, failed: str, by: str = "") -> str:
    """Failed over all, summed separately; reads 0 (not "no data") while nothing failed."""
    num = _rate(metric, f"{selector},{failed}", by)
    den = _rate(metric, selector, by)
    return f"({num} or {den} * 0) / {den}"


def _target(query: Query, ref_id: str) -> JSON:
    return {
        "datasource": DATASOURCE,
        "editorMode": "code",
        "exemplar": _carries_exemplars(query.expr) and not query.instant,
        "expr": query.expr,
        "format": "table" if query.instant else "time_series",
        "instant": query.instant,
        "legendFormat": query.legend,
        "range": not query.instant,
        "refId": ref_id,
    }


def _options(kind: str) -> JSON:
    if kind == "timeseries":
        return {
            "legend": {"calcs": ["mean", "max"], "displayMode": "table", "placement": "bottom", "showLegend": True},
            "tooltip": {"mode": "multi", "sort": "desc"},
        }
    if kind == "table":
        return {"cellHeight": "sm", "frameIndex": 0, "showHeader": True}
    reduce = {"calcs": ["lastNotNull"], "fields": "", "values": kind == "bargauge"}
    if kind == "bargauge":
        legend = {"calcs": [], "displayMode": "list", "placement": "bottom", "showLegend": False}
        return {"displayMode": "gradient", "legend": legend, "maxVizHeight": 300, "minVizHeight": 16, "minVizWidth": 8,
                "namePlacement": "auto", "orientation": "horizontal", "reduceOptions": reduce, "showUnfilled": True,
                "sizing": "auto", "valueMode": "color"}  # fmt: skip
    return {"colorMode": "value", "graphMode": "area", "justifyMode": "auto", "orientation": "auto",
            "percentChangeColorMode": "standard", "reduceOptions": reduce, "showPercentChange": False,
            "textMode": "auto", "wideLayout": True}  # fmt: skip


def _panel(panel: Panel, panel_id: int, x: int, y: int) -> JSON:
    defaults: JSON = {"color": {"mode": "palette-classic"}, "unit": panel.unit}
    if panel.kind == "timeseries":
        defaults["custom"] = {"fillOpacity": 10, "lineWidth": 1, "showPoints": "never", "spanNulls": False}
    if panel.unit == "percentunit":
        defaults.update(min=0, max=1)
    refs = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    return {
        "datasource": DATASOURCE,
        "description": panel.description,
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "gridPos": {"h": panel.height, "w": panel.width, "x": x, "y": y},
        "id": panel_id,
        "options": _options(panel.kind),
        "targets": [_target(q, refs[i]) for i, q in enumerate(panel.queries)],
        "title": panel.title,
        "type": panel.kind,
    }


# Fixed parts of the JSON model, as JSON text so they stay compact; parsed afresh per dashboard.
_ANNOTATION = (
    '{"builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"}, "enable": true, "hide": true, '
    '"iconColor": "rgba(0, 211, 255, 1)", "name": "Annotations & Alerts", "type": "dashboard"}'
)
_LINK = (
    '{"asDropdown": false, "icon": "external link", "includeVars": true, "keepTime": true, "tags": ["stepscope"], '
    '"targetBlank": false, "title": "stepscope", "tooltip": "The other stepscope dashboards", "type": "dashboards"}'
)
_VARIABLE = '{"hide": 0, "options": [], "regex": ""}'
# What a variable shows before Grafana has resolved it: the default data source, and "All" for the others.
_DEFAULT_SOURCE = {"text": "default", "value": "default"}
_ALL = {"selected": True, "text": ["All"], "value": ["$__all"]}


def _layout(rows: Sequence[tuple[str, Sequence[Panel]]]) -> list[JSON]:
    """Place rows (expanded, panels at top level) and wrap panels left to right at 24 columns."""
    out: list[JSON] = []
    next_id, y = 1, 0
    for title, panels in rows:
        grid = {"h": 1, "w": 24, "x": 0, "y": y}
        out.append({"collapsed": False, "gridPos": grid, "id": next_id, "panels": [], "title": title, "type": "row"})
        next_id, y = next_id + 1, y + 1
        x, line_height = 0, 0
        for panel in panels:
            if x + panel.width > 24:
                x, y, line_height = 0, y + line_height, 0
            out.append(_panel(panel, next_id, x, y))
            next_id, x, line_height = next_id + 1, x + panel.width, max(line_height, panel.height)
        y += line_height
    return out


def _query_variable(name: str, label: str, query: str) -> JSON:
    # The query as PromQL text: Grafana's Prometheus data source turns it into its query editor's form on load, and
    # both schemas (Grafana 11.6 and 12) accept it, where the editor's object has no schema that fits.
    fields = {"allValue": ".*", "current": _ALL, "datasource": DATASOURCE, "includeAll": True, "label": label}
    return {**json.loads(_VARIABLE), **fields, "multi": True, "name": name, "query": query, "refresh": 2, "sort": 1,
            "type": "query"}  # fmt: skip


def _variables() -> list[JSON]:
    source = {"includeAll": False, "label": "Data source", "multi": False, "name": "datasource", "refresh": 1}
    return [
        {**json.loads(_VARIABLE), **source, "current": _DEFAULT_SOURCE, "query": "prometheus", "type": "datasource"},
        _query_variable("job", "Job", f"label_values({md.BUILD_INFO}, job)"),
        _query_variable("protocol", "Protocol", f"label_values({md.RUNS}{{{JOB}}}, {md.LABEL_PROTOCOL})"),
        _query_variable("assistant_id", "Assistant", f"label_values({md.RUNS}{{{JOB}}}, {md.LABEL_ASSISTANT_ID})"),
        _query_variable("model", "Model", f"label_values({md.RUNS}{{{JOB}}}, {md.LABEL_MODEL})"),
    ]


def _dashboard(uid: str, title: str, description: str, rows: Sequence[tuple[str, Sequence[Panel]]]) -> JSON:
    return {
        "annotations": {"list": [json.loads(_ANNOTATION)]},
        "description": description,
        "editable": False,
        "graphTooltip": 1,
        "links": [json.loads(_LINK)],
        "panels": _layout(rows),
        "refresh": "30s",
        "schemaVersion": SCHEMA_VERSION,
        "tags": ["stepscope"],
        "templating": {"list": _variables()},
        "time": {"from": "now-1h", "to": "now"},
        "timepicker": {},
        "timezone": "",
        "title": title,
        "uid": uid,
        "version": 1,
    }


# Panel descriptions, keyed by title (Grafana shows them as the panel's (i) tooltip).
DESCRIPTIONS = {
    "Runs per second by status": "Units of work (runs, turns, responses) reaching a terminal state per second, by "
    "status. Click an exemplar to open the run's or turn's trace.",
    "Run and step failure ratios": "Per protocol, share of terminal runs (turns) that ended failed, expired or "
    "incomplete, and of terminal steps (items) that ended failed or expired (cancelled is not a failure).",
    "Run duration": "Run or turn duration from created_at to the terminal timestamp (p50/p95/p99).",
    "Run queue time": "Time from a run's or root turn's creation to its start (p50/p95/p99): provider-side queueing.",
    "Tracked runs": "Runs stepscope is currently watching (not yet terminal), summed over the selected jobs.",
    "Step duration by step type": "Run step duration from created_at to the terminal timestamp (p50/p95/p99). "
    "Only protocols whose steps have times (Assistants): items have none, and the protocol variable does not apply.",
    "Tool calls per second by type": "Tool calls and tool-call items per second by tool type: function, extension "
    "(code interpreter, MCP, web search, command execution, computer use), datastore (file search) or the raw type.",
    "Tokens per second by model and assistant": "Input plus output tokens per second from step, turn and response "
    "usage (each counted once; the cached and reasoning parts are in them), by model and assistant (agent for turns "
    "and responses).",
    "Top assistants by tokens": "The ten assistants that used the most tokens over the selected time range.",
    "API requests per second by endpoint and code": "Requests stepscope made to the API per second, "
    "by endpoint and HTTP status (`error` = transport failure).",
    "API latency by endpoint": "API request duration per attempt, by endpoint (p50/p95/p99).",
    "429 responses per second by endpoint": "Rate-limited (HTTP 429) API responses per second; "
    "stepscope honours Retry-After.",
    "API error ratio": "Share of API requests that failed with 5xx, 401, 403 or a transport error.",
    "Span export failures per second": "Failed OTLP span exports per second; the spans stay in the backlog and are "
    "sent again.",
    "Export lag": "Time from a step's terminal timestamp to its export (p50/p95/p99).",
    "Dropped objects per second by reason": "Objects dropped or degraded per second, by reason: a bound was reached "
    "(tracked runs, span queue, label cap), or spans left the backlog undelivered (backlog_full: the oldest made room "
    "for new ones; backlog_expired: older than the age bound).",
    "Span backlog": "Spans waiting for delivery to the trace backend. Grows while the backend is down or refusing; "
    "metrics are counted regardless.",
    "Oldest span in backlog": "Age of the oldest span waiting for the trace backend. Spans older than the age bound "
    "are dropped and counted as backlog_expired.",
    "Invalid objects per second by kind": "API objects stepscope could not parse and skipped, per second.",
    "Build info": "Running stepscope versions and how many targets run each.",
    "Targets up": "Scrape targets of the selected jobs that answered their last scrape.",
}


def _p(title: str, unit: str, *queries: Query, kind: str = "timeseries", width: int = 12) -> Panel:
    return Panel(title, DESCRIPTIONS[title], unit, queries, kind=kind, width=width)


def _overview() -> JSON:
    failed_runs = md.matcher(md.LABEL_STATUS, md.RUN_FAILED_STATUSES)
    failed_steps = md.matcher(md.LABEL_STATUS, md.STEP_FAILED_STATUSES)
    totals = f"{RUNS},{md.matcher(md.LABEL_TOKEN_TYPE, md.TOKEN_TOTALS)}"  # the breakdowns are parts of these
    top_tokens = f"topk(10, sum by (assistant_id) (increase({md.TOKENS.name}{{{totals}}}[$__range])))"
    runs = [
        _p("Runs per second by status", "ops", Query(_rate(md.RUNS.name, RUNS, "status"), "{{status}}")),
        _p(
            "Run and step failure ratios",
            "percentunit",
            Query(_ratio(md.RUNS.name, RUNS, failed_runs, md.LABEL_PROTOCOL), "runs {{protocol}}"),
            Query(_ratio(md.RUN_STEPS.name, RUNS, failed_steps, md.LABEL_PROTOCOL), "steps {{protocol}}"),
        ),
        _p("Run duration", "s", *_quantiles(md.RUN_DURATION.name, DOMAIN), width=8),
        _p("Run queue time", "s", *_quantiles(md.RUN_QUEUE.name, DOMAIN), width=8),
        _p("Tracked runs", "short", Query(f"sum({md.TRACKED_RUNS.name}{{{JOB}}})", "tracked"), kind="stat", width=8),
    ]
    steps = [
        _p("Step duration by step type", "s", *_quantiles(md.RUN_STEP_DURATION.name, JOB, "step_type")),
        _p(
            "Tool calls per second by type",
            "ops",
            Query(_rate(md.TOOL_CALLS.name, DOMAIN, "tool_type"), "{{tool_type}}"),
        ),
    ]
    by_model = Query(_rate(md.TOKENS.name, totals, "model, assistant_id"), "{{model}} {{assistant_id}}")
    tokens = [
        _p("Tokens per second by model and assistant", "short", by_model, width=16),
        _p("Top assistants by tokens", "short", Query(top_tokens, "{{assistant_id}}", True), kind="bargauge", width=8),
    ]
    return _dashboard(
        "stepscope-overview",
        "stepscope overview",
        "Agent work observed by stepscope, whatever the protocol (runs and steps, turns and items, responses): "
        "throughput, failures, durations, tokens and tools.",
        [("Runs", runs), ("Steps", steps), ("Tokens", tokens)],
    )


def _health() -> JSON:
    api_all = _rate(md.API_REQUESTS.name, JOB, "endpoint")
    api_429 = _rate(md.API_REQUESTS.name, JOB + ',code="429"', "endpoint") + f" or {api_all} * 0"
    api_errors = _ratio(md.API_REQUESTS.name, JOB, md.matcher(md.LABEL_CODE, md.API_ERROR_CODES))
    api = [
        _p(
            "API requests per second by endpoint and code",
            "reqps",
            Query(_rate(md.API_REQUESTS.name, JOB, "endpoint, code"), "{{endpoint}} {{code}}"),
        ),
        _p("API latency by endpoint", "s", *_quantiles(md.API_REQUEST_DURATION.name, JOB, "endpoint")),
        _p("429 responses per second by endpoint", "reqps", Query(api_429, "{{endpoint}}")),
        _p("API error ratio", "percentunit", Query(api_errors, "errors")),
    ]
    failures = Query(_rate(md.SPAN_EXPORT_FAILURES.name, JOB), "failures")
    export = [
        _p("Span export failures per second", "ops", failures, width=8),
        _p("Export lag", "s", *_quantiles(md.EXPORT_LAG.name, JOB), width=8),
        _p("Tracked runs", "short", Query(f"sum by (job) ({md.TRACKED_RUNS.name}{{{JOB}}})", "{{job}}"), width=8),
        _p("Span backlog", "short", Query(f"sum by (job) ({md.SPAN_BACKLOG.name}{{{JOB}}})", "{{job}}")),
        _p(
            "Oldest span in backlog",
            "s",
            Query(f"max by (job) ({md.SPAN_BACKLOG_AGE.name}{{{JOB}}})", "{{job}}"),
        ),
        _p(
            "Dropped objects per second by reason",
            "ops",
            Query(_rate(md.DROPPED.name, JOB, "reason"), "{{reason}}"),
        ),
        _p(
            "Invalid objects per second by kind",
            "ops",
            Query(_rate(md.INVALID_OBJECTS.name, JOB, "kind"), "{{kind}}"),
        ),
    ]
    versions = Query(f"count by (job, version) ({md.BUILD_INFO.name}{{{JOB}}})", "{{version}}", instant=True)
    build = [
        _p("Build info", "none", versions, kind="table"),
        _p("Targets up", "short", Query(f"sum by (job) (up{{{JOB}}})", "{{job}}"), kind="stat"),
    ]
    return _dashboard(
        "stepscope-health",
        "stepscope health",
        "stepscope's own health: API requests, span export and backlog, lag, dropped and invalid data, versions.",
        [("API", api), ("Export", export), ("Build", build)],
    )


def dashboards() -> dict[str, JSON]:
    """Every dashboard model, keyed by its file name in ``grafana/dashboards/``."""
    return {"stepscope-overview.json": _overview(), "stepscope-health.json": _health()}


def render_all() -> dict[str, str]:
    """File name -> JSON text (sorted keys, two-space indent, trailing newline); deterministic."""
    return {name: json.dumps(model, indent=2, sort_keys=True) + "\n" for name, model in dashboards().items()}


def write(directory: Path | str) -> list[Path]:
    """Write every dashboard into ``directory`` (created if missing); return the paths written."""
    target = Path(directory)
    target.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in render_all().items():
        path = target / name
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


def check(directory: Path | str) -> list[str]:
    """Names of dashboards missing from ``directory`` or differing from :func:`render_all` (empty: up to date)."""
    target = Path(directory)
    stale = []
    for name, text in render_all().items():
        path = target / name
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            stale.append(name)
    return stale


def iter_panels(panels: Sequence[JSON]) -> Iterator[JSON]:
    """Every panel, depth first, including children of (collapsed) rows."""
    for panel in panels:
        yield panel
        yield from iter_panels(panel.get("panels", []))
