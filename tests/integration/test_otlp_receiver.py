"""OtlpSpanSink end to end into a real OTLP receiver, over HTTP and gRPC."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence

import pytest
from opentelemetry.sdk.resources import Resource

from stepscope.export.otlp import OtlpSpanSink, TraceSettings, build_span_exporter
from stepscope.mapping import MappingOptions, run_span, step_spans
from stepscope.models import LastError, Run, RunStep, ToolCall, Usage
from stepscope.testing import OtlpReceiver

S = 1_000_000_000
TP_TRACE = "0af7651916cd43dd8448eb211c80319c"
TP_SPAN = "b7ad6b7169203331"


class Acks:
    """Thread-safe record of ack callbacks."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[str], bool]] = []
        self.event = threading.Event()
        self._lock = threading.Lock()

    def __call__(self, keys: Sequence[str], ok: bool) -> None:
        with self._lock:
            self.calls.append((list(keys), ok))
        self.event.set()

    def keys(self, ok: bool) -> set[str]:
        with self._lock:
            return {k for keys, flag in self.calls if flag is ok for k in keys}


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


def make_sink(url: str, acks: Acks, **kw: object) -> OtlpSpanSink:
    exporter = build_span_exporter(TraceSettings(traces_endpoint=url, timeout_s=1.0, headers="x-api-key=secret"))
    resource = Resource.create({"service.name": "stepscope-test"})
    return OtlpSpanSink(exporter, resource=resource, on_ack=acks, schedule_delay_ms=50, **kw)  # type: ignore[arg-type]


class TestHttpEndToEnd:
    def test_spans_arrive_exactly(self, receiver: OtlpReceiver) -> None:
        """Run, step and tool spans arrive with their ids, parents, times, status and attributes, and are acked."""
        run, step = sample()
        specs = [
            run_span(run, assistant_name="Helper", options=MappingOptions()),
            *step_spans(run, step, options=MappingOptions()),
        ]
        acks = Acks()
        sink = make_sink(receiver.url, acks)
        try:
            sink.export(specs)
            assert sink.force_flush(5.0)
            assert receiver.wait_for(lambda spans: len(spans) == 3)
        finally:
            sink.shutdown()
        assert acks.keys(True) == {"run:run_1", "step:step_1", "call:step_1:call_1"}
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

    def test_refused_export_acks_false(self, receiver: OtlpReceiver) -> None:
        """When the backend refuses, the batch's keys are acked False and failures are counted."""
        receiver.refuse_status = 400
        run, step = sample()
        acks = Acks()
        failures: list[int] = []
        sink = make_sink(receiver.url, acks, on_failure=failures.append)
        try:
            sink.export(step_spans(run, step, options=MappingOptions()))
            sink.force_flush(5.0)
            assert acks.event.wait(5.0)
        finally:
            sink.shutdown()
        assert acks.keys(False) == {"step:step_1", "call:step_1:call_1"}
        assert acks.keys(True) == set()
        assert failures == [2]
        assert receiver.spans == []
        assert sink.in_flight == 0

    def test_unreachable_backend_acks_false(self) -> None:
        """A backend that is not listening yields a False ack, not a hang or an exception."""
        with OtlpReceiver() as gone:
            url = gone.url
        acks = Acks()
        sink = make_sink(url, acks)
        try:
            run, step = sample()
            sink.export(step_spans(run, step, options=MappingOptions()))
            sink.force_flush(5.0)
            assert acks.event.wait(5.0)
        finally:
            sink.shutdown()
        assert acks.keys(False) == {"step:step_1", "call:step_1:call_1"}


class TestGrpcEndToEnd:
    def test_grpc_export(self) -> None:
        """The gRPC exporter delivers the same spans to a gRPC receiver."""
        with OtlpReceiver(grpc=True) as rx:
            exporter = build_span_exporter(
                TraceSettings(protocol="grpc", endpoint=f"http://{rx.grpc_endpoint}", insecure=True, timeout_s=2.0)
            )
            acks = Acks()
            sink = OtlpSpanSink(exporter, on_ack=acks, schedule_delay_ms=50)
            try:
                run, step = sample()
                sink.export(step_spans(run, step, options=MappingOptions()))
                sink.force_flush(5.0)
                assert rx.wait_for(lambda spans: len(spans) == 2)
            finally:
                sink.shutdown()
            assert acks.keys(True) == {"step:step_1", "call:step_1:call_1"}
            assert rx.by_name("execute_tool get_weather").trace_id == TP_TRACE
            assert rx.spans[0].resource["service.name"] == "stepscope"
