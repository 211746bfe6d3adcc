"""The data that flows between stages, and the tiny interfaces each stage implements.

source (`StepSource`) -> poller (`StepBatch`) -> mapping (`SpanSpec`, `Observation`) -> export (`SpanSink`,
`MetricSink`); `CheckpointStore` remembers progress. Only `app.py` knows the concrete classes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from stepscope.errors import InvalidObject
from stepscope.models import Assistant, Run, RunRef, RunStep

AttrValue = str | bool | int | float
"""An OpenTelemetry attribute value as stepscope uses them (no arrays)."""


@dataclass(frozen=True, slots=True)
class StepBatch:
    """What one poll of one run yields: newly terminal steps, and the run as last read.

    `run_finished` is set on the final sweep of a terminal run: after this batch the run is forgotten.
    """

    run: Run
    steps: tuple[RunStep, ...] = ()
    run_finished: bool = False


@dataclass(frozen=True, slots=True)
class SpanEvent:
    name: str
    time_ns: int
    attributes: Mapping[str, AttrValue] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class SpanSpec:
    """Everything needed to emit one span, computed by pure mapping code.

    `key` names what the span stands for (`run:<run_id>`, `step:<step_id>`, `call:<step_id>:<call_id>`) so an
    exporter's acknowledgement can be traced back to the step it commits. Ids are deterministic: the same run,
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

    async def get_assistant(self, assistant_id: str) -> Assistant: ...


AckCallback = Callable[[Sequence[str], bool], None]
"""Called with the `SpanSpec.key`s of one export batch and whether the backend accepted it. May run on any
thread; implementations hand it to the event loop."""


class SpanSink(Protocol):
    """Emits spans. `export` must not block or raise; results arrive later through the `AckCallback`."""

    def export(self, specs: Sequence[SpanSpec]) -> None: ...

    def force_flush(self, timeout_s: float) -> bool: ...

    def shutdown(self) -> None: ...


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
