"""Pure mapping from Assistants records to span specs and metric observations (no I/O, no SDKs, no clock)."""

from __future__ import annotations

from stepscope.mapping.attributes import MappingOptions, tool_type
from stepscope.mapping.ids import parse_traceparent, span_id_for, trace_id_for_run
from stepscope.mapping.metrics import METRIC_LABELS, run_observations, step_observations
from stepscope.protocols.assistants.spans import (
    RunTrace,
    run_error_type,
    run_span,
    run_trace,
    step_error_type,
    step_spans,
)

__all__ = [
    "METRIC_LABELS",
    "MappingOptions",
    "RunTrace",
    "parse_traceparent",
    "run_error_type",
    "run_observations",
    "run_span",
    "run_trace",
    "span_id_for",
    "step_error_type",
    "step_observations",
    "step_spans",
    "tool_type",
    "trace_id_for_run",
]
