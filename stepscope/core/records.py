"""The records that cross the engine's seams, and the tiny interfaces a protocol implements.

A protocol (`stepscope.protocols`) plugs in with a `UnitReader` that polls one unit of work and hands what became
terminal to the pipeline as a `Commit`, and a `Mapper` that turns the unit and its records into `Telemetry` (span
specs and metric observations). The
poller (scheduling, error handling, bounds), the pipeline (one store transaction per commit, then metrics and the
span backlog), the store and the exporters know only these types. See docs/architecture.md.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Generic, Protocol, TypeVar

from stepscope.contract.vocabulary import DropReason
from stepscope.errors import InvalidObject


@dataclass(frozen=True, slots=True)
class UnitRef:
    """The address of one unit of work: its container (a thread, a session, a conversation) and its own id.

    The poller, the store and the pipeline key everything on it; what the ids mean is the protocol's business.
    """

    container_id: str
    unit_id: str


AttrValue = str | bool | int | float
"""An OpenTelemetry attribute value as stepscope uses them (no arrays)."""
NO_ATTRIBUTES: Mapping[str, AttrValue] = MappingProxyType({})
"""No attributes, as a shared immutable default for functions that take them."""


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
    links: tuple[tuple[int, int], ...] = ()  # (trace_id, span_id) of spans this one links to


@dataclass(frozen=True, slots=True)
class Observation:
    """One metric event: `value` added to a counter or observed by a histogram named `metric`.

    `labels` are from small fixed sets (never ids); `trace_id`/`span_id` become the exemplar. `attributes` are the
    GenAI conventions' attributes of what is counted (`gen_ai.operation.name`, `gen_ai.provider.name`,
    `gen_ai.agent.name`, `gen_ai.request.model`, `error.type`, ...: never ids of units or calls), and `duration_s`
    the duration of a counted event that has one (a tool call): the OTLP sink's instruments read them, the
    Prometheus families never do.
    """

    metric: str
    labels: Mapping[str, str]
    value: float
    trace_id: int | None = None
    span_id: int | None = None
    attributes: Mapping[str, AttrValue] = field(default_factory=dict)
    duration_s: float | None = None


@dataclass(frozen=True, slots=True)
class RelayedSpan:
    """A span a server published itself (OTLP JSON), relayed unchanged: its own resource and scope, not ours.

    `key` names it for logs (`relay:<trace id>:<span id>`); `resource`, `scope` and `span` are the OTLP JSON objects
    as the server sent them.
    """

    key: str
    resource: Mapping[str, Any]
    scope: Mapping[str, Any]
    span: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Telemetry:
    """What one record (a step, a finished run) becomes: its spans, spans it relays, and its observations."""

    spans: Sequence[SpanSpec] = ()
    observations: Sequence[Observation] = ()
    relayed: Sequence[RelayedSpan] = ()


U = TypeVar("U")
R = TypeVar("R")
F = TypeVar("F")
U_contra = TypeVar("U_contra", contravariant=True)
R_contra = TypeVar("R_contra", contravariant=True)
F_contra = TypeVar("F_contra", contravariant=True)
S = TypeVar("S")


@dataclass(frozen=True)  # no slots: a slotted generic dataclass breaks typing's `Commit[...](...)` construction
class Commit(Generic[U, R, F]):
    """One durable step of progress on one unit of work, as a reader hands it to the pipeline.

    `records` became terminal since the last commit (their ids are remembered, so they are never committed again);
    `cursor` is where the next listing starts; `finish` set means the unit is done: it carries what the mapper needs
    to describe the whole unit (for a run, the assistant's name), and the unit's progress is retired. `unit` is the
    unit as last read (a run), for the mapper and for listeners.
    """

    ref: UnitRef
    unit: U
    records: Sequence[R] = ()
    record_ids: Sequence[str] = ()
    cursor: str | None = None
    finish: F | None = None
    finished: bool = False


class Mapper(Protocol[U_contra, R_contra, F_contra]):
    """A protocol's pure mapping: a record, or a finished unit, to telemetry. May raise on a bug; never does I/O."""

    def record(self, unit: U_contra, record: R_contra) -> Telemetry: ...

    def finish(self, unit: U_contra, finish: F_contra | None) -> Telemetry: ...


class Committer(Protocol[U, R, F]):
    """The pipeline as a reader sees it. True when the commit is durable; never raises."""

    async def commit(self, commit: Commit[U, R, F]) -> bool: ...


class UnitReader(Protocol[S]):
    """A protocol's way to poll one unit of work; `S` is its per-unit state.

    `poll` reads the API, commits what became terminal through its `Committer`, and returns the seconds until the
    next poll, or None when the unit is done. It raises only `SourceError`s, `InvalidObject` and `StoreError`; the
    poller decides what each means for the schedule.
    """

    def begin(self, ref: UnitRef, cursor: str | None, committed: set[str]) -> S:
        """State for a unit first seen (`cursor` None, nothing committed) or resumed from the store."""
        ...

    async def poll(self, state: S) -> float | None: ...

    def status(self, state: S) -> str:
        """The unit's last seen status (`pending` before the first read)."""
        ...

    def busy(self, state: S) -> bool:
        """Whether the unit's container (a thread) cannot start another unit while this one lives."""
        ...


class Drops(Protocol):
    """Where every stage counts what it dropped or degraded (`stepscope_dropped_total{reason}`). Must not block or
    raise."""

    def dropped(self, reason: DropReason, n: int = 1) -> None: ...


class _NoDrops:
    """A `Drops` that counts nothing, for one-shot commands without metrics (`inspect`)."""

    def dropped(self, reason: DropReason, n: int = 1) -> None:
        return None


NO_DROPS: Drops = _NoDrops()


@dataclass(frozen=True, slots=True, kw_only=True)
class KnownLabels:
    """What a protocol defines in advance about its metric labels, so the exporter can cap what a server sends and
    create the series dashboards and alerts read before the first event (rates read 0, not "no data").

    `protocol` is the `protocol` label's value. `values` maps each server-valued label the protocol enumerates
    (`step_type`, `status`, `tool_type`, `tool_name`) to the values it defines: those always pass the label caps.
    `fan_out` maps a counter to the labels whose known values are filled in at 0 when a new combination of its
    other labels appears (so failure ratios read 0). `series` are `(metric, labels)` created at start-up.
    """

    protocol: str
    values: Mapping[str, frozenset[str]] = field(default_factory=dict)
    fan_out: Mapping[str, Mapping[str, tuple[str, ...]]] = field(default_factory=dict)
    series: Sequence[tuple[str, Mapping[str, str]]] = ()


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
