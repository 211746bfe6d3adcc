"""Responses as `SpanSpec`s and `Observation`s: pure functions, no I/O, no SDK objects, no clock.

One trace per response (or the application's trace, as a child of the span its `traceparent` names: the request
header the proxy saw, or `metadata.traceparent`). The response is a CLIENT span: `invoke_agent {agent name}` for a
response with an `agent_reference` (Foundry's agents), else `chat {model}` with `openai.api.type = responses`, as
the GenAI conventions' OpenAI page says. It starts at `created_at`. A completed response ends exactly at its
`completed_at`; any other terminal response has no server end time, so its span ends at the moment stepscope first
saw it terminal (`ResponseContext.observed_end`: the terminal stream event, or the read that found it so) and
carries `stepscope.end_time.observed = true`. No other time is invented.

Items carry no times: each is an `openai.response.item` event at the span's end (as for Agents API turns), at most
`MAX_ITEM_EVENTS`. When the proxy saw the stream, each tool-call item whose `response.output_item.added` and
`.done` it saw is also a child span `execute_tool {tool name or item type}` between those two moments
(`ResponseContext.tool_times`), with `stepscope.time.observed = true`.

Metrics, in the families every protocol shares, with `protocol="responses"`: a response in `stepscope_runs_total`,
in `stepscope_run_duration_seconds` when it completed (the others have no server duration), its usage once in
`stepscope_tokens_total` (`step_type="response"`, with the cached and reasoning breakdowns); each item in
`stepscope_run_steps_total` by type and status, each tool-call item in `stepscope_tool_calls_total`. The
`assistant_id` label is the agent's name, `_unknown` without an agent.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from stepscope.core.records import AttrValue, Observation, SpanEvent, SpanSpec, Telemetry
from stepscope.mapping import attributes as a
from stepscope.mapping.ids import parse_traceparent, span_id_for, trace_id_for_run
from stepscope.mapping.items import (
    ITEM_CONTENT,
    ITEM_ID,
    ITEM_ROLE,
    ITEM_SERVER_LABEL,
    ITEM_STATUS,
    ITEM_TYPE,
    MAX_ITEM_EVENTS,
    item_identity,
    with_content,
)
from stepscope.mapping.metrics import (
    RUN_STEPS_TOTAL,
    TOOL_CALLS_TOTAL,
    run_family_observations,
    token_observations,
    unit_attributes,
)
from stepscope.mapping.spans import NS, Invocation, bounds, invocation_span, tokens_of
from stepscope.protocols.responses.records import Item, Response
from stepscope.protocols.responses.vocabulary import PROTOCOL, RESPONSE_STEP_TYPE, tool_type

RESPONSE_STATUS = "openai.response.status"
PREVIOUS_ID = "openai.response.previous_id"
BACKGROUND = "openai.response.background"
ITEMS_DROPPED = "openai.response.items_dropped"
FOUNDRY_PROJECT_ID = "microsoft.foundry.project.id"
ITEM_EVENT = "openai.response.item"
API_TYPE_RESPONSES = "responses"


@dataclass(frozen=True, slots=True, kw_only=True)
class ResponseContext:
    """What a response's telemetry needs beyond the response: when stepscope first saw it terminal (Unix seconds,
    used only when the server recorded no end), when the proxy saw each tool-call item added and done (item id ->
    `(start_ns, end_ns)`), and the `traceparent` header of the request that created it."""

    observed_end: float | None = None
    tool_times: Mapping[str, tuple[int, int]] = field(default_factory=dict)
    traceparent: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ResponsesOptions:
    """`mapping` as for every protocol; `project_id` is Foundry's project resource id
    (`microsoft.foundry.project.id`, without which Foundry's own Traces view does not show the spans)."""

    mapping: a.MappingOptions
    project_id: str | None = None


@dataclass(frozen=True, slots=True)
class ResponseTrace:
    trace_id: int
    span_id: int
    parent_span_id: int | None
    parent_remote: bool
    trace_flags: int


def response_trace(response: Response, context: ResponseContext) -> ResponseTrace:
    """The trace of a response: joined from a valid `metadata.traceparent` or request header, else its own."""
    span_id = span_id_for("response", response.id)
    parent = parse_traceparent(response.traceparent) or parse_traceparent(context.traceparent)
    if parent is None:
        return ResponseTrace(trace_id_for_run(f"response\x1f{response.id}"), span_id, None, False, 1)
    trace_id, parent_span_id, flags = parent
    return ResponseTrace(trace_id, span_id, parent_span_id, True, flags)


def error_type(response: Response) -> str | None:
    """failed -> the error code (`_OTHER` without one); incomplete -> the reason (`incomplete` without one);
    completed and cancelled -> None."""
    if response.status == "failed":
        return response.error_code or "_OTHER"
    if response.status == "incomplete":
        return response.incomplete_reason or "incomplete"
    return None


def response_end(response: Response, context: ResponseContext) -> tuple[float | None, bool]:
    """The end of a response's span and whether it was observed: `(completed_at, False)` when the server recorded
    one, else `(observed_end, True)`."""
    if response.server_end is not None:
        return response.server_end, False
    return context.observed_end, True


def response_span(response: Response, context: ResponseContext, options: ResponsesOptions) -> SpanSpec:
    """The span of a terminal response, with its items as events; ValueError for one still going.

    Sample: `Response(id="resp_1", status="completed", created_at=100, completed_at=104, model="gpt-5",
    usage=TokenUsage(50, 7, 57, 10, 2), conversation_id="conv_1")` yields `chat gpt-5` from 100 s to 104 s with
    `{gen_ai.operation.name: chat, gen_ai.provider.name: openai, gen_ai.conversation.id: conv_1,
    gen_ai.request.model: gpt-5, gen_ai.response.id: resp_1, gen_ai.response.model: gpt-5, openai.api.type:
    responses, openai.response.status: completed, gen_ai.usage.input_tokens: 50, gen_ai.usage.output_tokens: 7,
    gen_ai.usage.cache_read.input_tokens: 10, gen_ai.usage.reasoning.output_tokens: 2}`. With
    `agent=AgentReference("helper", "3")` it is `invoke_agent helper` with `gen_ai.agent.name` and `.version`.
    """
    if not response.is_terminal:
        raise ValueError(f"response {response.id} is {response.status}, not terminal")
    where = response_trace(response, context)
    end, observed = response_end(response, context)
    start_ns, end_ns = bounds(response.created_at, end)
    attrs: dict[str, AttrValue] = {a.GEN_AI_RESPONSE_ID: response.id, RESPONSE_STATUS: response.status}
    if response.model:
        attrs[a.GEN_AI_RESPONSE_MODEL] = response.model
    agent = response.agent
    if agent is None:
        attrs[a.OPENAI_API_TYPE] = API_TYPE_RESPONSES
    if response.previous_response_id:
        attrs[PREVIOUS_ID] = response.previous_response_id
    if response.background is not None:
        attrs[BACKGROUND] = response.background
    if options.project_id:
        attrs[FOUNDRY_PROJECT_ID] = options.project_id
    if observed:
        attrs[a.STEPSCOPE_END_TIME_OBSERVED] = True
    items = response.output
    shown = items[:MAX_ITEM_EVENTS]
    if len(items) > len(shown):
        attrs[ITEMS_DROPPED] = len(items) - len(shown)
    mapping = options.mapping
    invocation = Invocation(
        key=f"response:{response.id}",
        trace_id=where.trace_id,
        span_id=where.span_id,
        parent_span_id=where.parent_span_id,
        parent_remote=where.parent_remote,
        trace_flags=where.trace_flags,
        start_ns=start_ns,
        end_ns=end_ns,
        operation=a.OPERATION_INVOKE_AGENT if agent else a.OPERATION_CHAT,
        title=agent.name if agent else response.model,
        agent_name=agent.name if agent else None,
        agent_version=agent.version if agent else None,
        conversation_id=response.conversation_id,
        model=response.model,
        tokens=tokens_of(response.usage),
        error_type=error_type(response),
        attributes=attrs,
        events=tuple(SpanEvent(ITEM_EVENT, end_ns, item_attributes(item, i, mapping)) for i, item in enumerate(shown)),
    )
    return invocation_span(invocation, provider_name=mapping.provider_name)


def item_attributes(item: Item, index: int, options: a.MappingOptions) -> dict[str, AttrValue]:
    """One item's event: identity always, content (cut to 4,096 characters) only with capture on.

    `Item("function_call", "fc_1", call_id="call_1", name="get_weather", status="completed")` at index 2 ->
    `{openai.item.type: function_call, openai.item.index: 2, openai.item.id: fc_1, openai.item.status: completed,
    gen_ai.tool.call.id: call_1, gen_ai.tool.name: get_weather, gen_ai.tool.type: function}`.
    """
    optional: tuple[tuple[str, AttrValue | None], ...] = (
        (ITEM_ID, item.id),
        (ITEM_STATUS, item.status),
        (a.GEN_AI_TOOL_CALL_ID, item.call_id),
        (ITEM_ROLE, item.role),
        (ITEM_SERVER_LABEL, item.server_label),
    )
    attrs = item_identity(item.type, index, optional, _tool(item), item.name)
    if not options.capture_content:
        return attrs
    content = (
        (a.GEN_AI_TOOL_CALL_ARGUMENTS, item.arguments),
        (a.GEN_AI_TOOL_CALL_RESULT, item.output),
        (ITEM_CONTENT, item.text),
    )
    return with_content(attrs, content)


def _tool(item: Item) -> tuple[str, str] | None:
    """`(gen_ai.tool.name, gen_ai.tool.type)` of a tool-call item, None for other items."""
    return (item.name or item.type, tool_type(item.type)) if item.is_tool_call else None


def tool_spans(response: Response, context: ResponseContext) -> list[SpanSpec]:
    """An `execute_tool` child span per tool-call item the proxy saw added and done (`context.tool_times`), timed
    by those two moments; an end before the start is clamped to the start. Items without an id have none."""
    if not context.tool_times:
        return []
    where = response_trace(response, context)
    spans = []
    for item in response.output:
        tool = _tool(item)
        times = context.tool_times.get(item.id) if item.id is not None else None
        if tool is None or times is None or item.id is None:
            continue
        start_ns, end_ns = times[0], max(times[0], times[1])
        attrs: dict[str, AttrValue] = {
            a.GEN_AI_OPERATION_NAME: a.OPERATION_EXECUTE_TOOL,
            a.GEN_AI_TOOL_NAME: tool[0],
            a.GEN_AI_TOOL_TYPE: tool[1],
            ITEM_TYPE: item.type,
            ITEM_ID: item.id,
            a.STEPSCOPE_TIME_OBSERVED: True,
        }
        if item.call_id:
            attrs[a.GEN_AI_TOOL_CALL_ID] = item.call_id
        if item.status:
            attrs[ITEM_STATUS] = item.status
        spans.append(
            SpanSpec(
                key=f"item:{response.id}:{item.id}",
                name=f"{a.OPERATION_EXECUTE_TOOL} {tool[0]}",
                kind="internal",
                trace_id=where.trace_id,
                span_id=span_id_for("item", response.id, item.id),
                parent_span_id=where.span_id,
                start_ns=start_ns,
                end_ns=end_ns,
                attributes=attrs,
                error_type="_OTHER" if item.status == "failed" else None,
                trace_flags=where.trace_flags,
            )
        )
    return spans


def response_observations(response: Response, context: ResponseContext, options: ResponsesOptions) -> list[Observation]:
    """What one terminal response and its items add to the metrics, exemplars on the response span.

    Sample: `response_span`'s sample with one completed `function_call` item `get_weather` yields
    - `stepscope_runs_total{status=completed,model=gpt-5,assistant_id=_unknown,protocol=responses}` +1
    - `stepscope_run_duration_seconds{status=completed,protocol=responses}` observes 4.0 (completed only)
    - `stepscope_tokens_total{token_type=input|output|cache_read|reasoning,step_type=response,...}` +50, +7, +10, +2
    - `stepscope_run_steps_total{step_type=function_call,status=completed,model=gpt-5,assistant_id=_unknown,
      protocol=responses}` +1
    - `stepscope_tool_calls_total{tool_type=function,tool_name=get_weather,protocol=responses}` +1
    The response's and its tokens' observations carry its conventions attributes (`unit_attributes`); a tool call
    the proxy timed carries that time as `duration_s`, a failed one `error.type`.
    """
    where = response_trace(response, context)
    ids = {"trace_id": where.trace_id, "span_id": where.span_id}
    model = response.model or a.UNKNOWN
    agent = response.agent.name if response.agent else a.UNKNOWN
    unit = unit_attributes(
        provider=options.mapping.provider_name,
        operation=a.OPERATION_INVOKE_AGENT if response.agent else a.OPERATION_CHAT,
        agent_name=response.agent.name if response.agent else None,
        model=response.model,
        error_type=error_type(response),
    )
    # Only the server's end gives a duration: an observed end measures stepscope, not the response.
    times = (response.created_at, None, response.server_end)
    out = run_family_observations(PROTOCOL, response.status, model, agent, times, **ids, attributes=unit)
    tokens = tokens_of(response.usage)
    if tokens is not None:
        out += token_observations(PROTOCOL, RESPONSE_STEP_TYPE, model, agent, tokens, **ids, attributes=unit)
    common = {a.LABEL_MODEL: model, a.LABEL_ASSISTANT_ID: agent, a.LABEL_PROTOCOL: PROTOCOL}
    for item in response.output:
        labels = {a.LABEL_STEP_TYPE: item.type, a.LABEL_STATUS: item.status or a.UNKNOWN, **common}
        out.append(Observation(RUN_STEPS_TOTAL, labels, 1.0, where.trace_id, where.span_id))
        tool = _tool(item)
        if tool is None:
            continue
        tool_labels = {a.LABEL_TOOL_TYPE: tool[1], a.LABEL_TOOL_NAME: tool[0], a.LABEL_PROTOCOL: PROTOCOL}
        times_ns = context.tool_times.get(item.id) if item.id is not None else None
        seconds = max(0, times_ns[1] - times_ns[0]) / NS if times_ns is not None else None
        failed: dict[str, AttrValue] = {a.ERROR_TYPE: "_OTHER"} if item.status == "failed" else {}
        out.append(Observation(TOOL_CALLS_TOTAL, tool_labels, 1.0, where.trace_id, where.span_id, failed, seconds))
    return out


@dataclass(frozen=True, slots=True)
class ResponsesMapper:
    """The Responses protocol's `Mapper`: a response is committed whole, once terminal, with its finish context
    (`ResponseContext`); it has no records of its own."""

    options: ResponsesOptions

    def record(self, unit: Response, record: Item) -> Telemetry:
        raise ValueError("items are committed with their response, not one by one")

    def finish(self, unit: Response, finish: ResponseContext | None) -> Telemetry:
        context = finish or ResponseContext()
        spans = (response_span(unit, context, self.options), *tool_spans(unit, context))
        return Telemetry(spans, response_observations(unit, context, self.options))
