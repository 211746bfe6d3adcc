"""SpanSpec to SDK span, and exporter selection from the OTEL_* settings."""

from __future__ import annotations

import io

import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SpanExportResult
from opentelemetry.trace import SpanKind, StatusCode

from stepscope.core.records import SpanEvent, SpanSpec
from stepscope.export.otlp import TraceSettings, build_span_exporter, parse_headers, readable_span
from stepscope.testing import OtlpReceiver

RESOURCE = Resource.create({"service.name": "t"})


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


class TestReadableSpan:
    def test_ids_times_parent_status_and_events(self) -> None:
        """A spec becomes an SDK span with its own ids, times, parent, ERROR status and error.type, events."""
        event = SpanEvent("openai.run.started", 1_500, {"k": "v"})
        span = readable_span(spec(1, error_type="server_error", parent_remote=True, events=(event,)), RESOURCE)
        assert span.context is not None
        assert (span.context.trace_id, span.context.span_id) == (0xABC, 0x101)
        assert span.parent is not None
        assert (span.parent.span_id, span.parent.is_remote) == (0x99, True)
        assert (span.start_time, span.end_time, span.kind) == (1_000, 2_000, SpanKind.INTERNAL)
        assert span.status.status_code is StatusCode.ERROR
        assert span.attributes == {"a": 1, "error.type": "server_error"}
        assert [(e.name, e.timestamp, dict(e.attributes or {})) for e in span.events] == [
            ("openai.run.started", 1_500, {"k": "v"})
        ]
        assert span.resource is RESOURCE

    def test_root_span_has_no_parent(self) -> None:
        """A spec without a parent span id starts its own trace."""
        assert readable_span(spec(2, parent_span_id=None), RESOURCE).parent is None

    @pytest.mark.parametrize(
        "bad",
        [{"start_ns": -1}, {"end_ns": 2**64}, {"start_ns": 3_000}, {"span_id": 0}, {"trace_id": 2**128}],
    )
    def test_values_otlp_cannot_carry_are_refused(self, bad: dict[str, int]) -> None:
        """Negative or oversized times, an end before the start and invalid ids raise ValueError, not later."""
        with pytest.raises(ValueError, match="cannot carry"):
            readable_span(spec(3, **bad), RESOURCE)


class TestBuildExporter:
    def test_none_and_console(self) -> None:
        """`none` disables traces; `console` writes to the given stream."""
        assert build_span_exporter(TraceSettings(exporter="none")) is None
        assert isinstance(
            build_span_exporter(TraceSettings(exporter="console"), console_out=io.StringIO()), ConsoleSpanExporter
        )

    def test_http_endpoint_resolution(self) -> None:
        """The traces endpoint is posted to as is; the generic one gets /v1/traces appended (a real receiver)."""
        with OtlpReceiver() as receiver:
            root = receiver.url.removesuffix("/v1/traces")
            as_is = build_span_exporter(TraceSettings(traces_endpoint=receiver.url, endpoint=root + "/elsewhere"))
            appended = build_span_exporter(TraceSettings(endpoint=root + "/"))
            assert isinstance(as_is, HttpExporter)
            assert isinstance(appended, HttpExporter)
            try:
                # The receiver answers 404 off /v1/traces, so a wrong path fails the export.
                assert as_is.export([readable_span(spec(1), RESOURCE)]) is SpanExportResult.SUCCESS
                assert appended.export([readable_span(spec(2), RESOURCE)]) is SpanExportResult.SUCCESS
            finally:
                as_is.shutdown()
                appended.shutdown()
            assert [span.name for span in receiver.spans] == ["run_step 1", "run_step 2"]

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
