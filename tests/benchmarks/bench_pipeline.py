"""Pipeline cost: steps per second through stepscope's real Pipeline (mapping, durable commit, delivery,
Prometheus) on one core, as a ratio to the bare minimum with the same libraries. Target: ratio >= 0.8.

The workload alternates `message_creation` steps and `tool_calls` steps with one function call, so stepscope emits
1.5 spans per step (a step span, plus one `execute_tool` span under it per tool call). The bare minimum produces the
same telemetry with nothing in between: per step, the same SDK spans with the same names, kinds, parents, times and
attributes (the step span under the run's span context, the tool span under the step span), the same OTLP protobuf
encoder behind the same `BatchSpanProcessor` settings, and the same Counter/Histogram increments (same buckets)
each carrying the `{trace_id, span_id}` exemplar that stepscope attaches. What the bare side does not do is
stepscope's own work: mapping to `SpanSpec`/`Observation`, deterministic (hashed) ids, the durable commit (the
checkpoint and the encoded spans in one SQLite transaction per batch, on a file in a temporary directory), the
delivery thread's reads, decoding and deletes of the span backlog, and its self-metrics
(`stepscope_export_lag_seconds`), which the real wiring (`SelfMetrics`) pays here.

Both sides run in this process pinned to one core; the exporter encodes each batch and drops the bytes (no
network). Cost is the process's CPU time (`time.process_time`: every thread, so the processor's worker thread and
its encoding count on both sides), not wall time: on a shared machine other processes preempt the pinned core at
random, which swung wall-clock ratios between 0.5 and 1.3 from one round to the next. Rounds alternate which side
goes first; the median ratio of CPU times is reported, with the wall-clock rates alongside.

A third side measures what `OTEL_METRICS_EXPORTER=otlp` adds: the same pipeline feeding the OTLP instruments
beside Prometheus (`FanOut`) with the health histograms mirrored (`mirror_to`), as the wiring does, exported every
second by the SDK's periodic reader to an exporter that encodes each request to protobuf and drops the bytes. It
is reported as CPU microseconds added per step (no target: it is what an operator pays for the opt-in).
"""

from __future__ import annotations

import asyncio
import os
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.common.metrics_encoder import encode_metrics
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.metrics import NoOpMeterProvider
from opentelemetry.sdk.metrics.export import MetricExporter, MetricExportResult, MetricsData
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import ALWAYS_ON
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags
from prometheus_client import CollectorRegistry, Counter, Histogram

from stepscope.core.asyncstore import AsyncStore
from stepscope.core.pipeline import Pipeline
from stepscope.core.records import Commit, MetricSink
from stepscope.core.store import SqliteStore
from stepscope.export.delivery import SpanDelivery
from stepscope.export.otlp_metrics import FanOut, MetricSettings, OtlpMetrics
from stepscope.export.prometheus import STEP_DURATION_BUCKETS, PrometheusMetrics
from stepscope.export.selfmetrics import SelfMetrics
from stepscope.mapping.attributes import MappingOptions
from stepscope.protocols.assistants.mapper import AssistantsMapper
from stepscope.protocols.assistants.records import Run, RunStep, ToolCall, Usage

N = 20_000
BATCH = 50
QUEUE = N * 2  # spans: room for every step's spans on both sides, so nothing is refused


class EncodingExporter(SpanExporter):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        encode_spans(spans).SerializeToString()
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        return None


class EncodingMetricExporter(MetricExporter):
    def export(self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: object) -> MetricExportResult:
        encode_metrics(metrics_data).SerializeToString()
        return MetricExportResult.SUCCESS

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return True

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: object) -> None:
        return None


RUN = Run(id="run_1", thread_id="thread_1", assistant_id="asst_1", status="in_progress", created_at=100,
          model="gpt-4o", started_at=101)  # fmt: skip


def _step(i: int) -> RunStep:
    if i % 2:
        return RunStep(id=f"step_{i:06d}", run_id="run_1", thread_id="thread_1", assistant_id="asst_1",
                       type="tool_calls", status="completed", created_at=103, completed_at=105,
                       usage=Usage(20, 3, 23),
                       tool_calls=(ToolCall(f"call_{i:06d}", "function", name="get_weather"),))  # fmt: skip
    return RunStep(id=f"step_{i:06d}", run_id="run_1", thread_id="thread_1", assistant_id="asst_1",
                   type="message_creation", status="completed", created_at=103, completed_at=105,
                   usage=Usage(20, 3, 23), message_id="msg_1")  # fmt: skip


STEPS = [_step(i) for i in range(N)]


def ours(*, otlp_metrics: bool = False) -> tuple[float, float]:
    """(CPU, wall) seconds for N steps through `Pipeline.commit` (wiring.py's objects) until delivery exported all.

    Per batch: map, encode the spans, one SQLite transaction (checkpoint and span backlog), record the metrics;
    the delivery thread then reads the backlog, decodes, exports (encodes) and deletes what it sent. With
    `otlp_metrics`, the metrics go to the OTLP instruments too, and the timing includes their final export.
    """
    registry = CollectorRegistry()
    health = SelfMetrics(registry, version="bench")
    resource = Resource.create({"service.name": "bench"})
    with tempfile.TemporaryDirectory() as tmp:
        store = SqliteStore(str(Path(tmp) / "state.db"))
        store.open()
        delivery = SpanDelivery(store, EncodingExporter(), resource=resource, health=health, batch_size=512,
                                delay_s=0.05)  # fmt: skip
        sink: MetricSink = PrometheusMetrics(registry, overflow=health)
        otlp = None
        if otlp_metrics:
            settings = MetricSettings(exporter="otlp", interval_ms=1000.0)
            otlp = OtlpMetrics(settings, resource=resource, registry=registry, health=health,
                               exporter=EncodingMetricExporter())  # fmt: skip
            health.mirror_to(otlp)
            sink = FanOut(sink, otlp)
        pipeline: Pipeline[Run, RunStep, str] = Pipeline(
            AsyncStore(store), AssistantsMapper(MappingOptions()), sink, health, on_spans=delivery.notify
        )

        async def commit_all() -> None:
            if otlp is not None:
                await otlp.start()
            for i in range(0, N, BATCH):
                batch = STEPS[i : i + BATCH]
                ids = [s.id for s in batch]
                if not await pipeline.commit(Commit(RUN.ref, RUN, records=batch, record_ids=ids, cursor=ids[-1])):
                    raise RuntimeError("commit failed")
            if otlp is not None:
                await otlp.stop()

        delivery.begin()
        start, wall = time.process_time(), time.perf_counter()
        asyncio.run(commit_all())
        while delivery.pending or store.backlog_stats()[0]:
            time.sleep(0.001)
        took = time.process_time() - start, time.perf_counter() - wall
        delivery.shutdown(1.0)
        store.close()
    return took


def _exemplar(ctx: SpanContext) -> dict[str, str]:
    return {"trace_id": f"{ctx.trace_id:032x}", "span_id": f"{ctx.span_id:016x}"}


def bare() -> tuple[float, float]:
    """(CPU, wall) seconds for the same spans (attributes, parents), encoded alike, and the same increments."""
    reg = CollectorRegistry()
    labels4 = ["step_type", "status", "model", "assistant_id"]
    steps = Counter("s", "s", labels4, registry=reg)
    tokens = Counter("t", "t", ["token_type", "step_type", "model", "assistant_id"], registry=reg)
    duration = Histogram("d", "d", ["step_type", "status"], registry=reg, buckets=STEP_DURATION_BUCKETS)
    tools = Counter("c", "c", ["tool_type", "tool_name"], registry=reg)
    provider = TracerProvider(sampler=ALWAYS_ON, shutdown_on_exit=False, meter_provider=NoOpMeterProvider())
    processor = BatchSpanProcessor(EncodingExporter(), max_queue_size=QUEUE, schedule_delay_millis=50,
                                   max_export_batch_size=512, meter_provider=NoOpMeterProvider())  # fmt: skip
    provider.add_span_processor(processor)
    tracer = provider.get_tracer("bare")
    internal = trace.SpanKind.INTERNAL
    # The run's span is exported on its own when the run ends; steps hang under its context.
    run_ctx = trace.set_span_in_context(NonRecordingSpan(SpanContext(1, 1, False, TraceFlags(1))))
    start, wall = time.process_time(), time.perf_counter()
    for st in STEPS:
        attrs: dict[str, str | int] = {"openai.run_step.id": st.id, "openai.run_step.type": st.type,
                                       "openai.run_step.status": st.status, "openai.run.id": st.run_id,
                                       "gen_ai.conversation.id": st.thread_id, "gen_ai.agent.id": st.assistant_id,
                                       "gen_ai.request.model": "gpt-4o", "gen_ai.usage.input_tokens": 20,
                                       "gen_ai.usage.output_tokens": 3}  # fmt: skip
        if st.message_id is not None:
            attrs["openai.message.id"] = st.message_id
        span = tracer.start_span(f"run_step {st.type}", run_ctx, internal, attrs, start_time=103_000_000_000)
        span.end(105_000_000_000)
        ex = _exemplar(span.get_span_context())
        steps.labels(st.type, "completed", "gpt-4o", "asst_1").inc(1, ex)
        tokens.labels("input", st.type, "gpt-4o", "asst_1").inc(20, ex)
        tokens.labels("output", st.type, "gpt-4o", "asst_1").inc(3, ex)
        duration.labels(st.type, "completed").observe(2.0, ex)
        if st.tool_calls:
            step_ctx = trace.set_span_in_context(span)
            for call in st.tool_calls:
                tool_attrs: dict[str, str | int] = {"gen_ai.operation.name": "execute_tool",
                                                    "gen_ai.tool.name": "get_weather", "gen_ai.tool.type": "function",
                                                    "gen_ai.tool.call.id": call.id}  # fmt: skip
                tool = tracer.start_span("execute_tool get_weather", step_ctx, internal, tool_attrs,
                                         start_time=103_000_000_000)  # fmt: skip
                tool.end(105_000_000_000)
                tools.labels("function", "get_weather").inc(1, _exemplar(tool.get_span_context()))
    provider.force_flush(60_000)
    took = time.process_time() - start, time.perf_counter() - wall
    provider.shutdown()
    return took


def main(rounds: int = 5) -> list[tuple[str, str, str, str]]:
    """Rows (figure, value, target, verdict)."""
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {0})
    ratios, ours_rates, bare_rates, ours_wall, bare_wall, added_us = [], [], [], [], [], []
    for r in range(rounds):
        sides = [("bare", bare), ("ours", ours), ("otlp", lambda: ours(otlp_metrics=True))]
        if r % 2:
            sides.reverse()
        took = {name: side() for name, side in sides}
        (o, ow), (b, bw), (m, _) = took["ours"], took["bare"], took["otlp"]
        ratios.append(b / o)
        ours_rates.append(N / o)
        bare_rates.append(N / b)
        ours_wall.append(N / ow)
        bare_wall.append(N / bw)
        added_us.append((m - o) / N * 1e6)
    ratio = statistics.median(ratios)
    med = statistics.median
    return [
        ("pipeline steps per CPU second, one core (stepscope)", f"{med(ours_rates):,.0f} (wall {med(ours_wall):,.0f})",
         "", ""),
        ("bare minimum steps per CPU second, one core", f"{med(bare_rates):,.0f} (wall {med(bare_wall):,.0f})", "", ""),
        ("pipeline ratio to bare (median of rounds)", f"{ratio:.2f} ({', '.join(f'{r:.2f}' for r in ratios)})",
         ">= 0.80", "met" if ratio >= 0.8 else "MISSED"),
        ("CPU added per step by OTLP metrics (median)",
         f"{med(added_us):.0f} us ({', '.join(f'{a:.0f}' for a in added_us)})", "", ""),
    ]  # fmt: skip


if __name__ == "__main__":
    for row in main():
        print(" | ".join(row))
