"""stepscope's own health metrics, apart from the domain metrics; defined in `metricdefs.SELF_METRICS`.

Events are Counters and Histograms, updated as they happen; `stepscope_tracked_runs` is read at scrape time by a
custom collector, as are the span backlog gauges. Known label sets exist from start-up so rates and alerts read 0
rather than "no data":

- `stepscope_api_requests_total{endpoint,code}`, `stepscope_api_request_duration_seconds{endpoint}`
- `stepscope_tracked_runs`, `stepscope_span_backlog`, `stepscope_span_backlog_age_seconds`,
  `stepscope_export_lag_seconds`, `stepscope_dropped_total{reason}`,
  `stepscope_invalid_objects_total{kind}`, `stepscope_span_export_failures_total`,
  `stepscope_metric_export_failures_total`, `stepscope_build_info{version}`
- `stepscope_last_successful_poll_timestamp_seconds` (0 until the first successful API request)

The two histograms are also handed, as they are observed, to a `HealthHistograms` set with `mirror_to` (the OTLP
metrics component): a histogram cannot be read back from the registry as the counters and gauges are.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from stepscope.contract import metricdefs as md
from stepscope.contract.vocabulary import DropReason
from stepscope.errors import InvalidObject

log = logging.getLogger(__name__)

DROP_REASONS = tuple(DropReason)
"""Reasons whose `stepscope_dropped_total` series exist from start-up."""
LIST_KIND = "list"
"""The `kind` of a listing that broke its bounds or could not be read, whatever the protocol."""
API_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
LAG_BUCKETS = (1.0, 2.0, 5.0, 10.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)
"""Seconds from a step's terminal timestamp to its export: poll interval plus batch delay, typically 2-20 s."""


_READ_GAUGES = {d.name: d.help for d in md.READ_GAUGES}


class _ReadGauges(Collector):
    """Gauges read from callables at scrape time; 0 until a source is set."""

    def __init__(self) -> None:
        self.sources: dict[str, Callable[[], float]] = {}

    def describe(self) -> Iterable[Metric]:
        return [GaugeMetricFamily(name, text) for name, text in _READ_GAUGES.items()]

    def collect(self) -> Iterable[Metric]:
        families = []
        for name, text in _READ_GAUGES.items():
            source = self.sources.get(name)
            try:
                value = float(source()) if source is not None else 0.0
            except Exception:
                # A scrape must never fail because of one gauge; the gauge is left out instead.
                log.exception("gauge source of %s failed", name)
                continue
            family = GaugeMetricFamily(name, text)
            family.add_metric([], value)
            families.append(family)
        return families


class HealthHistograms(Protocol):
    """Where the health histograms' observations go besides /metrics. Must not block or raise."""

    def api_request(self, endpoint: str, seconds: float) -> None: ...

    def export_lag(self, seconds: float) -> None: ...


class SelfMetrics:
    """Health metrics on `registry`; implements `RequestObserver` and the pipeline's and poller's health hooks.

    No method blocks or raises. Reasons and kinds outside the known sets are recorded as given (they come from
    code, not data, so they stay few).
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        version: str,
        endpoints: Sequence[str] = (),
        invalid_kinds: Sequence[str] = (),
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._clock = clock
        self._requests = Counter(
            md.API_REQUESTS.family, md.API_REQUESTS.help, md.API_REQUESTS.labels, registry=registry
        )
        self._request_seconds = Histogram(
            md.API_REQUEST_DURATION.family,
            md.API_REQUEST_DURATION.help,
            md.API_REQUEST_DURATION.labels,
            registry=registry,
            buckets=API_BUCKETS,
        )
        self._lag = Histogram(md.EXPORT_LAG.family, md.EXPORT_LAG.help, registry=registry, buckets=LAG_BUCKETS)
        self._dropped = Counter(md.DROPPED.family, md.DROPPED.help, md.DROPPED.labels, registry=registry)
        self._invalid = Counter(
            md.INVALID_OBJECTS.family, md.INVALID_OBJECTS.help, md.INVALID_OBJECTS.labels, registry=registry
        )
        self._export_failures = Counter(md.SPAN_EXPORT_FAILURES.family, md.SPAN_EXPORT_FAILURES.help, registry=registry)
        self._metric_export_failures = Counter(
            md.METRIC_EXPORT_FAILURES.family, md.METRIC_EXPORT_FAILURES.help, registry=registry
        )
        self._last_poll = Gauge(md.LAST_SUCCESSFUL_POLL.family, md.LAST_SUCCESSFUL_POLL.help, registry=registry)
        build = Gauge(md.BUILD_INFO.family, md.BUILD_INFO.help, md.BUILD_INFO.labels, registry=registry)
        build.labels(version).set(1)
        self._gauges = _ReadGauges()
        registry.register(self._gauges)
        self._request_children: dict[tuple[str, str], Counter] = {}
        self._mirror: HealthHistograms | None = None
        for endpoint in endpoints:
            self._request_seconds.labels(endpoint)
        for reason in DROP_REASONS:
            self._dropped.labels(reason)
        for kind in (*invalid_kinds, LIST_KIND):
            self._invalid.labels(kind)

    def observe_request(self, endpoint: str, code: str, seconds: float) -> None:
        """One HTTP attempt: `code` is the status as text, or `error` when no response came back."""
        key = (endpoint, code)
        child = self._request_children.get(key)
        if child is None:
            child = self._requests_child(key)
        child.inc()
        seconds = max(0.0, seconds)
        self._request_seconds.labels(endpoint).observe(seconds)
        if self._mirror is not None:
            self._mirror.api_request(endpoint, seconds)
        if code.startswith("2"):
            self._last_poll.set(self._clock())

    def mirror_to(self, histograms: HealthHistograms) -> None:
        """Hand every later API request duration and export lag to `histograms` too."""
        self._mirror = histograms

    def _requests_child(self, key: tuple[str, str]) -> Counter:
        child = self._requests.labels(*key)
        self._request_children[key] = child
        return child

    def observe_invalid(self, error: InvalidObject) -> None:
        """One API object skipped because it could not be parsed."""
        self._invalid.labels(error.kind).inc()

    def dropped(self, reason: DropReason, n: int = 1) -> None:
        """`n` items dropped (or degraded, for `label_cap`) for `reason`."""
        if n > 0:
            self._dropped.labels(reason).inc(n)

    def export_failed(self, n: int = 1) -> None:
        """`n` spans the trace backend refused or never received."""
        if n > 0:
            self._export_failures.inc(n)

    def metric_export_failed(self, n: int = 1) -> None:
        """`n` OTLP metric exports the metrics backend refused or never received."""
        if n > 0:
            self._metric_export_failures.inc(n)

    def observe_export_lag(self, seconds: float) -> None:
        """Seconds from a step's terminal timestamp to the delivery of its span."""
        seconds = max(0.0, seconds)
        self._lag.observe(seconds)
        if self._mirror is not None:
            self._mirror.export_lag(seconds)

    def set_tracked_runs_source(self, source: Callable[[], int]) -> None:
        """Read `stepscope_tracked_runs` from `source` at every scrape."""
        self._gauges.sources[md.TRACKED_RUNS.name] = source

    def set_backlog_sources(self, size: Callable[[], int], age: Callable[[], float]) -> None:
        """Read `stepscope_span_backlog` and `stepscope_span_backlog_age_seconds` at every scrape."""
        self._gauges.sources[md.SPAN_BACKLOG.name] = size
        self._gauges.sources[md.SPAN_BACKLOG_AGE.name] = age
