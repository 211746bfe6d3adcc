"""Observations in the shared metric families, for every protocol: pure functions, no I/O, no SDK, no clock.

A protocol's mapping calls these for what its units and records add, so every protocol lands in the same families,
labels and label order (`contract.metricdefs.DOMAIN_METRICS`), and dashboards and alerts hold across protocols.
Every observation carries the trace and span id of the span it describes, which the Prometheus sink turns into an
exemplar. A unit's observations and its token observations also carry the GenAI conventions' attributes of the unit
(`unit_attributes`), which the OTLP sink's instruments read and the Prometheus families ignore.
"""

from __future__ import annotations

from collections.abc import Mapping

from stepscope.contract import metricdefs as md
from stepscope.core.records import NO_ATTRIBUTES, AttrValue, Observation
from stepscope.mapping import attributes as a
from stepscope.mapping.spans import Tokens

RUN_STEPS_TOTAL = md.RUN_STEPS.name
TOKENS_TOTAL = md.TOKENS.name
RUNS_TOTAL = md.RUNS.name
RUN_STEP_DURATION = md.RUN_STEP_DURATION.name
RUN_DURATION = md.RUN_DURATION.name
RUN_QUEUE = md.RUN_QUEUE.name
TOOL_CALLS_TOTAL = md.TOOL_CALLS.name

METRIC_LABELS: dict[str, tuple[str, ...]] = {d.name: d.labels for d in md.DOMAIN_METRICS}
"""Every metric the mapping emits (`metricdefs.DOMAIN_METRICS`), with its label names in exposition order."""


def unit_attributes(
    *,
    provider: str,
    operation: str = a.OPERATION_INVOKE_AGENT,
    agent_id: str | None = None,
    agent_name: str | None = None,
    model: str | None = None,
    error_type: str | None = None,
) -> dict[str, AttrValue]:
    """The GenAI conventions' attributes of one unit of work for the OTLP instruments: `gen_ai.operation.name`
    (`invoke_agent` for runs and turns, `chat` for a plain model response) and `gen_ai.provider.name` always;
    `gen_ai.agent.id` (an agent's id, the `assistant_id` label: never a unit's), `gen_ai.agent.name`,
    `gen_ai.request.model` and `error.type` when known (empty or `_unknown` values are left out).

    `unit_attributes(provider="openai", agent_id="asst_1", agent_name="Helper", model="gpt-4o",
    error_type="server_error")` -> `{gen_ai.operation.name: invoke_agent, gen_ai.provider.name: openai,
    gen_ai.agent.id: asst_1, gen_ai.agent.name: Helper, gen_ai.request.model: gpt-4o, error.type: server_error}`.
    """
    out: dict[str, AttrValue] = {a.GEN_AI_OPERATION_NAME: operation, a.GEN_AI_PROVIDER_NAME: provider}
    known = (
        (a.GEN_AI_AGENT_ID, agent_id),
        (a.GEN_AI_AGENT_NAME, agent_name),
        (a.GEN_AI_REQUEST_MODEL, model),
        (a.ERROR_TYPE, error_type),
    )
    out.update((key, value) for key, value in known if value and value != a.UNKNOWN)
    return out


def run_family_observations(
    protocol: str,
    status: str,
    model: str,
    assistant_id: str,
    times: tuple[float, float | None, float | None],
    *,
    trace_id: int,
    span_id: int,
    attributes: Mapping[str, AttrValue] = NO_ATTRIBUTES,
) -> list[Observation]:
    """A finished run's (or turn's) observations in the run families, labelled with `protocol`: one in
    `stepscope_runs_total`, created to end (`times` is created, started, ended) in `stepscope_run_duration_seconds`
    when it ended, and created to started in `stepscope_run_queue_seconds` when it started. Negative spans read 0.
    The first two carry the unit's `attributes` (`unit_attributes`)."""
    created, started, ended = times
    labels = {a.LABEL_STATUS: status, a.LABEL_MODEL: model, a.LABEL_ASSISTANT_ID: assistant_id}
    out = [Observation(RUNS_TOTAL, {**labels, a.LABEL_PROTOCOL: protocol}, 1.0, trace_id, span_id, attributes)]
    if ended is not None:
        labels = {a.LABEL_STATUS: status, a.LABEL_PROTOCOL: protocol}
        seconds = float(max(0, ended - created))
        out.append(Observation(RUN_DURATION, labels, seconds, trace_id, span_id, attributes))
    if started is not None:
        seconds = float(max(0, started - created))
        out.append(Observation(RUN_QUEUE, {a.LABEL_PROTOCOL: protocol}, seconds, trace_id, span_id))
    return out


def token_observations(
    protocol: str,
    step_type: str,
    model: str,
    assistant_id: str,
    tokens: Tokens,
    *,
    trace_id: int,
    span_id: int,
    attributes: Mapping[str, AttrValue] = NO_ATTRIBUTES,
) -> list[Observation]:
    """The `stepscope_tokens_total` observations of one usage, labelled with `protocol`: `input` and `output`
    always, `cache_read` and `reasoning` when the API reports those breakdowns. The breakdowns are parts of input
    and output, so a total sums `token_type=~"input|output"` only. Each carries the unit's `attributes`."""
    counts = [(a.TOKEN_INPUT, tokens.input), (a.TOKEN_OUTPUT, tokens.output)]
    if tokens.cache_read is not None:
        counts.append((a.TOKEN_CACHE_READ, tokens.cache_read))
    if tokens.reasoning is not None:
        counts.append((a.TOKEN_REASONING, tokens.reasoning))
    out = []
    for token_type, value in counts:
        labels = {
            a.LABEL_TOKEN_TYPE: token_type,
            a.LABEL_STEP_TYPE: step_type,
            a.LABEL_MODEL: model,
            a.LABEL_ASSISTANT_ID: assistant_id,
            a.LABEL_PROTOCOL: protocol,
        }
        out.append(Observation(TOKENS_TOTAL, labels, float(value), trace_id, span_id, attributes))
    return out
