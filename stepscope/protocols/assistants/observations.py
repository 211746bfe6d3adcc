"""Runs and run steps as metric `Observation`s: pure functions, no I/O, no SDK objects, no clock.

Tokens are counted from step usage only, each terminal step once; run usage is never added on top, so summing
`stepscope_tokens_total` never double counts. Every observation but the step duration carries
`protocol="assistants"`.
"""

from __future__ import annotations

from collections.abc import Sequence

from stepscope.core.records import Observation
from stepscope.mapping import attributes as a
from stepscope.mapping.ids import span_id_for
from stepscope.mapping.metrics import (
    RUN_STEP_DURATION,
    RUN_STEPS_TOTAL,
    TOOL_CALLS_TOTAL,
    run_family_observations,
    token_observations,
    unit_attributes,
)
from stepscope.mapping.spans import Tokens
from stepscope.protocols.assistants.records import Run, RunStep
from stepscope.protocols.assistants.spans import run_error_type, run_trace, step_error_type
from stepscope.protocols.assistants.vocabulary import PROTOCOL, tool_type

_PROTOCOL = PROTOCOL


def step_observations(
    run: Run,
    step: RunStep,
    *,
    span_id: int | None = None,
    call_span_ids: Sequence[int] | None = None,
    provider: str = a.PROVIDER_OPENAI,
) -> list[Observation]:
    """What one terminal step adds to the metrics. `span_id` is the step span's, `call_span_ids` its tool-call
    spans' in `tool_calls` order (`step_spans` already hashed them); each is derived when omitted.

    Sample: `RunStep(id="step_1", assistant_id="asst_1", type="tool_calls", status="completed", created_at=103,
    completed_at=105, usage=Usage(20, 3, 23), tool_calls=(ToolCall("call_1", "function", name="get_weather"),))`
    in a run with model `gpt-4o` yields
    - `stepscope_run_steps_total{step_type=tool_calls,status=completed,model=gpt-4o,assistant_id=asst_1,
      protocol=assistants}` +1
    - `stepscope_tokens_total{token_type=input,step_type=tool_calls,model=gpt-4o,assistant_id=asst_1,
      protocol=assistants}` +20
    - `stepscope_tokens_total{token_type=output,…}` +3 (both token series only when the step has usage)
    - `stepscope_run_step_duration_seconds{step_type=tool_calls,status=completed}` observes 2.0 (only with an end;
      no `protocol`: the Agents API has no step times)
    - `stepscope_tool_calls_total{tool_type=function,tool_name=get_weather,protocol=assistants}` +1, exemplar on the
      tool span
    All carry the run's trace id; all but the tool-call ones the step span's id. A run without `model` reads
    `_unknown`. The token observations carry the run's conventions attributes (`unit_attributes`, with `provider`);
    each tool call its duration, the step's (`duration_s`, with an end), and the step's `error.type` if it failed.
    """
    trace_id = run_trace(run).trace_id
    if span_id is None:
        span_id = span_id_for("step", step.id)
    model = run.model or a.UNKNOWN
    assistant = step.assistant_id
    step_type = step.type
    status = step.status
    out = [
        Observation(
            RUN_STEPS_TOTAL,
            {
                a.LABEL_STEP_TYPE: step_type,
                a.LABEL_STATUS: status,
                a.LABEL_MODEL: model,
                a.LABEL_ASSISTANT_ID: assistant,
                a.LABEL_PROTOCOL: _PROTOCOL,
            },
            1.0,
            trace_id,
            span_id,
        )
    ]
    if step.usage is not None:
        usage = Tokens(input=step.usage.prompt_tokens, output=step.usage.completion_tokens)
        attrs = unit_attributes(provider=provider, agent_id=assistant, model=run.model)
        out += token_observations(
            _PROTOCOL, step_type, model, assistant, usage, trace_id=trace_id, span_id=span_id, attributes=attrs
        )
    ended = step.ended_at
    seconds = None
    if ended is not None:
        seconds = float(max(0, ended - step.created_at))
        labels = {a.LABEL_STEP_TYPE: step_type, a.LABEL_STATUS: status}
        out.append(Observation(RUN_STEP_DURATION, labels, seconds, trace_id, span_id))
    calls = step.tool_calls
    if calls:
        if call_span_ids is None or len(call_span_ids) != len(calls):
            call_span_ids = [span_id_for("call", step.id, call.id) for call in calls]
        error_type = step_error_type(step)
        failed = {a.ERROR_TYPE: error_type} if error_type else {}
        for call, call_span_id in zip(calls, call_span_ids, strict=True):
            labels = {
                a.LABEL_TOOL_TYPE: tool_type(call.type),
                a.LABEL_TOOL_NAME: call.name or call.type,
                a.LABEL_PROTOCOL: _PROTOCOL,
            }
            out.append(Observation(TOOL_CALLS_TOTAL, labels, 1.0, trace_id, call_span_id, failed, seconds))
    return out


def run_observations(
    run: Run, *, span_id: int | None = None, provider: str = a.PROVIDER_OPENAI, agent_name: str | None = None
) -> list[Observation]:
    """What one finished run adds to the metrics. `span_id` is the run span's (derived when omitted); the first
    two carry the run's conventions attributes (`unit_attributes`: `provider`, the assistant's id and
    `agent_name` when known, the model, the run's `error.type`).

    Sample: `Run(id="run_1", assistant_id="asst_1", status="completed", model="gpt-4o", created_at=100,
    started_at=102, completed_at=130)` yields
    - `stepscope_runs_total{status=completed,model=gpt-4o,assistant_id=asst_1,protocol=assistants}` +1
    - `stepscope_run_duration_seconds{status=completed,protocol=assistants}` observes 30.0 (created to terminal;
      only with an end)
    - `stepscope_run_queue_seconds{protocol=assistants}` observes 2.0 (created to started; only when `started_at`
      is set)
    """
    where = run_trace(run)
    trace_id = where.trace_id
    if span_id is None:
        span_id = where.run_span_id
    return run_family_observations(
        _PROTOCOL,
        run.status,
        run.model or a.UNKNOWN,
        run.assistant_id,
        (run.created_at, run.started_at, run.ended_at),
        trace_id=trace_id,
        span_id=span_id,
        attributes=unit_attributes(
            provider=provider,
            agent_id=run.assistant_id,
            agent_name=agent_name,
            model=run.model,
            error_type=run_error_type(run),
        ),
    )
