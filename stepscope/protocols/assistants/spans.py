"""Runs and run steps as `SpanSpec`s: pure functions, no I/O, no SDK objects, no clock.

One trace per run: the run span (`invoke_agent …`, CLIENT) is the root, or joins the application's trace as a
child of the span named in the run's `metadata.traceparent`. Each step is a span under the run span, and each tool
call an `execute_tool …` span under its step. Server timestamps are Unix seconds, so spans have 1 s resolution and a
sub-second step lasts 0 s.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from stepscope.core.records import AttrValue, SpanSpec
from stepscope.mapping import attributes as a
from stepscope.mapping.ids import parse_traceparent, span_id_for, trace_id_for_run
from stepscope.mapping.spans import NS, Invocation, Tokens, bounds, invocation_span
from stepscope.protocols.assistants import vocabulary as v
from stepscope.protocols.assistants.records import Run, RunStep, ToolCall

STEP_SPAN_PREFIX = "run_step "
"""A step span's name is this prefix and the step type: `run_step tool_calls`."""


@dataclass(frozen=True, slots=True)
class RunTrace:
    """Where a run's spans go: the trace, the run span's id, and the run span's parent (from `traceparent`)."""

    trace_id: int
    run_span_id: int
    parent_span_id: int | None
    parent_remote: bool
    trace_flags: int


def run_trace(run: Run) -> RunTrace:
    """The trace of a run: joined from a valid `traceparent`, else derived from the run id.

    `Run(id="run_1", traceparent=None, …)` -> `RunTrace(trace_id_for_run("run_1"), span_id_for("run", "run_1"),
    None, False, 1)`; with `traceparent="00-<t>-<s>-01"` -> `RunTrace(t, span_id_for("run", "run_1"), s, True, 1)`.
    """
    return _run_trace(run.id, run.traceparent)


# Every step of a run needs the same two hashes and parse; memoising the pure function keeps the per-step path lean.
@lru_cache(maxsize=4096)
def _run_trace(run_id: str, traceparent: str | None) -> RunTrace:
    run_span_id = span_id_for("run", run_id)
    parent = parse_traceparent(traceparent)
    if parent is None:
        return RunTrace(trace_id_for_run(run_id), run_span_id, None, False, 1)
    trace_id, parent_span_id, flags = parent
    return RunTrace(trace_id, run_span_id, parent_span_id, True, flags)


def run_error_type(run: Run) -> str | None:
    """`error.type` of a finished run, None when it is not an error.

    failed -> `last_error.code` (`_OTHER` without one); expired -> `expired`; incomplete -> the incomplete reason
    (`incomplete` without one); completed and cancelled -> None.
    """
    if run.status == "failed":
        return run.last_error.code if run.last_error else "_OTHER"
    if run.status == "expired":
        return "expired"
    if run.status == "incomplete":
        return run.incomplete_reason or "incomplete"
    return None


def step_error_type(step: RunStep) -> str | None:
    """`error.type` of a finished step: failed -> `last_error.code` (`_OTHER`), expired -> `expired`, else None."""
    if step.status == "failed":
        return step.last_error.code if step.last_error else "_OTHER"
    if step.status == "expired":
        return "expired"
    return None


def run_span(run: Run, *, assistant_name: str | None, options: a.MappingOptions, partial: bool = False) -> SpanSpec:
    """The `invoke_agent` span of a terminal run; raises ValueError for a run that is still going, unless
    `partial` (what `inspect` shows of a run in progress: the span so far, ending at its start).

    Sample: `Run(id="run_1", thread_id="thread_1", assistant_id="asst_1", status="failed", created_at=100,
    started_at=102, failed_at=130, model="gpt-4o", last_error=LastError("server_error", "…"),
    usage=Usage(50, 7, 57))` with `assistant_name="Helper"` yields
    `SpanSpec(key="run:run_1", name="invoke_agent Helper", kind="client", trace_id=trace_id_for_run("run_1"),
    span_id=span_id_for("run", "run_1"), parent_span_id=None, start_ns=100e9, end_ns=130e9,
    attributes={gen_ai.operation.name: invoke_agent, gen_ai.provider.name: openai, gen_ai.agent.id: asst_1,
    gen_ai.agent.name: Helper, gen_ai.conversation.id: thread_1, gen_ai.request.model: gpt-4o,
    openai.run.id: run_1, openai.run.status: failed, gen_ai.usage.input_tokens: 50,
    gen_ai.usage.output_tokens: 7, error.type: server_error}, error_type="server_error",
    events=(SpanEvent("openai.run.started", 102e9),))`.
    Without a name the span is `invoke_agent asst_1` (bare `invoke_agent` when the assistant id is unknown). The
    end is `run.ended_at`; when none can be determined, or it precedes `created_at`, the span ends at its start.
    """
    if not run.is_terminal and not partial:
        raise ValueError(f"run {run.id} is {run.status}, not terminal")
    where = run_trace(run)
    start_ns, end_ns = bounds(run.created_at, run.ended_at)
    usage = run.usage
    invocation = Invocation(
        key=f"run:{run.id}",
        trace_id=where.trace_id,
        span_id=where.run_span_id,
        parent_span_id=where.parent_span_id,
        parent_remote=where.parent_remote,
        trace_flags=where.trace_flags,
        start_ns=start_ns,
        end_ns=end_ns,
        title=assistant_name or (run.assistant_id if run.assistant_id != a.UNKNOWN else None),
        agent_id=run.assistant_id,
        agent_name=assistant_name,
        conversation_id=run.thread_id,
        model=run.model,
        tokens=Tokens(input=usage.prompt_tokens, output=usage.completion_tokens) if usage is not None else None,
        error_type=run_error_type(run),
        started_event=v.RUN_STARTED_EVENT,
        started_ns=run.started_at * NS if run.started_at is not None else None,
        attributes={v.OPENAI_RUN_ID: run.id, v.OPENAI_RUN_STATUS: run.status},
    )
    return invocation_span(invocation, provider_name=options.provider_name)


def step_spans(run: Run, step: RunStep, *, options: a.MappingOptions) -> list[SpanSpec]:
    """The step's span, then one `execute_tool` span per tool call (children of the step span, timed as the step).

    Sample: `RunStep(id="step_1", run_id="run_1", thread_id="thread_1", assistant_id="asst_1", type="tool_calls",
    status="completed", created_at=103, completed_at=105, usage=Usage(20, 3, 23),
    tool_calls=(ToolCall("call_1", "function", name="get_weather", arguments='{"city":"Oslo"}'),))` in a run with
    model `gpt-4o` yields
    1. `SpanSpec(key="step:step_1", name="run_step tool_calls", kind="internal", parent_span_id=<run span id>,
       start_ns=103e9, end_ns=105e9, attributes={openai.run_step.id: step_1, openai.run_step.type: tool_calls,
       openai.run_step.status: completed, openai.run.id: run_1, gen_ai.conversation.id: thread_1,
       gen_ai.agent.id: asst_1, gen_ai.request.model: gpt-4o, gen_ai.usage.input_tokens: 20,
       gen_ai.usage.output_tokens: 3})`
    2. `SpanSpec(key="call:step_1:call_1", name="execute_tool get_weather", kind="internal",
       parent_span_id=span_id_for("step", "step_1"), attributes={gen_ai.operation.name: execute_tool,
       gen_ai.tool.name: get_weather, gen_ai.tool.type: function, gen_ai.tool.call.id: call_1})`, plus
       `gen_ai.tool.call.arguments` (and `.result` once there is output) only with `capture_content`.
    A `message_creation` step adds `openai.message.id`. A failed or expired step is an error on the step span and
    on its tool spans. Unknown step types (Azure `activities`) still get a step span; unknown tool types keep
    their raw type as `gen_ai.tool.type`. An end before the start (bad data) is clamped to the start.
    """
    where = run_trace(run)
    start_ns, end_ns = bounds(step.created_at, step.ended_at)
    attrs: dict[str, AttrValue] = {
        v.OPENAI_RUN_STEP_ID: step.id,
        v.OPENAI_RUN_STEP_TYPE: step.type,
        v.OPENAI_RUN_STEP_STATUS: step.status,
        v.OPENAI_RUN_ID: step.run_id,
        a.GEN_AI_CONVERSATION_ID: step.thread_id,
        a.GEN_AI_AGENT_ID: step.assistant_id,
    }
    if run.model:
        attrs[a.GEN_AI_REQUEST_MODEL] = run.model
    if step.usage is not None:
        attrs[a.GEN_AI_USAGE_INPUT_TOKENS] = step.usage.prompt_tokens
        attrs[a.GEN_AI_USAGE_OUTPUT_TOKENS] = step.usage.completion_tokens
    if step.message_id is not None:
        attrs[v.OPENAI_MESSAGE_ID] = step.message_id
    error_type = step_error_type(step)
    if error_type is not None:
        attrs[a.ERROR_TYPE] = error_type
    step_span_id = span_id_for("step", step.id)
    trace_id, run_span_id, flags = where.trace_id, where.run_span_id, where.trace_flags
    # Positional: this runs for every step, and keyword construction of the frozen dataclass costs a third more.
    specs = [
        SpanSpec(
            f"step:{step.id}",
            f"{STEP_SPAN_PREFIX}{step.type}",
            "internal",
            trace_id,
            step_span_id,
            run_span_id,
            start_ns,
            end_ns,
            attrs,
            error_type,
            False,
            flags,
        )
    ]
    for call in step.tool_calls:
        specs.append(
            SpanSpec(
                f"call:{step.id}:{call.id}",
                f"{a.OPERATION_EXECUTE_TOOL} {call.name or call.type}",
                "internal",
                trace_id,
                span_id_for("call", step.id, call.id),
                step_span_id,
                start_ns,
                end_ns,
                _tool_attributes(call, error_type, options),
                error_type,
                False,
                flags,
            )
        )
    return specs


def _tool_attributes(call: ToolCall, error_type: str | None, options: a.MappingOptions) -> dict[str, AttrValue]:
    attrs: dict[str, AttrValue] = {
        a.GEN_AI_OPERATION_NAME: a.OPERATION_EXECUTE_TOOL,
        a.GEN_AI_TOOL_NAME: call.name or call.type,
        a.GEN_AI_TOOL_TYPE: v.tool_type(call.type),
        a.GEN_AI_TOOL_CALL_ID: call.id,
    }
    if options.capture_content:
        if call.arguments is not None:
            attrs[a.GEN_AI_TOOL_CALL_ARGUMENTS] = a.truncate_content(call.arguments)
        if call.output is not None:
            attrs[a.GEN_AI_TOOL_CALL_RESULT] = a.truncate_content(call.output)
    if error_type is not None:
        attrs[a.ERROR_TYPE] = error_type
    return attrs
