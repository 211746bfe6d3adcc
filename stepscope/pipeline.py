"""The pipeline stage between poller and exporters: map each batch, export spans, commit on acknowledgement.

For every step (and every finished run) the pipeline computes span specs and metric observations, hands the
spans to the span sink and remembers the observations. Only when the sink acknowledges *all* spans of a step are
its observations recorded and the step reported committed to the poller (which writes the checkpoint). A refused
export leaves the step uncommitted, so the next poll emits it again with the same ids: nothing is lost and nothing
is counted twice. Errors are caught here, at the stage boundary, logged and counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from stepscope.mapping.attributes import MappingOptions
from stepscope.mapping.metrics import run_observations, step_observations
from stepscope.mapping.spans import run_span, step_spans
from stepscope.models import Run, RunRef, RunStep
from stepscope.types import MetricSink, Observation, SpanSink, SpanSpec, StepBatch

log = logging.getLogger("stepscope.pipeline")


class AckReceiver(Protocol):
    """The poller's side of acknowledgements."""

    def steps_acknowledged(self, ref: RunRef, step_ids: list[str], ok: bool) -> None: ...

    def run_acknowledged(self, ref: RunRef, ok: bool) -> None: ...


class PipelineHealth(Protocol):
    def dropped(self, reason: str, n: int = 1) -> None: ...

    def observe_export_lag(self, seconds: float) -> None: ...


CommitListener = Callable[[Run, RunStep | None], None]
"""Told of every committed step (`RunStep`) and finished run (None); must be cheap and must not raise."""


@dataclass(slots=True)
class _Pending:
    run: Run
    step: RunStep | None  # None for the run span
    observations: list[Observation]
    remaining: int = 0  # distinct keys still mapped to this entry in `Pipeline._pending`
    failed: bool = False


class Pipeline:
    """Maps batches and routes exporter acknowledgements. Not thread-safe except `on_ack`."""

    def __init__(
        self,
        spans: SpanSink,
        metrics: MetricSink,
        health: PipelineHealth,
        *,
        options: MappingOptions,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._spans = spans
        self._metrics = metrics
        self._health = health
        self._options = options
        self._wall = wall
        self._receiver: AckReceiver | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: dict[str, _Pending] = {}
        self._listeners: list[CommitListener] = []
        self.exporter_state = "unknown"

    def bind(self, receiver: AckReceiver, loop: asyncio.AbstractEventLoop) -> None:
        """Connect the poller and the loop that acknowledgements are delivered on."""
        self._receiver = receiver
        self._loop = loop

    def add_listener(self, listener: CommitListener) -> None:
        self._listeners.append(listener)

    @property
    def pending_spans(self) -> int:
        return len(self._pending)

    # --- intake (event loop) ----------------------------------------------------------------------------------

    def emit(self, batch: StepBatch, assistant_name: str | None) -> None:
        """Map and export one batch. Never raises: a step that cannot be mapped is dropped and counted.

        Each step's spans (its step span and tool-call spans) go to the sink as one `export` call, which the sink
        takes or refuses whole; the run span is a unit of its own.
        """
        run = batch.run
        options = self._options
        export = self._spans.export
        for step in batch.steps:
            try:
                step_specs = step_spans(run, step, options=options)
                call_ids = [spec.span_id for spec in step_specs[1:]] if len(step_specs) > 1 else None
                observations = step_observations(run, step, span_id=step_specs[0].span_id, call_span_ids=call_ids)
            except Exception:
                log.exception("cannot map step %s of run %s; dropping it", step.id, run.id)
                self._health.dropped("mapping_error")
                self._acknowledge_now(run.ref, step, ok=True)
                continue
            self._register(_Pending(run, step, observations), step_specs)
            export(step_specs)
        if batch.run_finished:
            try:
                spec = run_span(run, assistant_name=assistant_name, options=options)
                observations = run_observations(run, span_id=spec.span_id)
            except Exception:
                log.exception("cannot map run %s; dropping its run span", run.id)
                self._health.dropped("mapping_error")
                self._acknowledge_now(run.ref, None, ok=True)
            else:
                self._register(_Pending(run, None, observations), [spec])
                export([spec])

    def _register(self, pending: _Pending, specs: Sequence[SpanSpec]) -> None:
        # Registered before export: the sink may acknowledge synchronously (refusal, traces off).
        # A count, not a set of keys: `_pending` maps each key to one entry, so popping a key there decrements
        # exactly one count; a key repeated within one step (bad data) is counted once.
        pending_by_key = self._pending
        for spec in specs:
            if pending_by_key.get(spec.key) is not pending:
                pending.remaining += 1
                pending_by_key[spec.key] = pending

    def _acknowledge_now(self, ref: RunRef, step: RunStep | None, *, ok: bool) -> None:
        if self._receiver is None:
            return
        if step is None:
            self._receiver.run_acknowledged(ref, ok)
        else:
            self._receiver.steps_acknowledged(ref, [step.id], ok)

    # --- acknowledgements ---------------------------------------------------------------------------------------

    def on_ack(self, keys: Sequence[str], ok: bool) -> None:
        """The sink's `AckCallback`: safe from any thread; the work happens on the event loop."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        # If the loop closed during shutdown the store still has these steps pending, so they replay on restart.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(self._acked, list(keys), ok)

    def _acked(self, keys: list[str], ok: bool) -> None:
        done: list[_Pending] = []
        pending_by_key = self._pending
        for key in keys:
            pending = pending_by_key.pop(key, None)
            if pending is None:
                continue
            pending.remaining -= 1
            if not ok:
                pending.failed = True
            if not pending.remaining:
                done.append(pending)
        self._set_exporter_state("ok" if ok else "failing")
        if not done:
            return
        committed = [pending for pending in done if not pending.failed]
        if committed:
            # One call for the whole acknowledgement: the sink can merge increments of the same series.
            self._metrics.record([obs for pending in committed for obs in pending.observations])
            listeners = self._listeners
            if listeners:
                for pending in committed:
                    for listener in listeners:
                        listener(pending.run, pending.step)
        receiver = self._receiver
        steps_by_run: dict[tuple[RunRef, bool], list[str]] = defaultdict(list)
        now = self._wall()
        observe_lag = self._health.observe_export_lag
        last_run: Run | None = None
        ref = RunRef("", "")
        for pending in done:
            ok_step = not pending.failed
            if pending.run is not last_run:  # an acknowledgement mostly holds steps of few runs, in order
                last_run = pending.run
                ref = last_run.ref
            step = pending.step
            if step is None:
                if receiver is not None:
                    receiver.run_acknowledged(ref, ok_step)
                continue
            if ok_step:
                ended = step.ended_at
                if ended is not None:
                    observe_lag(max(0.0, now - ended))
            steps_by_run[(ref, ok_step)].append(step.id)
        if receiver is not None:
            for (ref, ok_step), step_ids in steps_by_run.items():
                receiver.steps_acknowledged(ref, step_ids, ok_step)

    def _set_exporter_state(self, state: str) -> None:
        if state != self.exporter_state:
            if state == "failing":
                log.warning("span export failing: steps stay pending and are exported again")
            elif self.exporter_state == "failing":
                log.info("span export recovered")
            self.exporter_state = state
