"""Domain metrics on an injected Prometheus registry: the `MetricSink` for mapping's observations.

Metric families, help texts and labels are the telemetry contract, defined in `metricdefs.DOMAIN_METRICS`:

- `stepscope_run_steps_total{step_type,status,model,assistant_id,protocol}`
- `stepscope_tokens_total{token_type,step_type,model,assistant_id,protocol}`
- `stepscope_runs_total{status,model,assistant_id,protocol}`
- `stepscope_run_step_duration_seconds{step_type,status}` (Assistants only), `stepscope_run_duration_seconds{status,
  protocol}`, `stepscope_run_queue_seconds{protocol}` (histograms)
- `stepscope_tool_calls_total{tool_type,tool_name,protocol}`

`protocol` (`assistants`, `agents`) is set by the mapping, not read from the server, so it is never capped.

Cardinality is bounded twice, because every label value comes from the server:

- Per label: `step_type`, `status`, `tool_type`, `tool_name`, `model` and `assistant_id` each admit the values the
  protocol defines (`attributes.KNOWN_VALUES`), `_unknown` and `_other` always, plus their first `label_cap`
  other values (shared across families); later values, and values longer than 64 characters, read `_other`.
- Per family: each family exposes at most `max_series` series, counted as the text exposition shows them (a
  counter's label set counts 2, `_total` and `_created`; a histogram's counts its buckets, `_sum`, `_count` and
  `_created`). A series whose `step_type`, `status` or `tool_type` is outside the known set may use only half of
  the budget, so garbage never crowds out known values. A new label set past the budget folds into the family's
  overflow series, with every server-valued label `_other` (one label set per protocol, two for tokens by
  `token_type`), the only one allowed past the budget.

Each observation rewritten by either bound is counted once on `overflow` as `label_cap`; the sum over a family's
series stays exact. Known label sets exist from start-up for each protocol given (histograms by step type and
status, or by the protocol's terminal statuses; built-in tools and the Agents API's nameless tool items); the first
time a `(model, assistant_id)` pair shows up for a protocol, its counters are created for every known status (and
for Assistants every step type) and token type when the budget allows, so failure ratios read 0 rather than "no
data". Agents API items are not filled in: their types are many, and the ratios' `or … * 0` covers them. Exemplars
`{trace_id, span_id}` ride on every counter increment and histogram observation (rendered only in OpenMetrics),
folded or not.
"""

from __future__ import annotations

import bisect
import itertools
import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram

from stepscope.contract import metricdefs as md
from stepscope.contract.vocabulary import DropReason
from stepscope.core.records import Drops, KnownLabels, Observation
from stepscope.mapping import attributes as a
from stepscope.mapping import metrics as m

log = logging.getLogger(__name__)

STEP_DURATION_BUCKETS = (0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0)
"""Seconds. Server timestamps have 1 s resolution, so the first bucket holds the 0 s steps."""
RUN_DURATION_BUCKETS = (1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 3600.0)
"""Seconds. Runs expire 10 minutes after creation unless tool outputs keep them alive."""
QUEUE_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
"""Seconds from `created_at` to `started_at`."""

OVERFLOW_REASON = DropReason.LABEL_CAP
DEFAULT_LABEL_CAP = 100
DEFAULT_MAX_SERIES = 2000
"""Series per family: a counter's 1,000 label sets hold 125 (model, assistant) pairs with all known step types
and statuses, and a hostile mix (10,000 step types, 1,500 statuses, 50x50 model/assistant pairs) stays
well under 1 MB per scrape."""

_BUCKETS = {
    m.RUN_STEP_DURATION: STEP_DURATION_BUCKETS,
    m.RUN_DURATION: RUN_DURATION_BUCKETS,
    m.RUN_QUEUE: QUEUE_BUCKETS,
}


class LabelCap:
    """Admits `known` values always and the first `limit` other values of one label; the rest become `_other`.

    Shared with the OTLP sink (`export/genai_metrics.py`), so its attributes are bounded the same way."""

    __slots__ = ("_known", "_limit", "_seen")

    def __init__(self, limit: int, known: frozenset[str]) -> None:
        self._seen: set[str] = set()
        self._limit = limit
        self._known = known | {a.UNKNOWN, a.OTHER}

    def __call__(self, value: str) -> str:
        if value in self._seen or value in self._known:
            return value
        if len(self._seen) < self._limit and len(value) <= a.MAX_LABEL_CHARS:
            self._seen.add(value)
            return value
        return a.OTHER


def _known_values(labels: Sequence[KnownLabels]) -> dict[str, frozenset[str]]:
    return {name: frozenset().union(*(p.values.get(name, ()) for p in labels)) for name in a.CAPPED_LABELS}


def label_caps(limit: int, labels: Sequence[KnownLabels] = ()) -> dict[str, LabelCap]:
    """One `LabelCap` per server-valued label (`attributes.CAPPED_LABELS`), admitting the values the protocols in
    `labels` define and `limit` others."""
    known = _known_values(labels)
    return {name: LabelCap(limit, known[name]) for name in sorted(a.CAPPED_LABELS)}


class _Family:
    """One metric family: label order, capped label positions, its children and its series budget."""

    __slots__ = (
        "bounds",
        "budget",
        "caps",
        "children",
        "enums",
        "fan_out",
        "fanned",
        "metric",
        "name",
        "names",
        "protocol",
        "resolved",
        "used",
        "weight",
    )

    def __init__(
        self,
        name: str,
        metric: Any,
        names: tuple[str, ...],
        caps: tuple[tuple[int, LabelCap], ...],
        bounds: tuple[float, ...] | None,
        *,
        budget: int,
        known: Mapping[str, frozenset[str]],
    ) -> None:
        self.name = name
        self.metric = metric
        self.bounds = bounds  # a histogram's upper bounds, +Inf last; None for a counter
        self.names = names
        self.caps = caps
        self.budget = budget
        # Series per label set as exposed: _total and _created; or each bucket, _sum, _count and _created.
        self.weight = 2 if bounds is None else len(bounds) + 3
        self.used = 0
        self.enums = tuple((i, known[n]) for i, n in enumerate(names) if n in a.ENUM_LABELS)
        self.children: dict[tuple[str, ...], Any] = {}
        # Raw label values the bounds left alone -> child. Admitted values stay admitted, so the entry stays right;
        # tuples with a rewritten value are not kept (they are unbounded) and take the slow path every time.
        self.resolved: dict[tuple[str, ...], Any] = {}
        self.protocol = names.index(a.LABEL_PROTOCOL) if a.LABEL_PROTOCOL in names else None
        # Protocol -> (position, known values) of the labels filled in for it (`KnownLabels.fan_out`).
        self.fan_out: dict[str, list[tuple[int, tuple[str, ...]]]] = {}
        self.fanned: set[tuple[str, ...]] = set()

    def child(self, values: tuple[str, ...]) -> Any:
        """The child for `values`, created (with its known siblings) regardless of the budget: start-up only."""
        found = self.children.get(values)
        if found is not None:
            return found
        missing = self._missing_known(values)
        if missing is not None:
            self._fanned(values, missing)
        found = self.children.get(values)
        return found if found is not None else self._make(values)

    def admit(self, values: tuple[str, ...]) -> Any | None:
        """The child for capped `values`, created if the budget has room; None when it has not."""
        found = self.children.get(values)
        if found is not None:
            return found
        known = all(values[pos] in allowed for pos, allowed in self.enums)
        room = (self.budget if known else self.budget // 2) - self.used
        if room < self.weight:
            return None
        missing = self._missing_known(values)
        # Known siblings (failure series at 0) only when they all fit: the observed series comes first.
        if missing is not None and self.weight * len({*missing, values}) <= room:
            self._fanned(values, missing)
        found = self.children.get(values)
        return found if found is not None else self._make(values)

    def overflow(self, values: tuple[str, ...]) -> Any:
        """The overflow series for `values`: every capped label `_other`; created past the budget if need be."""
        folded = list(values)
        for pos, _ in self.caps:
            folded[pos] = a.OTHER
        key = tuple(folded)
        found = self.children.get(key)
        return found if found is not None else self._make(key)

    def _make(self, values: tuple[str, ...]) -> Any:
        made = self.metric.labels(*values) if self.names else self.metric
        self.children[values] = made
        self.used += self.weight
        return made

    def _missing_known(self, values: tuple[str, ...]) -> list[tuple[str, ...]] | None:
        """Known-value siblings of `values` (itself among them if known) not yet created, in exposition order;
        None when there are none to fill in."""
        fan_out = self._fan_out(values)
        if not fan_out:
            return None
        positions = {pos for pos, _ in fan_out}
        if tuple(v for i, v in enumerate(values) if i not in positions) in self.fanned:
            return None
        missing = []
        for combo in itertools.product(*(known for _, known in fan_out)):
            filled = list(values)
            for (pos, _), value in zip(fan_out, combo, strict=True):
                filled[pos] = value
            key = tuple(filled)
            if key not in self.children:
                missing.append(key)
        return missing

    def _fan_out(self, values: tuple[str, ...]) -> list[tuple[int, tuple[str, ...]]]:
        return self.fan_out.get(values[self.protocol], []) if self.protocol is not None else []

    def _fanned(self, values: tuple[str, ...], missing: list[tuple[str, ...]]) -> None:
        positions = {pos for pos, _ in self._fan_out(values)}
        self.fanned.add(tuple(v for i, v in enumerate(values) if i not in positions))
        for key in missing:
            self._make(key)


class PrometheusMetrics:
    """`MetricSink` writing mapping observations into Counters and Histograms on `registry`.

    Never touches the global registry. `record` does not raise: an observation that cannot be recorded (unknown
    metric, missing label, negative counter value) is skipped and logged once per metric name. `label_cap` bounds
    each server-valued label's unknown values, `max_series` each family's series (see the module docstring).
    `labels` describe the protocols whose known values pass the caps and whose known series are created at
    start-up; observations of any protocol are recorded.
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        label_cap: int = DEFAULT_LABEL_CAP,
        max_series: int = DEFAULT_MAX_SERIES,
        overflow: Drops | None = None,
        labels: Sequence[KnownLabels] = (),
    ) -> None:
        if label_cap < 1:
            raise ValueError("label_cap must be >= 1")
        if max_series < 1:
            raise ValueError("max_series must be >= 1")
        self._overflow = overflow
        self._overflows = 0
        known = _known_values(labels)
        caps = label_caps(label_cap, labels)
        self._families: dict[str, _Family] = {}
        for definition in md.DOMAIN_METRICS:
            metric: Any
            metric_name, names = definition.name, definition.labels
            bounds: tuple[float, ...] | None = None
            if definition.kind == "histogram":
                bounds = (*_BUCKETS[metric_name], math.inf)
                metric = Histogram(
                    definition.family, definition.help, names, registry=registry, buckets=_BUCKETS[metric_name]
                )
            else:
                metric = Counter(definition.family, definition.help, names, registry=registry)
            capped = tuple((i, caps[n]) for i, n in enumerate(names) if n in caps)
            family = _Family(metric_name, metric, names, capped, bounds, budget=max_series, known=known)
            family.fan_out = {
                p.protocol: [(names.index(label), values) for label, values in p.fan_out[metric_name].items()]
                for p in labels
                if metric_name in p.fan_out
            }
            self._families[metric_name] = family
        self._warned: set[str] = set()
        for protocol in labels:
            for metric_name, series in protocol.series:
                family = self._families[metric_name]
                family.child(tuple(series[n] for n in family.names))

    @property
    def overflows(self) -> int:
        """Observations whose labels were rewritten to `_other` (by a label cap or a series budget) so far."""
        return self._overflows

    def series(self, metric: str) -> int:
        """Series `metric` exposes now, counted as the budget counts them."""
        return self._families[metric].used

    def _report_overflow(self) -> None:
        self._overflows += 1
        if self._overflow is not None:
            self._overflow.dropped(OVERFLOW_REASON)

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
        """The child for raw label values; every rewrite (label cap or budget fold) is reported, every time."""
        child = family.resolved.get(raw)
        if child is not None:
            return child
        values = raw
        if family.caps:
            out = list(raw)
            for pos, cap in family.caps:
                out[pos] = cap(out[pos])
            values = tuple(out)
        child = family.admit(values)
        if child is None:
            child = family.overflow(values)
        elif values == raw:
            family.resolved[raw] = child
            return child
        self._report_overflow()
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
