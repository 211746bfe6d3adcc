"""The pipeline stage between readers and exporters: map, commit, then count and hand spans to delivery.

For every `Commit` a protocol's reader hands it (newly terminal records of one unit, and the unit itself when it
is done) the pipeline maps each record with the protocol's `Mapper`, then writes in ONE store transaction the
unit's new checkpoint and the encoded spans (the durable span backlog). Only after that commit are the
observations recorded and the delivery worker told, so:

- metrics never wait for the trace backend: a record is counted the moment it is committed, with traces off, the
  collector down, refusing or hanging;
- nothing is counted twice: a committed record is never committed again, across restarts and `kill -9` alike;
- nothing is lost: a commit that fails (the store cannot be written) is neither counted nor exported, and the
  reader reads the records again later; spans, once committed, wait in the backlog until the backend takes them.

A record the mapper cannot map (a bug, or data it cannot describe) is committed without telemetry and counted as
`mapping_error`, so one bad record never blocks its unit. Errors are caught here, at the stage boundary, logged
once per episode and counted.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Generic, Protocol

from stepscope.contract.vocabulary import DropReason
from stepscope.core import spancodec
from stepscope.core.records import Commit, Drops, F, Mapper, MetricSink, R, RelayedSpan, SpanSpec, Telemetry, U, UnitRef
from stepscope.errors import StoreError

log = logging.getLogger("stepscope.core.pipeline")


class Checkpoints(Protocol):
    """The store's side of a commit: progress and spans in one transaction, off the event loop (`AsyncStore`).
    Raises `StoreError`."""

    async def commit_steps(
        self, ref: UnitRef, step_ids: Sequence[str], cursor: str | None, now: float, spans: Sequence[bytes] = ()
    ) -> None: ...

    async def finish_run(self, ref: UnitRef, now: float, spans: Sequence[bytes] = ()) -> None: ...


@dataclass(frozen=True, slots=True)
class Committed:
    """One part of a durable commit as listeners hear it: the telemetry of one record (`finished` False), or of the
    finished unit (`finished` True), of the unit `ref`."""

    ref: UnitRef
    telemetry: Telemetry
    finished: bool


CommitListener = Callable[[Committed], None]
"""Told of every committed part, in order, on the event loop; must be cheap and must not raise."""


class Pipeline(Generic[U, R, F]):
    """Maps and commits one protocol's commits. Call from the event loop (commits of one unit one at a time).

    `on_spans(n)` is told after each commit that put `n` spans into the backlog (the delivery worker's `notify`);
    `traces=False` keeps spans out of the backlog altogether (`OTEL_TRACES_EXPORTER=none`).
    """

    def __init__(
        self,
        store: Checkpoints,
        mapper: Mapper[U, R, F],
        metrics: MetricSink,
        drops: Drops,
        *,
        on_spans: Callable[[int], None] = lambda n: None,
        traces: bool = True,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._mapper = mapper
        self._metrics = metrics
        self._drops = drops
        self._on_spans = on_spans
        self._traces = traces
        self._wall = wall
        self._listeners: list[CommitListener] = []

    def add_listener(self, listener: CommitListener) -> None:
        self._listeners.append(listener)

    async def commit(self, commit: Commit[U, R, F]) -> bool:
        """Map and durably commit `commit`; True when it is durable and counted, False when nothing was. The
        store's transaction runs off the event loop; mapping and counting run on it."""
        parts: list[Telemetry] = []
        for record in commit.records:
            telemetry = self._map(commit, partial(self._mapper.record, commit.unit, record))
            if telemetry is not None:
                parts.append(telemetry)
        finish = None
        if commit.finished:
            finish = self._map(commit, partial(self._mapper.finish, commit.unit, commit.finish))
            if finish is not None:
                parts.append(finish)
        observations = [o for t in parts for o in t.observations]
        items: list[SpanSpec | RelayedSpan] = [s for t in parts for s in t.spans]
        items += [r for t in parts for r in t.relayed]
        spans = self._encode(items)
        try:
            now = self._wall()
            if commit.finished:
                await self._store.finish_run(commit.ref, now, spans)
            else:
                await self._store.commit_steps(commit.ref, commit.record_ids, commit.cursor, now, spans)
        except StoreError:  # logged once per episode by the store
            self._drops.dropped(DropReason.STORE_ERROR, max(1, len(commit.records)))
            return False
        if observations:
            self._metrics.record(observations)  # one call per commit: the sink merges increments of a series
        if spans:
            self._on_spans(len(spans))
        if self._listeners:
            heard = [Committed(commit.ref, part, part is finish) for part in parts]
            for listener in self._listeners:
                for committed in heard:
                    listener(committed)
        return True

    def _map(self, commit: Commit[U, R, F], map_one: Callable[[], Telemetry]) -> Telemetry | None:
        """One record's (or the finished unit's) telemetry; None, logged and counted, when the mapper fails: the
        record is then committed without telemetry, so one bad record never blocks its unit."""
        try:
            return map_one()
        except Exception:
            log.exception("cannot map part of %s; committing it without telemetry", commit.ref.unit_id)
            self._drops.dropped(DropReason.MAPPING_ERROR)
            return None

    def _encode(self, items: list[SpanSpec | RelayedSpan]) -> list[bytes]:
        if not self._traces:
            return []
        encoded: list[bytes] = []
        for item in items:
            try:
                encoded.append(spancodec.encode(item))
            except ValueError:
                log.warning("span %s carries a value that cannot be stored; dropping the span", item.key)
                self._drops.dropped(DropReason.SPAN_UNENCODABLE)
        return encoded
