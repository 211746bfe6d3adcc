"""Domain metrics on an injected Prometheus registry: the `MetricSink` for mapping's observations.

Metric families and labels are the telemetry contract (dashboards and alerts read them):

- `stepscope_run_steps_total{step_type,status,model,assistant_id}`
- `stepscope_tokens_total{token_type,step_type,model,assistant_id}`
- `stepscope_runs_total{status,model,assistant_id}`
- `stepscope_run_step_duration_seconds{step_type,status}`, `stepscope_run_duration_seconds{status}`,
  `stepscope_run_queue_seconds` (histograms)
- `stepscope_tool_calls_total{tool_type,tool_name}`

`assistant_id`, `model` and `tool_name` keep their first `label_cap` distinct values each (across all families);
later values read `_other`, and every observation rewritten that way is reported to `overflow("label_cap")`.
Known label sets exist from start-up (histograms by step type and status, built-in tools); the first time a
`(model, assistant_id)` pair shows up, its counters are created for every known status, step type and token type,
so failure ratios read 0 rather than "no data". Exemplars `{trace_id, span_id}` ride on every counter increment
and histogram observation (rendered only in OpenMetrics).
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram

from stepscope.mapping import attributes as a
from stepscope.mapping import metrics as m
from stepscope.types import Observation

log = logging.getLogger(__name__)

STEP_DURATION_BUCKETS = (0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0)
"""Seconds. Server timestamps have 1 s resolution, so the first bucket holds the 0 s steps."""
RUN_DURATION_BUCKETS = (1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 3600.0)
"""Seconds. Runs expire 10 minutes after creation unless tool outputs keep them alive."""
QUEUE_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
"""Seconds from `created_at` to `started_at`."""

OVERFLOW_REASON = "label_cap"

_HELP = {
    m.RUN_STEPS_TOTAL: "Terminal run steps, by step type, status, model and assistant.",
    m.TOKENS_TOTAL: "Tokens from run step usage (each step counted once; run usage is never added).",
    m.RUNS_TOTAL: "Finished runs, by terminal status, model and assistant.",
    m.RUN_STEP_DURATION: "Run step duration from created_at to its terminal timestamp, in seconds.",
    m.RUN_DURATION: "Run duration from created_at to its terminal timestamp, in seconds.",
    m.RUN_QUEUE: "Time a run waited from created_at to started_at, in seconds.",
    m.TOOL_CALLS_TOTAL: "Tool calls in terminal run steps, by tool type and name.",
}
_BUCKETS = {
    m.RUN_STEP_DURATION: STEP_DURATION_BUCKETS,
    m.RUN_DURATION: RUN_DURATION_BUCKETS,
    m.RUN_QUEUE: QUEUE_BUCKETS,
}
# Per counter: the labels whose known values are filled in when a new combination of the other labels appears.
_FAN_OUT: dict[str, dict[str, tuple[str, ...]]] = {
    m.RUN_STEPS_TOTAL: {a.LABEL_STEP_TYPE: a.STEP_TYPES, a.LABEL_STATUS: a.STEP_STATUSES},
    m.TOKENS_TOTAL: {a.LABEL_TOKEN_TYPE: a.TOKEN_TYPES, a.LABEL_STEP_TYPE: a.STEP_TYPES},
    m.RUNS_TOTAL: {a.LABEL_STATUS: a.RUN_STATUSES},
}


class _LabelCap:
    """Keeps the first `limit` distinct values of one label; later values become `_other`."""

    __slots__ = ("_limit", "_report", "_seen")

    def __init__(self, limit: int, report: Callable[[], None]) -> None:
        self._seen: set[str] = set()
        self._limit = limit
        self._report = report

    def __call__(self, value: str) -> str:
        if value in self._seen:
            return value
        if len(self._seen) < self._limit:
            self._seen.add(value)
            return value
        self._report()
        return a.OTHER


class _Family:
    """One metric family with its label order, capped label positions and a cache of children."""

    __slots__ = ("caps", "children", "fan_out", "fanned", "is_histogram", "metric", "names")

    def __init__(self, metric: Any, names: tuple[str, ...], caps: tuple[tuple[int, _LabelCap], ...]) -> None:
        self.metric = metric
        self.is_histogram = isinstance(metric, Histogram)
        self.names = names
        self.caps = caps
        self.children: dict[tuple[str, ...], Any] = {}
        self.fan_out: list[tuple[int, tuple[str, ...]]] = []
        self.fanned: set[tuple[str, ...]] = set()

    def child(self, values: tuple[str, ...]) -> Any:
        found = self.children.get(values)
        if found is not None:
            return found
        if not self.names:
            self.children[values] = self.metric
            return self.metric
        if self.fan_out:
            self._fill_known(values)
        made = self.metric.labels(*values)
        self.children[values] = made
        return made

    def _fill_known(self, values: tuple[str, ...]) -> None:
        fixed = tuple(v for i, v in enumerate(values) if i not in {pos for pos, _ in self.fan_out})
        if fixed in self.fanned:
            return
        self.fanned.add(fixed)
        positions = [pos for pos, _ in self.fan_out]
        for combo in itertools.product(*(known for _, known in self.fan_out)):
            filled = list(values)
            for pos, value in zip(positions, combo, strict=True):
                filled[pos] = value
            key = tuple(filled)
            if key not in self.children:
                self.children[key] = self.metric.labels(*key)


class PrometheusMetrics:
    """`MetricSink` writing mapping observations into Counters and Histograms on `registry`.

    Never touches the global registry. `record` does not raise: an observation that cannot be recorded (unknown
    metric, missing label, negative counter value) is skipped and logged once per metric name.
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        label_cap: int = 100,
        overflow: Callable[[str], None] | None = None,
    ) -> None:
        if label_cap < 1:
            raise ValueError("label_cap must be >= 1")
        self._overflow = overflow
        self._overflows = 0
        caps = {name: _LabelCap(label_cap, self._report_overflow) for name in sorted(a.CAPPED_LABELS)}
        self._families: dict[str, _Family] = {}
        for metric_name, names in m.METRIC_LABELS.items():
            metric: Any
            short = metric_name.removesuffix("_total")
            if metric_name in _BUCKETS:
                metric = Histogram(
                    metric_name, _HELP[metric_name], names, registry=registry, buckets=_BUCKETS[metric_name]
                )
            else:
                metric = Counter(short, _HELP[metric_name], names, registry=registry)
            family = _Family(metric, names, tuple((i, caps[n]) for i, n in enumerate(names) if n in caps))
            family.fan_out = [(names.index(label), known) for label, known in _FAN_OUT.get(metric_name, {}).items()]
            self._families[metric_name] = family
        self._warned: set[str] = set()
        self._exemplar_key: tuple[int, int] | None = None
        self._exemplar: dict[str, str] | None = None
        self._preinit()

    @property
    def overflows(self) -> int:
        """Observations whose capped labels were rewritten to `_other` so far."""
        return self._overflows

    def _report_overflow(self) -> None:
        self._overflows += 1
        if self._overflow is not None:
            self._overflow(OVERFLOW_REASON)

    def _preinit(self) -> None:
        for step_type, status in itertools.product(a.STEP_TYPES, a.STEP_STATUSES):
            self._families[m.RUN_STEP_DURATION].child((step_type, status))
        for status in a.RUN_STATUSES:
            self._families[m.RUN_DURATION].child((status,))
        self._families[m.RUN_QUEUE].child(())
        tools = self._families[m.TOOL_CALLS_TOTAL]
        for tool_name, tool_type in a.BUILTIN_TOOLS:
            tools.child((tool_type, self._capped(tools, (tool_type, tool_name))[1]))

    @staticmethod
    def _capped(family: _Family, values: tuple[str, ...]) -> tuple[str, ...]:
        if not family.caps:
            return values
        out = list(values)
        for pos, cap in family.caps:
            out[pos] = cap(out[pos])
        return tuple(out)

    def record(self, observations: Sequence[Observation]) -> None:
        """Add each observation to its counter or histogram, with an exemplar when it carries both ids."""
        for obs in observations:
            try:
                self._record_one(obs)
            except Exception:
                if obs.metric not in self._warned:
                    self._warned.add(obs.metric)
                    log.exception("cannot record observation of %s; skipping such observations", obs.metric)

    def _record_one(self, obs: Observation) -> None:
        family = self._families[obs.metric]
        labels: Mapping[str, str] = obs.labels
        values = self._capped(family, tuple([labels[n] for n in family.names]))
        child = family.child(values)
        exemplar = None
        if obs.trace_id is not None and obs.span_id is not None:
            key = (obs.trace_id, obs.span_id)
            if key != self._exemplar_key:
                # Consecutive observations of one step share ids: format them once.
                self._exemplar_key = key
                self._exemplar = {"trace_id": f"{obs.trace_id:032x}", "span_id": f"{obs.span_id:016x}"}
            exemplar = self._exemplar
        if family.is_histogram:
            child.observe(obs.value, exemplar)
        else:
            child.inc(obs.value, exemplar)
