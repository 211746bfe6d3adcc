"""The data that flows between stages, and the tiny interfaces each stage implements.

source (`StepSource`) -> poller -> pipeline: mapping (`SpanSpec`, `Observation`), one store commit of progress and
encoded spans, then `MetricSink` -> export (the span backlog's delivery worker). Each stage declares the small
protocol it needs of its neighbours beside itself; only `app.py` knows the concrete classes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from stepscope.errors import InvalidObject
from stepscope.models import Assistant, Run, RunRef, RunStep

AttrValue = str | bool | int | float
"""An OpenTelemetry attribute value as stepscope uses them (no arrays)."""


@dataclass(frozen=True, slots=True)
class SpanEvent:
    name: str
    time_ns: int
    attributes: Mapping[str, AttrValue] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class SpanSpec:
    """Everything needed to emit one span, computed by pure mapping code.

    `key` names what the span stands for (`run:<run_id>`, `step:<step_id>`, `call:<step_id>:<call_id>`), for logs
    and for the delivery worker's lag measurement. Ids are deterministic: the same run,
    step or tool call always yields the same `trace_id` and `span_id`. `parent_span_id` is None only for a run span
    that starts its own trace; `parent_remote` is True when the parent came from a run's `traceparent`.
    `error_type` set means status ERROR with that `error.type`.
    """

    key: str
    name: str
    kind: str  # "client" or "internal"
    trace_id: int
    span_id: int
    parent_span_id: int | None
    start_ns: int
    end_ns: int
    attributes: Mapping[str, AttrValue]
    error_type: str | None = None
    parent_remote: bool = False
    trace_flags: int = 1
    events: tuple[SpanEvent, ...] = ()


@dataclass(frozen=True, slots=True)
class Observation:
    """One metric event: `value` added to a counter or observed by a histogram named `metric`.

    `labels` are from small fixed sets (never ids); `trace_id`/`span_id` become the exemplar.
    """

    metric: str
    labels: Mapping[str, str]
    value: float
    trace_id: int | None = None
    span_id: int | None = None


class StepSource(Protocol):
    """The Assistants API as the poller sees it. Raises only `SourceError` subclasses.

    List methods page lazily (the caller may stop early) and skip objects that fail to parse, reporting each to
    the source's invalid-object callback.
    """

    def list_runs(self, thread_id: str, *, limit: int = 20) -> AsyncIterator[Run]:
        """Runs of a thread, newest first."""
        ...

    async def get_run(self, ref: RunRef) -> Run: ...

    def list_steps(self, ref: RunRef, *, after: str | None = None, limit: int = 100) -> AsyncIterator[RunStep]:
        """Steps of a run in ascending creation order, starting after step id `after`."""
        ...

    async def get_step(self, ref: RunRef, step_id: str) -> RunStep: ...

    async def get_assistant(self, assistant_id: str) -> Assistant: ...


class MetricSink(Protocol):
    """Records observations into metrics. Must not block or raise."""

    def record(self, observations: Sequence[Observation]) -> None: ...


class RequestObserver(Protocol):
    """Self-metrics hooks of the API client. Must not block or raise."""

    def observe_request(self, endpoint: str, code: str, seconds: float) -> None:
        """`code` is the HTTP status as a string, or `error` when no response came back."""
        ...

    def observe_invalid(self, error: InvalidObject) -> None: ...


class Clock(Protocol):
    """Wall-clock time (Unix seconds) and a monotonic clock, injectable for tests."""

    def time(self) -> float: ...

    def monotonic(self) -> float: ...
