"""The one span every protocol's unit of work becomes: `invoke_agent {agent}` (or `chat {model}`), CLIENT, in the
GenAI conventions' words. Pure: no I/O, no SDK objects, no clock.

A protocol describes its unit as an `Invocation` (ids, times in nanoseconds, agent, conversation, model, usage,
error, and its own attributes and events) and `invocation_span` builds the `SpanSpec`, so runs, turns and responses
carry the same attributes in the same way. `bounds` turns server timestamps into a span's start and end: an end
before the start (bad data) is clamped to the start, so no span has a negative duration.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from stepscope.core.records import AttrValue, SpanEvent, SpanSpec
from stepscope.mapping import attributes as a

NS = 1_000_000_000


def bounds(created_at: float, ended_at: float | None) -> tuple[int, int]:
    """`(start_ns, end_ns)` of a span from Unix-second timestamps; without an end, or with one before the start,
    the span ends at its start. `bounds(100, 130)` is `(100e9, 130e9)`."""
    start_ns = round(created_at * NS)
    end_ns = max(start_ns, round(ended_at * NS)) if ended_at is not None else start_ns
    return start_ns, end_ns


@dataclass(frozen=True, slots=True, kw_only=True)
class Tokens:
    """A unit's usage as the conventions count it: input and output, and the cached and reasoning parts when the
    API reports them."""

    input: int
    output: int
    cache_read: int | None = None
    reasoning: int | None = None


class Usage(Protocol):
    """A usage record with the OpenAI breakdowns (the Agents and Responses APIs' `usage`)."""

    @property
    def input_tokens(self) -> int: ...

    @property
    def output_tokens(self) -> int: ...

    @property
    def cached_tokens(self) -> int | None: ...

    @property
    def reasoning_tokens(self) -> int | None: ...


def tokens_of(usage: Usage | None) -> Tokens | None:
    """A usage in the conventions' terms (cached tokens are cache reads), None without usage."""
    if usage is None:
        return None
    return Tokens(input=usage.input_tokens, output=usage.output_tokens, cache_read=usage.cached_tokens,
                  reasoning=usage.reasoning_tokens)  # fmt: skip


@dataclass(frozen=True, slots=True, kw_only=True)
class Invocation:
    """One unit of work as its span describes it.

    `operation` is `gen_ai.operation.name`; the span is named `{operation} {title}` (bare `operation` without a
    title). `attributes` are the protocol's own (its ids and status), placed after the conventions' ones; `events`
    follow the `started_event` at `started_ns` (clamped into the span), when there is one.
    """

    key: str
    trace_id: int
    span_id: int
    start_ns: int
    end_ns: int
    parent_span_id: int | None = None
    parent_remote: bool = False
    trace_flags: int = 1
    operation: str = a.OPERATION_INVOKE_AGENT
    title: str | None = None
    agent_id: str | None = None
    agent_name: str | None = None
    agent_version: str | None = None
    conversation_id: str | None = None
    model: str | None = None
    tokens: Tokens | None = None
    error_type: str | None = None
    started_event: str | None = None
    started_ns: int | None = None
    attributes: Mapping[str, AttrValue] = field(default_factory=dict)
    events: tuple[SpanEvent, ...] = ()
    links: tuple[tuple[int, int], ...] = ()


def invocation_span(inv: Invocation, *, provider_name: str) -> SpanSpec:
    """The CLIENT span of one unit of work.

    Sample: `Invocation(key="run:run_1", trace_id=t, span_id=s, start_ns=100e9, end_ns=130e9, title="Helper",
    agent_id="asst_1", agent_name="Helper", conversation_id="thread_1", model="gpt-4o", tokens=Tokens(input=50,
    output=7), error_type="server_error", started_event="openai.run.started", started_ns=102e9,
    attributes={"openai.run.id": "run_1"})` with provider `openai` yields a span `invoke_agent Helper` with
    `{gen_ai.operation.name: invoke_agent, gen_ai.provider.name: openai, gen_ai.agent.id: asst_1,
    gen_ai.agent.name: Helper, gen_ai.conversation.id: thread_1, gen_ai.request.model: gpt-4o, openai.run.id:
    run_1, gen_ai.usage.input_tokens: 50, gen_ai.usage.output_tokens: 7, error.type: server_error}`, status ERROR,
    and the event `openai.run.started` at 102e9.
    """
    attrs: dict[str, AttrValue] = {a.GEN_AI_OPERATION_NAME: inv.operation, a.GEN_AI_PROVIDER_NAME: provider_name}
    optional: tuple[tuple[str, str | None], ...] = (
        (a.GEN_AI_AGENT_ID, inv.agent_id),
        (a.GEN_AI_AGENT_NAME, inv.agent_name),
        (a.GEN_AI_AGENT_VERSION, inv.agent_version),
        (a.GEN_AI_CONVERSATION_ID, inv.conversation_id),
        (a.GEN_AI_REQUEST_MODEL, inv.model),
    )
    attrs.update((key, value) for key, value in optional if value)
    attrs.update(inv.attributes)
    if inv.tokens is not None:
        attrs[a.GEN_AI_USAGE_INPUT_TOKENS] = inv.tokens.input
        attrs[a.GEN_AI_USAGE_OUTPUT_TOKENS] = inv.tokens.output
        if inv.tokens.cache_read is not None:
            attrs[a.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS] = inv.tokens.cache_read
        if inv.tokens.reasoning is not None:
            attrs[a.GEN_AI_USAGE_REASONING_OUTPUT_TOKENS] = inv.tokens.reasoning
    if inv.error_type is not None:
        attrs[a.ERROR_TYPE] = inv.error_type
    events = inv.events
    if inv.started_event is not None and inv.started_ns is not None:
        started = min(max(inv.start_ns, inv.started_ns), inv.end_ns)
        events = (SpanEvent(inv.started_event, started), *events)
    return SpanSpec(
        key=inv.key,
        name=f"{inv.operation} {inv.title}" if inv.title else inv.operation,
        kind="client",
        trace_id=inv.trace_id,
        span_id=inv.span_id,
        parent_span_id=inv.parent_span_id,
        start_ns=inv.start_ns,
        end_ns=inv.end_ns,
        attributes=attrs,
        error_type=inv.error_type,
        parent_remote=inv.parent_remote,
        trace_flags=inv.trace_flags,
        events=events,
        links=inv.links,
    )
