"""Agents API turns as telemetry: the turn span, item events, links, subagent turns and the run-step metric families."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stepscope.client.parsing import TokenUsage
from stepscope.core.records import Observation, SpanEvent
from stepscope.errors import InvalidObject
from stepscope.mapping.attributes import MappingOptions
from stepscope.mapping.ids import trace_id_for_run
from stepscope.mapping.items import MAX_ITEM_EVENTS
from stepscope.protocols.agents import vocabulary as agents_vocabulary
from stepscope.protocols.agents.mapping import (
    TurnContext,
    published_root,
    subagent_opener,
    trace_id_for_turn,
    turn_links,
    turn_observations,
    turn_span,
    turn_span_id,
    turn_telemetry,
)
from stepscope.protocols.agents.parsers import parse_item, parse_turn
from stepscope.protocols.agents.records import (
    SUBAGENT_CALL_ITEM_TYPES,
    TOOL_CALL_ITEM_TYPES,
    TURN_TERMINAL,
    Item,
    SessionTrace,
    Turn,
    TurnError,
)
from stepscope.protocols.agents.vocabulary import ITEM_TOOL_TYPES
from tests.kit.strategies import TIMESTAMPS, U64

S = 1_000_000_000
OFF = MappingOptions()
ON = MappingOptions(capture_content=True)
TURN = Turn(
    id="turn_1",
    session_id="sess_1",
    agent_id="agent_1",
    status="completed",
    created_at=100,
    started_at=102,
    completed_at=130,
    usage=TokenUsage(120, 30, 150, cached_tokens=100, reasoning_tokens=12),
)
CALL = Item(
    "function_call", "fc_1", turn_id="turn_1", call_id="call_1", name="get_weather", status="completed", arguments="{}"
)
MESSAGE = Item("message", "msg_1", turn_id="turn_1", status="completed", role="assistant", text='[{"text":"hi"}]')
CTX = TurnContext(agent_name="Helper", model="gpt-5", items=(MESSAGE, CALL))
PUBLISHED_TRACE = "5b8efff798038103d269b633813fc60c"
PUBLISHED_ROOT = "eee19b7ec3c1b174"


def published(turn_id: str = "turn_1", *, with_root: bool = True) -> SessionTrace:
    spans: list[dict[str, Any]] = [
        {"traceId": PUBLISHED_TRACE, "spanId": "eee19b7ec3c1b173", "parentSpanId": PUBLISHED_ROOT, "name": "tool"}
    ]
    if with_root:
        spans.append({"traceId": PUBLISHED_TRACE, "spanId": PUBLISHED_ROOT, "parentSpanId": "", "name": "turn"})
    otlp = {"resourceSpans": [{"scopeSpans": [{"spans": spans}]}]}
    return SessionTrace(id=turn_id, session_id="sess_1", created_at=100, otlp=otlp)


class TestTurnSpan:
    def test_completed_turn(self) -> None:
        """A completed turn is a CLIENT invoke_agent root span with semconv usage names, a start event and no error."""
        spec = turn_span(TURN, CTX, options=OFF)
        assert (spec.key, spec.name, spec.kind) == ("turn:turn_1", "invoke_agent Helper", "client")
        assert (spec.trace_id, spec.span_id, spec.parent_span_id) == (
            trace_id_for_turn("turn_1"),
            turn_span_id("turn_1"),
            None,
        )
        assert (spec.start_ns, spec.end_ns, spec.error_type) == (100 * S, 130 * S, None)
        assert spec.attributes == {
            "gen_ai.operation.name": "invoke_agent",
            "gen_ai.provider.name": "openai",
            "gen_ai.agent.id": "agent_1",
            "gen_ai.agent.name": "Helper",
            "gen_ai.conversation.id": "sess_1",
            "gen_ai.request.model": "gpt-5",
            "openai.turn.id": "turn_1",
            "openai.turn.status": "completed",
            "gen_ai.usage.input_tokens": 120,
            "gen_ai.usage.output_tokens": 30,
            "gen_ai.usage.cache_read.input_tokens": 100,
            "gen_ai.usage.reasoning.output_tokens": 12,
        }
        assert spec.events[0] == SpanEvent("openai.turn.started", 102 * S)

    def test_failed_turn_is_error_with_code(self) -> None:
        """A failed turn is ERROR with error.type set to its error code (_OTHER without one)."""
        failed = replace(TURN, status="failed", error=TurnError("rate_limit_exceeded", "slow"))
        spec = turn_span(failed, CTX, options=OFF)
        assert spec.error_type == "rate_limit_exceeded"
        assert spec.attributes["error.type"] == "rate_limit_exceeded"
        assert turn_span(replace(failed, error=None), CTX, options=OFF).error_type == "_OTHER"

    def test_cancelled_turn_is_not_an_error(self) -> None:
        """A cancelled turn keeps its status attribute but no error."""
        spec = turn_span(replace(TURN, status="cancelled"), CTX, options=OFF)
        assert spec.error_type is None
        assert "error.type" not in spec.attributes
        assert spec.attributes["openai.turn.status"] == "cancelled"

    def test_unnamed_agent_and_unknown_model(self) -> None:
        """Without a name the span names the agent id; without a model there is no request model attribute."""
        spec = turn_span(TURN, TurnContext(), options=OFF)
        assert spec.name == "invoke_agent agent_1"
        assert "gen_ai.agent.name" not in spec.attributes
        assert "gen_ai.request.model" not in spec.attributes
        assert turn_span(replace(TURN, agent_id="_unknown"), TurnContext(), options=OFF).name == "invoke_agent"

    @pytest.mark.parametrize("status", ["queued", "in_progress", "waiting"])
    def test_open_turn_has_no_span(self, status: str) -> None:
        """A turn that is still going cannot be mapped to a span."""
        with pytest.raises(ValueError, match="not terminal"):
            turn_span(replace(TURN, status=status, completed_at=None), CTX, options=OFF)

    def test_ids_are_deterministic_and_apart_from_runs(self) -> None:
        """The same turn always yields the same ids, and a turn's trace id never equals a run's with the same id."""
        span = turn_span(TURN, CTX, options=OFF)
        assert (span.trace_id, span.span_id) == (trace_id_for_turn("turn_1"), turn_span_id("turn_1"))
        assert trace_id_for_turn("turn_1") == 0x285FD95C2BD6AD9FB324F130DADE33EA
        assert trace_id_for_turn("x") != trace_id_for_run("x")
        assert trace_id_for_turn("turn_1") != trace_id_for_turn("turn_2")


class TestItemEvents:
    def test_items_are_events_not_spans(self) -> None:
        """Each item is one event at the span's end, in API order, with identity and tool attributes only."""
        telemetry = turn_telemetry(TURN, CTX, options=OFF)
        assert len(telemetry.spans) == 1
        events = telemetry.spans[0].events[1:]
        assert [e.name for e in events] == ["openai.turn.item", "openai.turn.item"]
        assert {e.time_ns for e in events} == {130 * S}
        assert events[0].attributes == {
            "openai.item.type": "message",
            "openai.item.index": 0,
            "openai.item.id": "msg_1",
            "openai.item.status": "completed",
            "openai.item.role": "assistant",
        }
        assert events[1].attributes == {
            "openai.item.type": "function_call",
            "openai.item.index": 1,
            "openai.item.id": "fc_1",
            "openai.item.status": "completed",
            "gen_ai.tool.call.id": "call_1",
            "gen_ai.tool.name": "get_weather",
            "gen_ai.tool.type": "function",
        }

    def test_content_only_with_capture(self) -> None:
        """Arguments and message text reach the events only with content capture on, cut to 4,096 characters."""
        long_call = replace(CALL, output="x" * 5000)
        spec = turn_span(TURN, replace(CTX, items=(MESSAGE, long_call)), options=ON)
        message, call = (e.attributes for e in spec.events[1:])
        assert message["openai.item.content"] == '[{"text":"hi"}]'
        assert call["gen_ai.tool.call.arguments"] == "{}"
        assert len(str(call["gen_ai.tool.call.result"])) == 4096
        off = turn_span(TURN, replace(CTX, items=(MESSAGE, long_call)), options=OFF)
        keys = {k for e in off.events for k in e.attributes}
        assert not keys & {"openai.item.content", "gen_ai.tool.call.arguments", "gen_ai.tool.call.result"}

    def test_event_count_is_bounded(self) -> None:
        """Past 128 items the span keeps the first 128 events and says how many it left out."""
        items = tuple(Item("reasoning", f"r{i}") for i in range(MAX_ITEM_EVENTS + 5))
        spec = turn_span(TURN, TurnContext(items=items), options=OFF)
        assert len(spec.events) == 1 + MAX_ITEM_EVENTS
        assert spec.attributes["openai.turn.items_dropped"] == 5

    def test_unknown_item_type_is_an_event(self) -> None:
        """An item type the mapping does not know is still an event with its raw type."""
        spec = turn_span(TURN, TurnContext(items=(Item("hologram_call", "h1"),)), options=OFF)
        assert spec.events[1].attributes == {
            "openai.item.type": "hologram_call",
            "openai.item.index": 0,
            "openai.item.id": "h1",
        }


class TestLinks:
    def test_link_to_published_root_span(self) -> None:
        """A turn links to the root span of the trace the server published for it, and only for it."""
        ctx = replace(CTX, published=published())
        assert turn_links(TURN, ctx) == ((int(PUBLISHED_TRACE, 16), int(PUBLISHED_ROOT, 16)),)
        assert turn_links(TURN, replace(CTX, published=published("turn_9"))) == ()
        assert turn_links(TURN, replace(CTX, published=published(with_root=False))) == ()

    def test_published_root_tolerates_garbage(self) -> None:
        """A payload without a readable root span yields no link instead of an error."""
        for otlp in ({}, {"resourceSpans": "x"}, {"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "zz"}]}]}]}):
            assert published_root(SessionTrace("t", "s", 1, otlp)) is None

    def test_subagent_turn_links_to_its_opener(self) -> None:
        """A subagent turn has its own trace and links to the single root turn that gave its subagent work
        (closing it does not count)."""
        sub = replace(TURN, id="turn_s", subagent_id="sa_1", agent_id="agent_sub")
        root_items = [
            parse_item({"type": "wait_for_subagents_call", "turn_id": "turn_1", "recipient_agent_ids": ["sa_1"]}),
            parse_item({"type": "close_subagent_call", "turn_id": "turn_4", "recipient_agent_id": "sa_1"}),
            parse_item({"type": "send_subagent_input_call", "turn_id": "turn_2", "recipient_agent_id": "sa_2"}),
            parse_item({"type": "create_subagent_call", "turn_id": "turn_3", "agent_id": "agent_1"}),
        ]
        opener = subagent_opener(sub, root_items)
        assert opener == "turn_1"
        spec = turn_span(sub, TurnContext(opened_by=opener), options=OFF)
        assert spec.trace_id == trace_id_for_turn("turn_s")
        assert spec.parent_span_id is None
        assert spec.attributes["openai.subagent.id"] == "sa_1"
        assert turn_links(sub, TurnContext(opened_by=opener)) == (
            (trace_id_for_turn("turn_1"), turn_span_id("turn_1")),
        )

    def test_ambiguous_or_unknown_opener_is_no_link(self) -> None:
        """Two root turns addressing the subagent, or none, give no opener: no link is invented."""
        sub = replace(TURN, id="turn_s", subagent_id="sa_1")
        two = [
            Item("send_subagent_input_call", turn_id="turn_1", recipients=("sa_1",)),
            Item("wait_for_subagents_call", turn_id="turn_2", recipients=("sa_2", "sa_1")),
            Item("close_subagent_call", turn_id="turn_3", recipients=("sa_1",)),
        ]
        assert subagent_opener(sub, two) is None
        assert subagent_opener(sub, []) is None
        assert subagent_opener(TURN, two) is None  # a root turn has no opener
        assert turn_links(TURN, TurnContext(opened_by="turn_0")) == ()


class TestObservations:
    def test_turn_and_items_in_run_step_families(self) -> None:
        """A turn counts once in the run families, its usage once in tokens (with its cached and reasoning parts),
        each item by type and status, each tool call by type and name; every observation is labelled protocol=agents
        with the turn span's exemplar."""
        trace, span = trace_id_for_turn("turn_1"), turn_span_id("turn_1")
        agents = {"protocol": "agents"}
        common = {"model": "gpt-5", "assistant_id": "agent_1", **agents}
        unit = {"gen_ai.operation.name": "invoke_agent", "gen_ai.provider.name": "openai", "gen_ai.agent.id": "agent_1",
                "gen_ai.agent.name": "Helper", "gen_ai.request.model": "gpt-5"}  # fmt: skip
        assert turn_observations(TURN, CTX) == [
            Observation("stepscope_runs_total", {"status": "completed", **common}, 1.0, trace, span, unit),
            Observation("stepscope_run_duration_seconds", {"status": "completed", **agents}, 30.0, trace, span, unit),
            Observation("stepscope_run_queue_seconds", agents, 2.0, trace, span),
            Observation(
                "stepscope_tokens_total",
                {"token_type": "input", "step_type": "turn", **common},
                120.0,
                trace,
                span,
                unit,
            ),
            Observation(
                "stepscope_tokens_total",
                {"token_type": "output", "step_type": "turn", **common},
                30.0,
                trace,
                span,
                unit,
            ),
            Observation(
                "stepscope_tokens_total",
                {"token_type": "cache_read", "step_type": "turn", **common},
                100.0,
                trace,
                span,
                unit,
            ),
            Observation(
                "stepscope_tokens_total",
                {"token_type": "reasoning", "step_type": "turn", **common},
                12.0,
                trace,
                span,
                unit,
            ),
            Observation(
                "stepscope_run_steps_total", {"step_type": "message", "status": "completed", **common}, 1.0, trace, span
            ),
            Observation(
                "stepscope_run_steps_total",
                {"step_type": "function_call", "status": "completed", **common},
                1.0,
                trace,
                span,
            ),
            Observation(
                "stepscope_tool_calls_total",
                {"tool_type": "function", "tool_name": "get_weather", **agents},
                1.0,
                trace,
                span,
            ),
        ]

    @pytest.mark.parametrize(
        ("item_type", "tool_type"),
        [
            ("mcp_call", "extension"),
            ("web_search_call", "extension"),
            ("command_execution", "extension"),
            ("computer_use_call", "extension"),
        ],
    )
    def test_server_side_tool_items(self, item_type: str, tool_type: str) -> None:
        """Server-side tool items count as extension tools named after their name, else their type."""
        obs = turn_observations(TURN, TurnContext(items=(Item(item_type, "i1", status="failed"),)))
        tools = [o.labels for o in obs if o.metric == "stepscope_tool_calls_total"]
        assert tools == [{"tool_type": tool_type, "tool_name": item_type, "protocol": "agents"}]

    def test_statusless_items_and_non_tools(self) -> None:
        """Items without a status count as _unknown; messages, reasoning and subagent calls are not tool calls."""
        items = (
            Item("agent_message", "am"),
            Item("reasoning", "r"),
            Item("create_subagent_call", "c", status="completed"),
        )
        obs = turn_observations(TURN, TurnContext(items=items))
        steps = [(o.labels["step_type"], o.labels["status"]) for o in obs if o.metric == "stepscope_run_steps_total"]
        assert steps == [
            ("agent_message", "_unknown"),
            ("reasoning", "_unknown"),
            ("create_subagent_call", "completed"),
        ]
        assert not [o for o in obs if o.metric == "stepscope_tool_calls_total"]

    def test_subagent_turn_has_no_queue_time(self) -> None:
        """A subagent turn's created_at is its start, so it observes no queue time; its own usage still counts."""
        sub = replace(TURN, subagent_id="sa_1")
        metrics = [o.metric for o in turn_observations(sub, TurnContext())]
        assert "stepscope_run_queue_seconds" not in metrics
        assert metrics.count("stepscope_tokens_total") == 4  # input, output, cache_read, reasoning

    def test_no_usage_no_tokens_no_end_no_duration(self) -> None:
        """A cancelled turn without usage or completed_at adds a count only."""
        bare = replace(TURN, status="cancelled", usage=None, completed_at=None, started_at=None)
        assert [o.metric for o in turn_observations(bare, TurnContext())] == ["stepscope_runs_total"]


@settings(max_examples=200, deadline=None)
@given(
    created=TIMESTAMPS,
    started=TIMESTAMPS,
    completed=TIMESTAMPS,
    status=st.sampled_from(["completed", "failed", "cancelled", "queued", "x_unknown"]),
    tokens=st.integers(min_value=-(10**31), max_value=10**31),
    subagent=st.sampled_from([None, "sa_1"]),
)
def test_any_parsed_turn_maps_to_encodable_spans_and_sane_metrics(
    created: object, started: object, completed: object, status: str, tokens: int, subagent: str | None
) -> None:
    """Whatever times and token counts the server sends, a turn is invalid, still open, or maps to a span with
    0 <= start <= started event <= end < 2^64 ns and to metrics with non-negative durations and at most 10^9 tokens."""
    raw = {
        "id": "turn_1",
        "session_id": "sess_1",
        "agent_id": "agent_1",
        "status": status,
        "created_at": created,
        "started_at": started,
        "completed_at": completed,
        "subagent_id": subagent,
        "usage": {"input_tokens": tokens, "output_tokens": 1, "input_tokens_details": {"cached_tokens": tokens}},
    }
    try:
        turn = parse_turn(raw)
    except InvalidObject:
        return
    if not turn.is_terminal:
        with pytest.raises(ValueError, match="not terminal"):
            turn_span(turn, CTX, options=OFF)
        return
    spec = turn_span(turn, CTX, options=OFF)
    assert 0 <= spec.start_ns <= spec.end_ns < U64
    assert all(spec.start_ns <= e.time_ns <= spec.end_ns for e in spec.events)
    for obs in turn_observations(turn, CTX):
        limit = 10**9 if obs.metric == "stepscope_tokens_total" else 4_102_444_800
        assert 0 <= obs.value <= limit


def test_label_vocabulary_stays_in_step_with_the_agents_models() -> None:
    """The mapping's known turn statuses, item types and tool-call item types are the ones the Agents models define."""
    assert frozenset(agents_vocabulary.TURN_STATUSES) == TURN_TERMINAL
    assert set(agents_vocabulary.ITEM_TYPES) >= TOOL_CALL_ITEM_TYPES | SUBAGENT_CALL_ITEM_TYPES
    assert set(ITEM_TOOL_TYPES) == TOOL_CALL_ITEM_TYPES
    assert all(ITEM_TOOL_TYPES[name] == tool_type for name, tool_type in agents_vocabulary.NAMELESS_ITEM_TOOLS)
