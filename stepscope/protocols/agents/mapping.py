"""Agents API turns as `SpanSpec`s and `Observation`s: pure functions, no I/O, no SDK objects, no clock.

One trace per turn. A turn is a CLIENT span `invoke_agent {agent name or id}` from `created_at` to `completed_at`,
with an event `openai.turn.started` at `started_at` (the queue wait is part of the span, as for runs). Timestamps
are Unix seconds, so spans have 1 s resolution.

Items carry no server times, so they never become timed spans: each is an `openai.turn.item` event on its turn's
span (type, id, call id, tool name, status; content only with content capture on), placed at the span's end (the
moment the turn's items were final, not the item's own time), in the API's order, at most `MAX_ITEM_EVENTS` of them.

Subagent turns (`Turn.subagent_id` set) get spans of their own, in a trace of their own, with a span link to the
root turn that gave the subagent work. The API never names the turn that opened a subagent turn (a
`create_subagent_call` names the requesting agent, not the subagent): the only statement it makes is a subagent
call item that gives work to or waits for the subagent by id (`send_subagent_input_call`, `resume_subagent_call`,
`wait_for_subagents_call`, with the subagent among its recipients), inside some root turn (`subagent_opener`). The
link is set only when exactly one root turn did so; otherwise there is none (the span still names the subagent
in `openai.subagent.id`). A subagent turn's `created_at` is its start (the API's rule), so it has no queue time.

A turn span also links to the root span of the trace the server published for it (`published_root`), which is
relayed unchanged (`stepscope.export.relay`). `turn_links` computes a turn span's links as `(trace_id, span_id)`
pairs; `AgentsMapper.finish` puts them on the span (`SpanSpec.links`).

Metrics land in the families of run steps with `protocol="agents"`: a turn in `stepscope_runs_total`,
`stepscope_run_duration_seconds`, `stepscope_run_queue_seconds` and, from its usage, `stepscope_tokens_total`
(`step_type="turn"`; each turn's usage once, root and subagent turns each report their own agent's tokens); each
item in `stepscope_run_steps_total` (`step_type` = item type, `status` = item status or `_unknown`) and each
tool-call item in `stepscope_tool_calls_total`. Ids never become labels.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from stepscope.core.records import AttrValue, Observation, RelayedSpan, SpanEvent, SpanSpec, Telemetry
from stepscope.mapping import attributes as a
from stepscope.mapping.ids import span_id_for, trace_id_for_run
from stepscope.mapping.items import (
    ITEM_CONTENT,
    ITEM_ERROR,
    ITEM_ID,
    ITEM_ROLE,
    ITEM_SERVER_LABEL,
    ITEM_STATUS,
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
from stepscope.protocols.agents.records import Item, SessionTrace, Turn
from stepscope.protocols.agents.vocabulary import ITEM_TOOL_TYPES, PROTOCOL, TURN_STEP_TYPE

OPENAI_TURN_ID = "openai.turn.id"
OPENAI_TURN_STATUS = "openai.turn.status"
OPENAI_SUBAGENT_ID = "openai.subagent.id"
OPENAI_TURN_ITEMS_DROPPED = "openai.turn.items_dropped"
TURN_STARTED_EVENT = "openai.turn.started"
ITEM_EVENT = "openai.turn.item"
ITEM_DURATION_MS = "openai.item.duration_ms"
ITEM_EXIT_CODE = "openai.item.exit_code"
ITEM_RECIPIENTS = "openai.item.recipient_agent_ids"
ITEM_COMMAND = "openai.item.command"

_OPENING_CALLS = frozenset({"send_subagent_input_call", "resume_subagent_call", "wait_for_subagents_call"})
# Not close or interrupt calls: they end work, and a later turn closing a subagent must not make the link ambiguous.


@dataclass(frozen=True, slots=True, kw_only=True)
class TurnContext:
    """What a turn's telemetry needs beyond the turn: the agent's name and model (from the session's root agent or
    `GET /agents/{id}`; for a subagent turn, the subagent's name), the turn's items in API order, the published
    trace whose id is this turn's, and for a subagent turn the root turn that opened it (`subagent_opener`)."""

    agent_name: str | None = None
    model: str | None = None
    items: Sequence[Item] = ()
    published: SessionTrace | None = None
    opened_by: str | None = None


def trace_id_for_turn(turn_id: str) -> int:
    """The 128-bit trace id of a turn; disjoint from every run's, since no API id contains the unit separator."""
    return trace_id_for_run(f"turn\x1f{turn_id}")


def turn_span_id(turn_id: str) -> int:
    return span_id_for("turn", turn_id)


def turn_error_type(turn: Turn) -> str | None:
    """`error.type` of a finished turn: failed -> the error code (`_OTHER` without one); anything else -> None."""
    if turn.status == "failed":
        return turn.error.code if turn.error else "_OTHER"
    return None


def published_root(trace: SessionTrace) -> tuple[int, int] | None:
    """`(trace_id, span_id)` of the root span (no parent) of a published OTLP JSON trace, None without one."""
    for span in _spans(trace.otlp):
        if span.get("parentSpanId") or span.get("parent_span_id"):
            continue
        ids = _hex(span.get("traceId", span.get("trace_id")), 16), _hex(span.get("spanId", span.get("span_id")), 8)
        if ids[0] and ids[1]:
            return ids[0], ids[1]
    return None


def subagent_opener(turn: Turn, root_items: Iterable[Item]) -> str | None:
    """The root turn that gave `turn`'s subagent work, when exactly one did (see the module docstring).

    `Turn(subagent_id="sa_1", …)` with root items `[Item("send_subagent_input_call", turn_id="turn_1",
    recipients=("sa_1",))]` -> `"turn_1"`; two root turns addressing `sa_1` -> None.
    """
    if turn.subagent_id is None:
        return None
    openers = {
        item.turn_id
        for item in root_items
        if item.type in _OPENING_CALLS and item.turn_id and turn.subagent_id in item.recipients
    }
    return openers.pop() if len(openers) == 1 else None


def turn_links(turn: Turn, context: TurnContext) -> tuple[tuple[int, int], ...]:
    """Span links of a turn span, as `(trace_id, span_id)`: the published trace's root span (when the published
    trace is this turn's), then the opening root turn's span for a subagent turn."""
    links: list[tuple[int, int]] = []
    if context.published is not None and context.published.id == turn.id:
        root = published_root(context.published)
        if root is not None:
            links.append(root)
    if turn.subagent_id is not None and context.opened_by and context.opened_by != turn.id:
        links.append((trace_id_for_turn(context.opened_by), turn_span_id(context.opened_by)))
    return tuple(links)


def turn_span(turn: Turn, context: TurnContext, *, options: a.MappingOptions) -> SpanSpec:
    """The `invoke_agent` span of a terminal turn, with its items as events; ValueError for a turn still going.

    Sample: `Turn(id="turn_1", session_id="sess_1", agent_id="agent_1", status="failed", created_at=100,
    started_at=102, completed_at=130, error=TurnError("rate_limit_exceeded", "…"), usage=TokenUsage(120, 30, 150,
    100, 12))` with `agent_name="Helper"`, `model="gpt-5"` yields `SpanSpec(key="turn:turn_1", name="invoke_agent
    Helper", kind="client", trace_id=trace_id_for_turn("turn_1"), span_id=turn_span_id("turn_1"),
    parent_span_id=None, start_ns=100e9, end_ns=130e9, attributes={gen_ai.operation.name: invoke_agent,
    gen_ai.provider.name: openai, gen_ai.agent.id: agent_1, gen_ai.agent.name: Helper, gen_ai.conversation.id:
    sess_1, gen_ai.request.model: gpt-5, openai.turn.id: turn_1, openai.turn.status: failed,
    gen_ai.usage.input_tokens: 120, gen_ai.usage.output_tokens: 30, gen_ai.usage.cache_read.input_tokens: 100,
    gen_ai.usage.reasoning.output_tokens: 12, error.type: rate_limit_exceeded}, error_type="rate_limit_exceeded",
    events=(SpanEvent("openai.turn.started", 102e9), <one openai.turn.item per item at 130e9>))`.
    Without a name the span is `invoke_agent agent_1`. An end before the start is clamped to the start.
    """
    if not turn.is_terminal:
        raise ValueError(f"turn {turn.id} is {turn.status}, not terminal")
    start_ns, end_ns = bounds(turn.created_at, turn.ended_at)
    attrs: dict[str, AttrValue] = {OPENAI_TURN_ID: turn.id, OPENAI_TURN_STATUS: turn.status}
    if turn.subagent_id is not None:
        attrs[OPENAI_SUBAGENT_ID] = turn.subagent_id
    shown = context.items[:MAX_ITEM_EVENTS]
    if len(context.items) > len(shown):
        attrs[OPENAI_TURN_ITEMS_DROPPED] = len(context.items) - len(shown)
    tokens = tokens_of(turn.usage)
    invocation = Invocation(
        key=f"turn:{turn.id}",
        trace_id=trace_id_for_turn(turn.id),
        span_id=turn_span_id(turn.id),
        start_ns=start_ns,
        end_ns=end_ns,
        title=context.agent_name or (turn.agent_id if turn.agent_id != a.UNKNOWN else None),
        agent_id=turn.agent_id,
        agent_name=context.agent_name,
        conversation_id=turn.session_id,
        model=context.model,
        tokens=tokens,
        error_type=turn_error_type(turn),
        started_event=TURN_STARTED_EVENT,
        started_ns=turn.started_at * NS if turn.started_at is not None else None,
        attributes=attrs,
        events=tuple(SpanEvent(ITEM_EVENT, end_ns, item_attributes(item, i, options)) for i, item in enumerate(shown)),
    )
    # The Agents API is OpenAI's alone: the provider is `openai` whatever the options say.
    return invocation_span(invocation, provider_name=a.PROVIDER_OPENAI)


def item_attributes(item: Item, index: int, options: a.MappingOptions) -> dict[str, AttrValue]:
    """The attributes of one item's event: identity always, content (cut to 4,096 characters) only with capture.

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
        (ITEM_DURATION_MS, item.duration_ms),
        (ITEM_EXIT_CODE, item.exit_code),
        (ITEM_RECIPIENTS, ",".join(item.recipients) if item.recipients else None),
    )
    tool = (item.name or item.type, ITEM_TOOL_TYPES.get(item.type, item.type)) if item.is_tool_call else None
    attrs = item_identity(item.type, index, optional, tool, item.name)
    if not options.capture_content:
        return attrs
    content = (
        (a.GEN_AI_TOOL_CALL_ARGUMENTS, item.arguments),
        (a.GEN_AI_TOOL_CALL_RESULT, item.output),
        (ITEM_ERROR, item.error),
        (ITEM_CONTENT, item.text),
        (ITEM_COMMAND, item.command),
    )
    return with_content(attrs, content)


def turn_observations(turn: Turn, context: TurnContext) -> list[Observation]:
    """What one terminal turn and its items add to the metrics, exemplars on the turn span.

    Sample: the turn of `turn_span`'s sample with model `gpt-5` and one `function_call` item `get_weather`
    (completed) yields
    - `stepscope_runs_total{status=failed,model=gpt-5,assistant_id=agent_1,protocol=agents}` +1
    - `stepscope_run_duration_seconds{status=failed,protocol=agents}` observes 30.0 (only with an end)
    - `stepscope_run_queue_seconds{protocol=agents}` observes 2.0 (root turns with `started_at` only)
    - `stepscope_tokens_total{token_type=input|output|cache_read|reasoning,step_type=turn,model=gpt-5,
      assistant_id=agent_1,protocol=agents}` +120, +30, +100 and +12 (with usage; the breakdowns when reported)
    - `stepscope_run_steps_total{step_type=function_call,status=completed,model=gpt-5,assistant_id=agent_1,
      protocol=agents}` +1
    - `stepscope_tool_calls_total{tool_type=function,tool_name=get_weather,protocol=agents}` +1
    The turn's and its tokens' observations carry its conventions attributes (`unit_attributes`: provider `openai`,
    the agent's id and name, the model, `error.type`); a tool-call item its `duration_ms` as `duration_s` when the
    API reports one, and `error.type=_OTHER` when it failed (items carry a message, never a code).
    """
    trace_id, span_id = trace_id_for_turn(turn.id), turn_span_id(turn.id)
    model = context.model or a.UNKNOWN
    agent = turn.agent_id
    common = {a.LABEL_PROTOCOL: PROTOCOL}
    # A subagent turn's `created_at` is its start (the API's rule), so it has no queue time.
    started = turn.started_at if turn.subagent_id is None else None
    times = (turn.created_at, started, turn.ended_at)
    ids = {"trace_id": trace_id, "span_id": span_id}
    unit = unit_attributes(provider=a.PROVIDER_OPENAI, agent_id=agent, agent_name=context.agent_name,
                           model=context.model, error_type=turn_error_type(turn))  # fmt: skip
    out = run_family_observations(PROTOCOL, turn.status, model, agent, times, **ids, attributes=unit)
    tokens = tokens_of(turn.usage)
    if tokens is not None:
        out += token_observations(PROTOCOL, TURN_STEP_TYPE, model, agent, tokens, **ids, attributes=unit)
    for item in context.items:
        labels = {
            a.LABEL_STEP_TYPE: item.type,
            a.LABEL_STATUS: item.status or a.UNKNOWN,
            a.LABEL_MODEL: model,
            a.LABEL_ASSISTANT_ID: agent,
            **common,
        }
        out.append(Observation(RUN_STEPS_TOTAL, labels, 1.0, trace_id, span_id))
        if item.is_tool_call:
            tool = {
                a.LABEL_TOOL_TYPE: ITEM_TOOL_TYPES.get(item.type, item.type),
                a.LABEL_TOOL_NAME: item.name or item.type,
                **common,
            }
            seconds = item.duration_ms / 1000 if item.duration_ms is not None else None
            failed = {a.ERROR_TYPE: "_OTHER"} if item.status == "failed" else {}
            out.append(Observation(TOOL_CALLS_TOTAL, tool, 1.0, trace_id, span_id, failed, seconds))
    return out


def turn_telemetry(turn: Turn, context: TurnContext, *, options: a.MappingOptions) -> Telemetry:
    """The turn span and every observation of the turn and its items: what one finished turn commits."""
    return Telemetry((turn_span(turn, context, options=options),), turn_observations(turn, context))


def _spans(otlp: Mapping[str, Any]) -> Iterable[Mapping[str, Any]]:
    """Every span object of an OTLP JSON request, tolerating any shape (camelCase or snake_case keys)."""
    for rs in _list(otlp, "resourceSpans", "resource_spans"):
        for ss in _list(rs, "scopeSpans", "scope_spans"):
            yield from _list(ss, "spans", "spans")


def _list(node: object, camel: str, snake: str) -> list[Mapping[str, Any]]:
    if not isinstance(node, Mapping):
        return []
    value = node.get(camel, node.get(snake))
    return [v for v in value if isinstance(v, Mapping)] if isinstance(value, list) else []


def _hex(value: object, size: int) -> int | None:
    if not isinstance(value, str) or len(value) != size * 2:
        return None
    try:
        number = int.from_bytes(bytes.fromhex(value), "big")  # strict: no sign, prefix or underscores
    except ValueError:
        return None
    return number or None


def relayed_spans(trace: SessionTrace) -> list[RelayedSpan]:
    """Every span of a published trace, each with its resource and scope, to relay as the server wrote it."""
    out: list[RelayedSpan] = []
    for rs in _list(trace.otlp, "resourceSpans", "resource_spans"):
        resource = rs.get("resource")
        for ss in _list(rs, "scopeSpans", "scope_spans"):
            scope = ss.get("scope")
            for span in _list(ss, "spans", "spans"):
                key = f"relay:{span.get('traceId', span.get('trace_id'))}:{span.get('spanId', span.get('span_id'))}"
                out.append(RelayedSpan(key, resource if isinstance(resource, Mapping) else {},
                                       scope if isinstance(scope, Mapping) else {}, span))  # fmt: skip
    return out


@dataclass(frozen=True, slots=True)
class AgentsMapper:
    """The Agents protocol's `Mapper`: a turn has no records of its own (its items have no times); its finish
    context (`TurnContext`) carries the items and the published trace. Telemetry: the turn span with its links,
    the turn's and its items' observations, and the published trace's spans to relay."""

    options: a.MappingOptions

    def record(self, unit: Turn, record: Item) -> Telemetry:
        raise ValueError("items are committed with their turn, not one by one")

    def finish(self, unit: Turn, finish: TurnContext | None) -> Telemetry:
        context = finish or TurnContext()
        span = turn_span(unit, context, options=self.options)
        span = replace(span, links=turn_links(unit, context))
        relayed = relayed_spans(context.published) if context.published is not None else []
        return Telemetry((span,), turn_observations(unit, context), relayed)
