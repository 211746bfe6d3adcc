"""The pipeline with the real OTLP sink: one step's spans are exported as a unit, commits follow acknowledgements."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from prometheus_client import CollectorRegistry

from stepscope.export.otlp import OtlpSpanSink
from stepscope.export.prometheus import PrometheusMetrics
from stepscope.mapping.attributes import MappingOptions
from stepscope.models import Run, RunRef, RunStep, ToolCall, Usage
from stepscope.pipeline import Pipeline
from stepscope.testing import eventually
from stepscope.types import StepBatch

pytestmark = pytest.mark.anyio

RUN = Run(id="run_1", thread_id="thread_1", assistant_id="asst_1", status="in_progress", created_at=100, model="m")
MESSAGE = RunStep(
    id="step_a", run_id="run_1", thread_id="thread_1", assistant_id="asst_1", type="message_creation",
    status="completed", created_at=101, completed_at=102, usage=Usage(5, 1, 6), message_id="msg_1",
)  # fmt: skip
TOOLS = RunStep(
    id="step_b", run_id="run_1", thread_id="thread_1", assistant_id="asst_1", type="tool_calls",
    status="completed", created_at=102, completed_at=104, usage=Usage(7, 2, 9),
    tool_calls=(ToolCall("call_1", "function", name="f"), ToolCall("call_2", "function", name="g")),
)  # fmt: skip


class GatedExporter(SpanExporter):
    """Records every exported span; holds exports while `gate` is clear."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.spans: list[ReadableSpan] = []

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.gate.wait(5.0)
        self.spans.extend(spans)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        self.gate.set()


class Receiver:
    def __init__(self) -> None:
        self.steps: list[tuple[str, bool]] = []

    def steps_acknowledged(self, ref: RunRef, step_ids: list[str], ok: bool) -> None:
        self.steps += [(step_id, ok) for step_id in step_ids]

    def run_acknowledged(self, ref: RunRef, ok: bool) -> None:
        return None


class Health:
    def __init__(self) -> None:
        self.drops: list[tuple[str, int]] = []

    def dropped(self, reason: str, n: int = 1) -> None:
        self.drops.append((reason, n))

    def observe_export_lag(self, seconds: float) -> None:
        return None


async def test_full_queue_refuses_a_step_whole_so_a_retry_exports_each_span_once() -> None:
    """A tool step that does not fit the span queue is refused whole; its retry exports every span exactly once."""
    exporter, receiver, health, registry = GatedExporter(), Receiver(), Health(), CollectorRegistry()
    box: list[Pipeline] = []
    sink = OtlpSpanSink(
        exporter,
        on_ack=lambda keys, ok: box[0].on_ack(keys, ok),  # noqa: PLW0108 - built next
        max_queue_size=3,
        schedule_delay_ms=5,
        on_drop=health.dropped,
    )
    pipeline = Pipeline(sink, PrometheusMetrics(registry), health, options=MappingOptions())
    box.append(pipeline)
    pipeline.bind(receiver, asyncio.get_running_loop())
    # One span of step_a is in flight; step_b's three spans (step + two calls) would make four: refused, not split.
    pipeline.emit(StepBatch(run=RUN, steps=(MESSAGE, TOOLS)), None)
    await eventually(lambda: ("step_b", False) in receiver.steps, what="step_b refused")
    assert health.drops == [("span_queue_full", 3)]
    exporter.gate.set()
    await eventually(lambda: ("step_a", True) in receiver.steps, what="step_a committed")
    pipeline.emit(StepBatch(run=RUN, steps=(TOOLS,)), None)  # the poller's retry of the uncommitted step
    await eventually(lambda: ("step_b", True) in receiver.steps, what="step_b committed")
    sink.shutdown()
    span_ids = [s.context.span_id for s in exporter.spans if s.context is not None]
    assert len(span_ids) == 4
    assert len(set(span_ids)) == 4, "a span was exported twice"
    assert receiver.steps == [("step_b", False), ("step_a", True), ("step_b", True)]
    steps = registry.get_sample_value(
        "stepscope_run_steps_total",
        {"step_type": "tool_calls", "status": "completed", "model": "m", "assistant_id": "asst_1"},
    )
    assert steps == 1
    assert pipeline.pending_spans == 0
