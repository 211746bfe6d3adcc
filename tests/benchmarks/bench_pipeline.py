"""Pipeline cost: steps per second through stepscope's real Pipeline (mapping, OTLP sink, acks, Prometheus) on one
core, as a ratio to the bare minimum with the same libraries (one SDK span with the same attributes, the same OTLP
protobuf encoder, the same counter and histogram increments). Target: ratio >= 0.8.

Both sides run in this process pinned to one core; the exporter encodes each batch with the OTLP protobuf encoder
and drops the bytes (no network). Rounds alternate bare/ours and the median ratio is reported.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from collections.abc import Sequence

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.metrics import NoOpMeterProvider
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import ALWAYS_ON
from prometheus_client import CollectorRegistry, Counter, Histogram

from stepscope.export.otlp import OtlpSpanSink
from stepscope.export.prometheus import PrometheusMetrics
from stepscope.mapping.attributes import MappingOptions
from stepscope.models import Run, RunRef, RunStep, Usage
from stepscope.pipeline import Pipeline
from stepscope.types import StepBatch

N = 20_000
BATCH = 50


class EncodingExporter(SpanExporter):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        encode_spans(spans).SerializeToString()
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        return None


class _Health:
    def dropped(self, reason: str, n: int = 1) -> None:
        return None

    def observe_export_lag(self, seconds: float) -> None:
        return None


class _Acks:
    def __init__(self) -> None:
        self.steps = 0

    def steps_acknowledged(self, ref: RunRef, step_ids: list[str], ok: bool) -> None:
        self.steps += len(step_ids)

    def run_acknowledged(self, ref: RunRef, ok: bool) -> None:
        return None


RUN = Run(id="run_1", thread_id="thread_1", assistant_id="asst_1", status="in_progress", created_at=100,
          model="gpt-4o", started_at=101)  # fmt: skip
STEPS = [
    RunStep(id=f"step_{i:06d}", run_id="run_1", thread_id="thread_1", assistant_id="asst_1", type="message_creation",
            status="completed", created_at=103, completed_at=105, usage=Usage(20, 3, 23), message_id="msg_1")
    for i in range(N)
]  # fmt: skip


async def ours() -> float:
    """Seconds for N steps through `Pipeline.emit` until every step is acknowledged and counted."""
    sink_box: list[Pipeline] = []
    sink = OtlpSpanSink(
        EncodingExporter(),
        on_ack=lambda keys, ok: sink_box[0].on_ack(keys, ok),  # noqa: PLW0108 - built next
        max_queue_size=N * 2,
        max_export_batch_size=512,
        schedule_delay_ms=50,
    )
    metrics = PrometheusMetrics(CollectorRegistry())
    pipeline = Pipeline(sink, metrics, _Health(), options=MappingOptions())
    sink_box.append(pipeline)
    acks = _Acks()
    pipeline.bind(acks, asyncio.get_running_loop())
    start = time.perf_counter()
    for i in range(0, N, BATCH):
        pipeline.emit(StepBatch(run=RUN, steps=tuple(STEPS[i : i + BATCH])), None)
        await asyncio.sleep(0)
    while acks.steps < N:  # noqa: ASYNC110 - acks arrive via call_soon_threadsafe; polling costs both sides alike
        await asyncio.sleep(0.001)
    took = time.perf_counter() - start
    sink.shutdown()
    return took


def bare() -> float:
    """Seconds for N spans with the same attributes, encoded the same way, plus the same metric increments."""
    reg = CollectorRegistry()
    steps = Counter("s", "s", ["step_type", "status", "model", "assistant_id"], registry=reg)
    tokens = Counter("t", "t", ["token_type", "step_type", "model", "assistant_id"], registry=reg)
    duration = Histogram("d", "d", ["step_type", "status"], registry=reg)
    provider = TracerProvider(sampler=ALWAYS_ON, shutdown_on_exit=False, meter_provider=NoOpMeterProvider())
    processor = BatchSpanProcessor(EncodingExporter(), max_queue_size=N * 2, schedule_delay_millis=50,
                                   max_export_batch_size=512, meter_provider=NoOpMeterProvider())  # fmt: skip
    provider.add_span_processor(processor)
    tracer = provider.get_tracer("bare")
    start = time.perf_counter()
    for st in STEPS:
        attrs: dict[str, str | int] = {}
        attrs |= {"openai.run_step.id": st.id, "openai.run_step.type": st.type, "openai.run_step.status": st.status,
                 "openai.run.id": st.run_id, "gen_ai.conversation.id": st.thread_id,
                 "gen_ai.agent.id": st.assistant_id, "gen_ai.request.model": "gpt-4o",
                 "gen_ai.usage.input_tokens": 20, "gen_ai.usage.output_tokens": 3,
                 "openai.message.id": "msg_1"}  # fmt: skip
        span = tracer.start_span("run_step message_creation", attributes=attrs, start_time=103_000_000_000)
        span.end(105_000_000_000)
        steps.labels("message_creation", "completed", "gpt-4o", "asst_1").inc()
        tokens.labels("input", "message_creation", "gpt-4o", "asst_1").inc(20)
        tokens.labels("output", "message_creation", "gpt-4o", "asst_1").inc(3)
        duration.labels("message_creation", "completed").observe(2.0)
    provider.force_flush(60_000)
    took = time.perf_counter() - start
    provider.shutdown()
    return took


def main(rounds: int = 3) -> list[tuple[str, str, str, str]]:
    """Rows (figure, value, target, verdict)."""
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {0})
    ratios, ours_rates, bare_rates = [], [], []
    for _ in range(rounds):
        b = bare()
        o = asyncio.run(ours())
        ratios.append(b / o)
        ours_rates.append(N / o)
        bare_rates.append(N / b)
    ratio = statistics.median(ratios)
    return [
        ("pipeline steps/s, one core (stepscope)", f"{statistics.median(ours_rates):,.0f}", "", ""),
        ("bare minimum steps/s, one core", f"{statistics.median(bare_rates):,.0f}", "", ""),
        ("pipeline ratio to bare (median of rounds)", f"{ratio:.2f} ({', '.join(f'{r:.2f}' for r in ratios)})",
         ">= 0.80", "met" if ratio >= 0.8 else "MISSED"),
    ]  # fmt: skip


if __name__ == "__main__":
    for row in main():
        print(" | ".join(row))
