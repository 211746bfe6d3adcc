"""The pipeline stage between poller and exporters: map, commit, then count and hand spans to delivery.

For every batch of newly terminal steps (and every finished run) the pipeline computes span specs and metric
observations, then writes in ONE store transaction the run's new checkpoint and the encoded spans (the durable
span backlog). Only after that commit are the observations recorded and the delivery worker told, so:

- metrics never wait for the trace backend: a step is counted the moment it is committed, with traces off, the
  collector down, refusing or hanging;
- nothing is counted twice: a committed step is never read again, across restarts and `kill -9` alike;
- nothing is lost: a step whose commit fails (the store cannot be written) is neither counted nor exported, and the
  poller reads it again later; its spans, once committed, wait in the backlog until the backend takes them.

Errors are caught here, at the stage boundary, logged once per episode and counted.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Protocol

from stepscope import spancodec
from stepscope.errors import StoreError
from stepscope.mapping.attributes import MappingOptions
from stepscope.mapping.metrics import run_observations, step_observations
from stepscope.mapping.spans import run_span, step_spans
from stepscope.models import Run, RunRef, RunStep
from stepscope.types import MetricSink, Observation, SpanSpec

log = logging.getLogger("stepscope.pipeline")


class Checkpoints(Protocol):
    """The store's side of a commit: progress and spans in one transaction. Raises `StoreError`."""

    def commit_steps(
        self, ref: RunRef, step_ids: Sequence[str], cursor: str | None, now: float, spans: Sequence[bytes] = ()
    ) -> None: ...

    def finish_run(self, ref: RunRef, now: float, spans: Sequence[bytes] = ()) -> None: ...


class PipelineHealth(Protocol):
    def dropped(self, reason: str, n: int = 1) -> None: ...


CommitListener = Callable[[Run, RunStep | None], None]
"""Told of every committed step (`RunStep`) and finished run (None); must be cheap and must not raise."""


class Pipeline:
    """Maps and commits batches. Call from the event loop.

    `on_spans(n)` is told after each commit that put `n` spans into the backlog (the delivery worker's `notify`);
    `traces=False` keeps spans out of the backlog altogether (`OTEL_TRACES_EXPORTER=none`).
    """

    def __init__(
        self,
        store: Checkpoints,
        metrics: MetricSink,
        health: PipelineHealth,
        *,
        options: MappingOptions,
        on_spans: Callable[[int], None] = lambda n: None,
        traces: bool = True,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._metrics = metrics
        self._health = health
        self._options = options
        self._on_spans = on_spans
        self._traces = traces
        self._wall = wall
        self._listeners: list[CommitListener] = []
        self._store_failing = False

    def add_listener(self, listener: CommitListener) -> None:
        self._listeners.append(listener)

    def commit_steps(self, run: Run, steps: Sequence[RunStep], cursor: str | None) -> bool:
        """Commit newly terminal `steps` of `run` and the run's new `cursor`; True when it is durable.

        A step that cannot be mapped is committed without spans or observations (dropped as `mapping_error`), so
        one bad record never blocks its run. False means nothing was committed or counted: read them again later.
        """
        specs: list[SpanSpec] = []
        observations: list[Observation] = []
        committed: list[RunStep] = []
        for step in steps:
            try:
                step_specs = step_spans(run, step, options=self._options)
                call_ids = [spec.span_id for spec in step_specs[1:]] if len(step_specs) > 1 else None
                step_obs = step_observations(run, step, span_id=step_specs[0].span_id, call_span_ids=call_ids)
                encoded_ok = True
            except Exception:
                log.exception("cannot map step %s of run %s; committing it without telemetry", step.id, run.id)
                self._health.dropped("mapping_error")
                encoded_ok = False
            if encoded_ok:
                specs.extend(step_specs)
                observations.extend(step_obs)
                committed.append(step)
        spans = self._encode(specs)
        try:
            self._store.commit_steps(run.ref, [s.id for s in steps], cursor, self._wall(), spans)
        except StoreError as exc:
            self._store_failed(exc, len(steps))
            return False
        self._committed(run, committed, observations, len(spans))
        return True

    def finish_run(self, run: Run, assistant_name: str | None) -> bool:
        """Commit a terminal run whose steps are all committed: its run span and run observations."""
        specs: list[SpanSpec] = []
        observations: list[Observation] = []
        try:
            spec = run_span(run, assistant_name=assistant_name, options=self._options)
            specs, observations = [spec], run_observations(run, span_id=spec.span_id)
        except Exception:
            log.exception("cannot map run %s; finishing it without its run span", run.id)
            self._health.dropped("mapping_error")
        spans = self._encode(specs)
        try:
            self._store.finish_run(run.ref, self._wall(), spans)
        except StoreError as exc:
            self._store_failed(exc, 1)
            return False
        self._committed(run, None, observations, len(spans))
        return True

    def _encode(self, specs: list[SpanSpec]) -> list[bytes]:
        if not self._traces:
            return []
        encoded: list[bytes] = []
        for spec in specs:
            try:
                encoded.append(spancodec.encode(spec))
            except ValueError:
                log.warning("span %s carries a value that cannot be stored; dropping the span", spec.key)
                self._health.dropped("span_unencodable")
        return encoded

    def _committed(
        self, run: Run, steps: list[RunStep] | None, observations: list[Observation], n_spans: int
    ) -> None:
        if self._store_failing:
            self._store_failing = False
            log.info("checkpoint store writable again")
        if observations:
            # One call per commit: the sink merges increments of the same series.
            self._metrics.record(observations)
        if n_spans:
            self._on_spans(n_spans)
        for listener in self._listeners:
            if steps is None:
                listener(run, None)
            else:
                for step in steps:
                    listener(run, step)

    def _store_failed(self, exc: StoreError, n: int) -> None:
        self._health.dropped("store_error", n)
        if not self._store_failing:
            self._store_failing = True
            log.error("%s; progress is not saved and steps are read again later (check the disk and the "
                      "permissions of STEPSCOPE_STATE)", exc)  # fmt: skip
