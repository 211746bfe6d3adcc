"""OtlpSpanSink behaviour with injected exporters: acks, queue bound, shutdown, exporter selection."""

from __future__ import annotations

import io
import logging
import threading
from collections.abc import Sequence

import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SpanExporter, SpanExportResult

from stepscope.export.otlp import OtlpSpanSink, TraceSettings, build_span_exporter, parse_headers
from stepscope.types import SpanSpec


class GatedExporter(SpanExporter):
    """Holds every export until `gate` is set; then succeeds, fails or raises as told."""

    def __init__(self, mode: str = "ok") -> None:
        self.gate = threading.Event()
        self.gate.set()
        self.mode = mode
        self.spans: list[ReadableSpan] = []

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.gate.wait(5.0)
        if self.mode == "raise":
            raise RuntimeError("exporter bug")
        self.spans.extend(spans)
        return SpanExportResult.SUCCESS if self.mode == "ok" else SpanExportResult.FAILURE


class Acks:
    def __init__(self) -> None:
        self.calls: list[tuple[list[str], bool]] = []

    def __call__(self, keys: Sequence[str], ok: bool) -> None:
        self.calls.append((list(keys), ok))

    def flat(self) -> list[tuple[str, bool]]:
        return sorted((k, ok) for keys, ok in self.calls for k in keys)


def spec(i: int, **kw: object) -> SpanSpec:
    base: dict[str, object] = {
        "key": f"step:s{i}",
        "name": f"run_step {i}",
        "kind": "internal",
        "trace_id": 0xABC,
        "span_id": 0x100 + i,
        "parent_span_id": 0x99,
        "start_ns": 1_000,
        "end_ns": 2_000,
        "attributes": {"a": i},
    }
    base.update(kw)
    return SpanSpec(**base)  # type: ignore[arg-type]


class TestSink:
    def test_disabled_traces_ack_at_once(self) -> None:
        """Without an exporter every spec is acked True synchronously."""
        acks = Acks()
        sink = OtlpSpanSink(None, on_ack=acks)
        sink.export([spec(1), spec(2)])
        assert acks.calls == [(["step:s1", "step:s2"], True)]
        assert sink.force_flush(1.0)
        sink.shutdown()
        sink.shutdown()

    def test_success_builds_spans_with_given_ids(self) -> None:
        """Spans carry the spec's ids, parent, times and error status; keys are acked True."""
        exporter = GatedExporter()
        acks = Acks()
        sink = OtlpSpanSink(exporter, on_ack=acks, schedule_delay_ms=10)
        sink.export([spec(1), spec(2, error_type="expired", kind="client", parent_span_id=None)])
        assert sink.force_flush(5.0)
        sink.shutdown()
        assert acks.flat() == [("step:s1", True), ("step:s2", True)]
        by_id = {s.context.span_id: s for s in exporter.spans if s.context is not None}
        first, second = by_id[0x101], by_id[0x102]
        assert first.context is not None
        assert first.context.trace_id == 0xABC
        assert first.parent is not None
        assert first.parent.span_id == 0x99
        assert (first.start_time, first.end_time) == (1_000, 2_000)
        assert second.parent is None
        assert second.context is not None
        assert second.context.trace_id == 0xABC
        assert second.status.status_code.name == "ERROR"
        assert second.attributes is not None
        assert second.attributes["error.type"] == "expired"
        assert second.kind.name == "CLIENT"

    @pytest.mark.parametrize("mode", ["fail", "raise"])
    def test_failure_acks_false(self, mode: str) -> None:
        """A failed or raising exporter acks the batch False and reports the failed span count."""
        acks = Acks()
        failures: list[int] = []
        sink = OtlpSpanSink(GatedExporter(mode), on_ack=acks, on_failure=failures.append, schedule_delay_ms=10)
        sink.export([spec(1), spec(2)])
        sink.force_flush(5.0)
        sink.shutdown()
        assert acks.flat() == [("step:s1", False), ("step:s2", False)]
        assert failures == [2]

    def test_queue_bound_refuses_whole_units(self, caplog: pytest.LogCaptureFixture) -> None:
        """A unit that does not fit beside the spans in flight is acked False whole and counted as span_queue_full."""
        exporter = GatedExporter()
        exporter.gate.clear()
        acks = Acks()
        drops: list[tuple[str, int]] = []
        sink = OtlpSpanSink(
            exporter,
            on_ack=acks,
            max_queue_size=3,
            schedule_delay_ms=10,
            on_drop=lambda reason, n: drops.append((reason, n)),
        )
        sink.export([spec(0), spec(1)])
        with caplog.at_level(logging.INFO, logger="stepscope.export.otlp"):
            sink.export([spec(2), spec(3)])  # 2 + 2 > 3: refused whole, not split 1 + 1
            sink.export([spec(5), spec(6)])
            sink.export([spec(4)])
        assert drops == [("span_queue_full", 2), ("span_queue_full", 2)]
        assert acks.calls == [(["step:s2", "step:s3"], False), (["step:s5", "step:s6"], False)]
        messages = [r.getMessage() for r in caplog.records]
        assert len(messages) == 2, "one warning per episode of refusals, then one line when room is back"
        assert "span queue full" in messages[0]
        assert "room again" in messages[1]
        assert sink.in_flight == 3
        exporter.gate.set()
        sink.force_flush(5.0)
        sink.shutdown()
        assert acks.flat() == sorted(
            [(f"step:s{i}", True) for i in (0, 1, 4)] + [(f"step:s{i}", False) for i in (2, 3, 5, 6)]
        )
        assert sorted(s.context.span_id for s in exporter.spans if s.context) == [0x100, 0x101, 0x104]
        assert sink.in_flight == 0

    def test_unit_larger_than_queue_is_dropped_not_retried(self) -> None:
        """A unit that could never fit is dropped, counted and acked True, so its step commits instead of looping."""
        exporter = GatedExporter()
        acks = Acks()
        drops: list[tuple[str, int]] = []
        sink = OtlpSpanSink(
            exporter, on_ack=acks, max_queue_size=3, on_drop=lambda reason, n: drops.append((reason, n))
        )
        sink.export([spec(i) for i in range(5)])
        assert acks.calls == [([f"step:s{i}" for i in range(5)], True)]
        assert drops == [("span_queue_full", 5)]
        assert sink.in_flight == 0
        sink.force_flush(5.0)
        sink.shutdown()
        assert exporter.spans == []

    def test_parent_context_reused_per_parent(self) -> None:
        """Specs sharing a parent and specs with different parents each get their own parent span id."""
        exporter = GatedExporter()
        sink = OtlpSpanSink(exporter, on_ack=Acks(), schedule_delay_ms=10)
        sink.export([spec(1), spec(2), spec(3, parent_span_id=0x101), spec(4, parent_span_id=0x99, trace_id=0xDEF)])
        sink.force_flush(5.0)
        sink.shutdown()
        parents = {
            s.context.span_id: (s.parent.trace_id, s.parent.span_id) for s in exporter.spans if s.context and s.parent
        }
        assert parents == {0x101: (0xABC, 0x99), 0x102: (0xABC, 0x99), 0x103: (0xABC, 0x101), 0x104: (0xDEF, 0x99)}

    def test_same_span_twice_acked_twice(self) -> None:
        """Re-exporting a span still in flight keeps both acks (one key per span handed over)."""
        acks = Acks()
        sink = OtlpSpanSink(GatedExporter(), on_ack=acks, schedule_delay_ms=10)
        sink.export([spec(1)])
        sink.export([spec(1)])
        sink.force_flush(5.0)
        sink.shutdown()
        assert acks.flat() == [("step:s1", True), ("step:s1", True)]

    def test_export_after_shutdown_acks_false(self) -> None:
        """Specs handed over after shutdown are refused with a False ack, not lost."""
        acks = Acks()
        sink = OtlpSpanSink(GatedExporter(), on_ack=acks)
        sink.shutdown()
        sink.export([spec(1)])
        assert acks.calls == [(["step:s1"], False)]
        assert sink.force_flush(1.0)

    def test_raising_ack_callback_does_not_break_export(self) -> None:
        """An ack callback that raises is logged; later batches still export."""
        exporter = GatedExporter()

        def bad_ack(keys: Sequence[str], ok: bool) -> None:
            raise RuntimeError("callback bug")

        sink = OtlpSpanSink(exporter, on_ack=bad_ack, schedule_delay_ms=10)
        sink.export([spec(1)])
        sink.force_flush(5.0)
        sink.export([spec(2)])
        sink.force_flush(5.0)
        sink.shutdown()
        assert len(exporter.spans) == 2


class TestBuildExporter:
    def test_none_and_console(self) -> None:
        """`none` disables traces; `console` writes to the given stream."""
        assert build_span_exporter(TraceSettings(exporter="none")) is None
        assert isinstance(
            build_span_exporter(TraceSettings(exporter="console"), console_out=io.StringIO()), ConsoleSpanExporter
        )

    def test_http_endpoint_resolution(self) -> None:
        """The traces endpoint is used as is; the generic one gets /v1/traces appended."""
        a = build_span_exporter(TraceSettings(traces_endpoint="http://c:4318/custom", endpoint="http://x:1"))
        b = build_span_exporter(TraceSettings(endpoint="http://c:4318/"))
        assert isinstance(a, HttpExporter)
        assert isinstance(b, HttpExporter)
        assert a._endpoint == "http://c:4318/custom"
        assert b._endpoint == "http://c:4318/v1/traces"
        a.shutdown()
        b.shutdown()

    def test_grpc(self) -> None:
        """protocol=grpc selects the gRPC exporter."""
        exporter = build_span_exporter(TraceSettings(protocol="grpc", endpoint="http://127.0.0.1:4317", insecure=True))
        assert isinstance(exporter, GrpcExporter)
        exporter.shutdown()

    def test_invalid_choices(self) -> None:
        """Unknown exporters or protocols are rejected."""
        with pytest.raises(ValueError, match="exporter"):
            build_span_exporter(TraceSettings(exporter="zipkin"))
        with pytest.raises(ValueError, match="protocol"):
            build_span_exporter(TraceSettings(protocol="http/json"))

    def test_parse_headers_and_repr(self) -> None:
        """OTLP header text is split, lower-cased and URL-decoded; repr never shows header values."""
        assert parse_headers("Api-Key=abc, x-t=t%201,broken,=v") == {"api-key": "abc", "x-t": "t 1"}
        assert "abc" not in repr(TraceSettings(headers="api-key=abc"))
