"""Failure episodes of the OTLP exporters: when a line is due, and the SDK exporter's own lines kept off the log."""

from __future__ import annotations

import logging

import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcSpanExporter
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.metrics.export import MetricsData
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace.export import SpanExportResult

from stepscope.core.records import SpanSpec
from stepscope.export.episodes import Episode, Recovery, Report, SdkLogGate, lasted
from stepscope.export.otlp import TRACE_LOGGERS, readable_span
from stepscope.export.otlp_metrics import METRIC_LOGGERS
from stepscope.testing import FakeClock, OtlpReceiver
from tests.procs import free_port

NS = 1_000_000_000
SPAN = readable_span(
    SpanSpec(key="k", name="s", kind="internal", trace_id=1, span_id=1, parent_span_id=None, start_ns=NS,
             end_ns=2 * NS, attributes={}),
    Resource.create({}),
)  # fmt: skip


class TestEpisode:
    def test_the_first_failure_is_told_at_once_then_one_line_a_minute_with_the_count(self) -> None:
        """The first failure is due at once; the next 11 within the minute are not; the one after the minute is,
        counting the 12 attempts since the first line and the time since it."""
        clock = FakeClock()
        episode = Episode(clock=clock.monotonic)
        assert episode.failed("ConnectionRefusedError") == Report(True, 1, 0.0, "ConnectionRefusedError")
        for _ in range(11):
            clock.advance(5)
            assert episode.failed(None) is None
        clock.advance(6)
        assert episode.failed(None) == Report(False, 12, 61.0, "ConnectionRefusedError")
        clock.advance(30)
        assert episode.failed("HTTP 503 Service Unavailable") is None
        clock.advance(30)
        assert episode.failed(None) == Report(False, 2, 60.0, "HTTP 503 Service Unavailable")

    def test_recovery_is_told_once_with_the_whole_episode(self) -> None:
        """A success after failures is due once, with every failed attempt and the time since the first; a
        success with nothing failing is not, and the next failure starts a new episode."""
        clock = FakeClock()
        episode = Episode(clock=clock.monotonic)
        assert episode.succeeded() is None
        for _ in range(25):
            episode.failed("TimeoutError")
            clock.advance(5)
        assert episode.succeeded() == Recovery(25, 125.0)
        assert episode.succeeded() is None
        assert episode.failed(None) == Report(True, 1, 0.0, None)

    def test_lasted_reads_as_a_duration(self) -> None:
        """Seconds read as `45s`, `2m05s` and `3h02m`."""
        assert [lasted(45.9), lasted(125), lasted(3 * 3600 + 125)] == ["45s", "2m05s", "3h02m"]


def _sdk_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name.startswith("opentelemetry")]


class TestSdkLogGate:
    def test_a_refused_connection_is_a_reason_not_a_log_line(self, caplog: pytest.LogCaptureFixture) -> None:
        """With nothing listening, the SDK HTTP exporter's retry and failure lines never reach the log, and the
        gate names the innermost cause of its error."""
        gate = SdkLogGate(TRACE_LOGGERS)
        gate.attach()
        exporter = OTLPSpanExporter(endpoint=f"http://127.0.0.1:{free_port()}/v1/traces", timeout=1.5)
        try:
            with caplog.at_level(logging.INFO):
                assert exporter.export([SPAN]) is SpanExportResult.FAILURE
        finally:
            gate.detach()
            exporter.shutdown()
        assert _sdk_records(caplog) == []
        assert gate.take() == "ConnectionRefusedError"
        assert gate.take() is None  # taken once

    def test_a_refusal_names_the_http_status(self, caplog: pytest.LogCaptureFixture) -> None:
        """A collector answering 400 is reason `HTTP 400 Bad Request`, and its line stays off the log."""
        gate = SdkLogGate(TRACE_LOGGERS)
        with OtlpReceiver() as receiver:
            receiver.refuse_status = 400
            exporter = OTLPSpanExporter(endpoint=receiver.url, timeout=2)
            gate.attach()
            try:
                with caplog.at_level(logging.WARNING):
                    assert exporter.export([SPAN]) is SpanExportResult.FAILURE
            finally:
                gate.detach()
                exporter.shutdown()
        assert _sdk_records(caplog) == []
        assert gate.take() == "HTTP 400 Bad Request"

    def test_the_shared_grpc_logger_is_split_by_signal(self, caplog: pytest.LogCaptureFixture) -> None:
        """On the logger the gRPC exporters share, the trace gate takes the span exporter's lines (reason
        `UNAVAILABLE`) and leaves the metric gate's signal alone: a metrics record passes the trace gate."""
        traces, metrics = SdkLogGate(TRACE_LOGGERS), SdkLogGate(METRIC_LOGGERS)
        with OtlpReceiver(grpc=True) as receiver:
            receiver.refuse_status = 503
            exporter = GrpcSpanExporter(endpoint=receiver.grpc_endpoint, insecure=True, timeout=1.5)
            traces.attach()
            try:
                with caplog.at_level(logging.WARNING):
                    assert exporter.export([SPAN]) is SpanExportResult.FAILURE
                    logging.getLogger("opentelemetry.exporter.otlp.proto.grpc.exporter").warning(
                        "Transient error %s encountered while exporting %s to %s", "UNAVAILABLE", "metrics", "x"
                    )
            finally:
                traces.detach()
                exporter.shutdown()
        assert [r.args[1] for r in _sdk_records(caplog)] == ["metrics"]  # type: ignore[index]
        assert traces.take() == "UNAVAILABLE"
        assert metrics.take() is None

    def test_at_debug_the_sdk_lines_pass(self, caplog: pytest.LogCaptureFixture) -> None:
        """With stepscope's logger at DEBUG, whoever chases the cause sees the SDK exporter's own lines too."""
        gate = SdkLogGate(METRIC_LOGGERS)
        gate.attach()
        exporter = OTLPMetricExporter(endpoint=f"http://127.0.0.1:{free_port()}/v1/metrics", timeout=0.5)
        try:
            with caplog.at_level(logging.DEBUG, logger="stepscope"), caplog.at_level(logging.WARNING):
                exporter.export(MetricsData(resource_metrics=[]))
        finally:
            gate.detach()
            exporter.shutdown()
        assert _sdk_records(caplog)
