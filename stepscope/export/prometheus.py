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

import bisect
import itertools
import logging
import math
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

    __slots__ = ("bounds", "caps", "children", "fan_out", "fanned", "metric", "name", "names", "resolved")

    def __init__(
        self,
        name: str,
        metric: Any,
        names: tuple[str, ...],
        caps: tuple[tuple[int, _LabelCap], ...],
        bounds: tuple[float, ...] | None,
    ) -> None:
        self.name = name
        self.metric = metric
        self.bounds = bounds  # a histogram's upper bounds, +Inf last; None for a counter
        self.names = names
        self.caps = caps
        self.children: dict[tuple[str, ...], Any] = {}
        # Raw label values the caps left alone -> child. Admitted values stay admitted, so the entry stays right;
        # tuples with a rewritten value are not kept (they are unbounded) and take the slow path every time.
        self.resolved: dict[tuple[str, ...], Any] = {}
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
            bounds: tuple[float, ...] | None = None
            if metric_name in _BUCKETS:
                bounds = (*_BUCKETS[metric_name], math.inf)
                metric = Histogram(
                    metric_name, _HELP[metric_name], names, registry=registry, buckets=_BUCKETS[metric_name]
                )
            else:
                metric = Counter(short, _HELP[metric_name], names, registry=registry)
            capped = tuple((i, caps[n]) for i, n in enumerate(names) if n in caps)
            family = _Family(metric_name, metric, names, capped, bounds)
            family.fan_out = [(names.index(label), known) for label, known in _FAN_OUT.get(metric_name, {}).items()]
            self._families[metric_name] = family
        self._warned: set[str] = set()
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
        """Add each observation to its counter or histogram, with an exemplar when it carries both ids.

        The result is that of recording them one by one, in order, but each series is touched once per call where
        it can be: a counter gets the sum of its increments, then the last increment that carries ids again with
        its exemplar (exemplar value and ids as the last one left them); a histogram observes every value, and only
        the last value landing in each bucket brings its exemplar (earlier ones would be overwritten). Validating
        and formatting an exemplar is most of prometheus_client's cost per increment, so callers should pass all
        observations they have at once.
        """
        groups: dict[int, tuple[_Family, Any, list[Observation]]] = {}
        for obs in observations:
            try:
                family = self._families[obs.metric]
                labels: Mapping[str, str] = obs.labels
                raw = tuple([labels[n] for n in family.names])
                if family.bounds is None and obs.value < 0:
                    raise ValueError("Counters can only be incremented by non-negative amounts.")
                child = self._resolve(family, raw)
            except Exception as exc:
                self._warn(obs.metric, exc)
                continue
            group = groups.get(id(child))
            if group is None:
                groups[id(child)] = (family, child, [obs])
            else:
                group[2].append(obs)
        for family, child, group_obs in groups.values():
            try:
                if family.bounds is None:
                    _inc(child, group_obs)
                else:
                    _observe(child, family.bounds, group_obs)
            except Exception as exc:
                self._warn(family.name, exc)

    def _resolve(self, family: _Family, raw: tuple[str, ...]) -> Any:
        """The child for raw label values; every capped rewrite is reported, every time."""
        child = family.resolved.get(raw)
        if child is None:
            before = self._overflows
            child = family.child(self._capped(family, raw))
            if self._overflows == before:
                family.resolved[raw] = child
        return child

    def _warn(self, metric: str, exc: Exception) -> None:
        if metric not in self._warned:
            self._warned.add(metric)
            log.error("cannot record observation of %s; skipping such observations", metric, exc_info=exc)


def _exemplar(obs: Observation) -> dict[str, str] | None:
    if obs.trace_id is None or obs.span_id is None:
        return None
    return {"trace_id": f"{obs.trace_id:032x}", "span_id": f"{obs.span_id:016x}"}


def _inc(child: Any, group: list[Observation]) -> None:
    last = len(group) - 1
    while last >= 0 and (group[last].trace_id is None or group[last].span_id is None):
        last -= 1
    if last < 0:
        child.inc(sum(obs.value for obs in group))
        return
    if len(group) > 1:
        child.inc(sum(obs.value for i, obs in enumerate(group) if i != last))
    child.inc(group[last].value, _exemplar(group[last]))


def _observe(child: Any, bounds: tuple[float, ...], group: list[Observation]) -> None:
    # prometheus_client puts a value in the first bucket whose bound is >= it (bisect_left); NaN goes in none.
    last_in_bucket: dict[int, int] = {}
    for i, obs in enumerate(group):
        if obs.trace_id is not None and obs.span_id is not None and obs.value == obs.value:
            last_in_bucket[bisect.bisect_left(bounds, obs.value)] = i
    exemplar_at = set(last_in_bucket.values())
    for i, obs in enumerate(group):
        child.observe(obs.value, _exemplar(obs) if i in exemplar_at else None)
