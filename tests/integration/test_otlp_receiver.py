"""The span backlog delivered end to end into a real OTLP receiver, over HTTP and gRPC."""

from __future__ import annotations

import time
from collections.abc import Iterator
from types import SimpleNamespace

import pytest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace.export import SpanExporter

from stepscope.core import spancodec
from stepscope.core.records import SpanSpec, UnitRef
from stepscope.core.store import SqliteStore
from stepscope.export.delivery import SpanDelivery
from stepscope.export.otlp import TraceSettings, build_span_exporter
from stepscope.mapping.attributes import MappingOptions
from stepscope.protocols.assistants.records import LastError, Run, RunStep, ToolCall, Usage
from stepscope.protocols.assistants.spans import run_span, step_spans
from stepscope.testing import OtlpReceiver

S = 1_000_000_000
TP_TRACE = "0af7651916cd43dd8448eb211c80319c"
TP_SPAN = "b7ad6b7169203331"


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as r:
        yield r


def sample() -> tuple[Run, RunStep]:
    run = Run(
        id="run_1",
        thread_id="thread_1",
        assistant_id="asst_1",
        status="failed",
        created_at=100,
        model="gpt-4o",
        started_at=102,
        failed_at=130,
        last_error=LastError("server_error", "boom"),
        usage=Usage(50, 7, 57),
        traceparent=f"00-{TP_TRACE}-{TP_SPAN}-01",
    )
    step = RunStep(
        id="step_1",
        run_id="run_1",
        thread_id="thread_1",
        assistant_id="asst_1",
        type="tool_calls",
        status="completed",
        created_at=103,
        completed_at=105,
        usage=Usage(20, 3, 23),
        tool_calls=(ToolCall("call_1", "function", name="get_weather", arguments="{}"),),
    )
    return run, step


def deliver(exporter: SpanExporter | None, specs: list[SpanSpec], *, timeout_s: float = 5.0) -> tuple[int, int]:
    """Commit `specs` to a fresh backlog and run a delivery over `exporter` until it empties or the timeout passes.

    Returns (spans kept in the backlog, spans counted as failed).
    """
    store = SqliteStore(":memory:")
    store.open()
    store.commit_steps(UnitRef("thread_1", "run_1"), [], None, time.time(), [spancodec.encode(s) for s in specs])
    failures: list[int] = []
    health = SimpleNamespace(dropped=lambda reason, n=1: None, export_failed=failures.append,
                             observe_export_lag=lambda seconds: None)  # fmt: skip
    resource = Resource.create({"service.name": "stepscope-test"})
    delivery = SpanDelivery(store, exporter, resource=resource, health=health, delay_s=0.01)
    delivery.begin()
    kept = delivery.shutdown(timeout_s)
    store.close()
    return kept, sum(failures)


def http_exporter(url: str) -> SpanExporter:
    exporter = build_span_exporter(TraceSettings(traces_endpoint=url, timeout_s=1.0, headers="x-api-key=secret"))
    assert exporter is not None
    return exporter


class TestHttpEndToEnd:
    def test_spans_arrive_exactly(self, receiver: OtlpReceiver) -> None:
        """Run, step and tool spans arrive with their ids, parents, times, status and attributes, and are acked."""
        run, step = sample()
        specs = [
            run_span(run, assistant_name="Helper", options=MappingOptions()),
            *step_spans(run, step, options=MappingOptions()),
        ]
        assert deliver(http_exporter(receiver.url), specs) == (0, 0)
        assert receiver.wait_for(lambda spans: len(spans) == 3)
        assert receiver.headers[0]["x-api-key"] == "secret"
        run_rx = receiver.by_name("invoke_agent Helper")
        assert (run_rx.trace_id, run_rx.parent_span_id) == (TP_TRACE, TP_SPAN)
        assert run_rx.span_id == f"{specs[0].span_id:016x}"
        assert (run_rx.kind, run_rx.status, run_rx.start_ns, run_rx.end_ns) == ("client", "error", 100 * S, 130 * S)
        assert run_rx.attributes == {**specs[0].attributes}
        assert run_rx.attributes["error.type"] == "server_error"
        assert run_rx.events == (("openai.run.started", 102 * S, {}),)
        assert run_rx.resource["service.name"] == "stepscope-test"
        step_rx = receiver.by_name("run_step tool_calls")
        assert (step_rx.trace_id, step_rx.parent_span_id, step_rx.kind) == (TP_TRACE, run_rx.span_id, "internal")
        assert (step_rx.start_ns, step_rx.end_ns, step_rx.status) == (103 * S, 105 * S, "unset")
        assert step_rx.attributes == {**specs[1].attributes}
        tool_rx = receiver.by_name("execute_tool get_weather")
        assert tool_rx.parent_span_id == step_rx.span_id
        assert tool_rx.attributes == {**specs[2].attributes}
        assert "stepscope.key" not in str(tool_rx.attributes)

    def test_refused_export_keeps_the_spans(self, receiver: OtlpReceiver) -> None:
        """When the backend refuses, the spans stay in the backlog and the failure is counted."""
        receiver.refuse_status = 400
        run, step = sample()
        kept, failed = deliver(
            http_exporter(receiver.url), step_spans(run, step, options=MappingOptions()), timeout_s=1.0
        )
        assert (kept, failed) == (2, 2)
        assert receiver.spans == []

    def test_unreachable_backend_keeps_the_spans(self) -> None:
        """A backend that is not listening leaves the spans in the backlog, without a hang or an exception."""
        with OtlpReceiver() as gone:
            url = gone.url
        run, step = sample()
        started = time.monotonic()
        kept, _ = deliver(http_exporter(url), step_spans(run, step, options=MappingOptions()), timeout_s=1.0)
        assert kept == 2
        assert time.monotonic() - started < 5.0


class TestGrpcEndToEnd:
    def test_grpc_export(self) -> None:
        """The gRPC exporter delivers the same spans to a gRPC receiver."""
        with OtlpReceiver(grpc=True) as rx:
            exporter = build_span_exporter(
                TraceSettings(protocol="grpc", endpoint=f"http://{rx.grpc_endpoint}", insecure=True, timeout_s=2.0)
            )
            run, step = sample()
            assert deliver(exporter, step_spans(run, step, options=MappingOptions())) == (0, 0)
            assert rx.wait_for(lambda spans: len(spans) == 2)
            assert rx.by_name("execute_tool get_weather").trace_id == TP_TRACE
            assert rx.spans[0].resource["service.name"] == "stepscope-test"
