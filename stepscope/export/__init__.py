"""Exporters: the only modules that import the OpenTelemetry and Prometheus SDKs."""

from __future__ import annotations

from stepscope.export.otlp import OtlpSpanSink, TraceSettings, build_resource, build_span_exporter, parse_headers
from stepscope.export.prometheus import PrometheusMetrics

__all__ = [
    "OtlpSpanSink",
    "PrometheusMetrics",
    "TraceSettings",
    "build_resource",
    "build_span_exporter",
    "parse_headers",
]
