"""Exporters: the span backlog's delivery over OTLP, and Prometheus metrics."""

from __future__ import annotations

from stepscope.export.delivery import BacklogLimits, SpanDelivery
from stepscope.export.otlp import TraceSettings, build_resource, build_span_exporter, parse_headers, readable_span
from stepscope.export.prometheus import PrometheusMetrics

__all__ = [
    "BacklogLimits",
    "PrometheusMetrics",
    "SpanDelivery",
    "TraceSettings",
    "build_resource",
    "build_span_exporter",
    "parse_headers",
    "readable_span",
]
