"""Observations in the shared metric families, for every protocol: pure functions, no I/O, no SDK, no clock.

A protocol's mapping calls these for what its units and records add, so every protocol lands in the same families,
labels and label order (`contract.metricdefs.DOMAIN_METRICS`), and dashboards and alerts hold across protocols.
Every observation carries the trace and span id of the span it describes, which the Prometheus sink turns into an
exemplar.
"""

from __future__ import annotations

from stepscope.contract import metricdefs as md
from stepscope.core.records import Observation
from stepscope.mapping import attributes as a

RUN_STEPS_TOTAL = md.RUN_STEPS.name
TOKENS_TOTAL = md.TOKENS.name
RUNS_TOTAL = md.RUNS.name
RUN_STEP_DURATION = md.RUN_STEP_DURATION.name
RUN_DURATION = md.RUN_DURATION.name
RUN_QUEUE = md.RUN_QUEUE.name
TOOL_CALLS_TOTAL = md.TOOL_CALLS.name

METRIC_LABELS: dict[str, tuple[str, ...]] = {d.name: d.labels for d in md.DOMAIN_METRICS}
"""Every metric the mapping emits (`metricdefs.DOMAIN_METRICS`), with its label names in exposition order."""


def run_family_observations(
    protocol: str,
    status: str,
    model: str,
    assistant_id: str,
    times: tuple[int, int | None, int | None],
    *,
    trace_id: int,
    span_id: int,
) -> list[Observation]:
    """A finished run's (or turn's) observations in the run families, labelled with `protocol`: one in
    `stepscope_runs_total`, created to end (`times` is created, started, ended) in `stepscope_run_duration_seconds`
    when it ended, and created to started in `stepscope_run_queue_seconds` when it started. Negative spans read 0."""
    created, started, ended = times
    labels = {a.LABEL_STATUS: status, a.LABEL_MODEL: model, a.LABEL_ASSISTANT_ID: assistant_id}
    out = [Observation(RUNS_TOTAL, {**labels, a.LABEL_PROTOCOL: protocol}, 1.0, trace_id, span_id)]
    if ended is not None:
        labels = {a.LABEL_STATUS: status, a.LABEL_PROTOCOL: protocol}
        out.append(Observation(RUN_DURATION, labels, float(max(0, ended - created)), trace_id, span_id))
    if started is not None:
        seconds = float(max(0, started - created))
        out.append(Observation(RUN_QUEUE, {a.LABEL_PROTOCOL: protocol}, seconds, trace_id, span_id))
    return out


def token_observations(
    protocol: str,
    step_type: str,
    model: str,
    assistant_id: str,
    usage: tuple[int, int],
    *,
    trace_id: int,
    span_id: int,
) -> list[Observation]:
    """The two `stepscope_tokens_total` observations of one usage, `(input, output)` tokens, labelled with
    `protocol`."""
    out = []
    for token_type, value in zip(a.TOKEN_TYPES, usage, strict=True):
        labels = {
            a.LABEL_TOKEN_TYPE: token_type,
            a.LABEL_STEP_TYPE: step_type,
            a.LABEL_MODEL: model,
            a.LABEL_ASSISTANT_ID: assistant_id,
            a.LABEL_PROTOCOL: protocol,
        }
        out.append(Observation(TOKENS_TOTAL, labels, float(value), trace_id, span_id))
    return out
