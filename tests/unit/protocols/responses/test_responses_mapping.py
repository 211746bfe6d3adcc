"""The Responses protocol's parsing and mapping: what a response on the wire becomes as spans and metrics."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from stepscope.client.parsing import TokenUsage
from stepscope.errors import InvalidObject
from stepscope.mapping.attributes import MappingOptions
from stepscope.mapping.items import MAX_ITEM_EVENTS
from stepscope.protocols.responses.mapping import (
    ResponseContext,
    ResponsesMapper,
    ResponsesOptions,
    response_observations,
    response_span,
    tool_spans,
)
from stepscope.protocols.responses.parsers import parse_response
from stepscope.protocols.responses.records import AgentReference, Item, Response

S = 1_000_000_000
OPTIONS = ResponsesOptions(mapping=MappingOptions())
FOUNDRY = ResponsesOptions(
    mapping=MappingOptions(provider_name="azure.ai.foundry"),
    project_id="/subscriptions/s/resourceGroups/g/providers/Microsoft.CognitiveServices/accounts/a/projects/p",
)
CALL = Item("function_call", "fc_1", call_id="call_1", name="get_weather", status="completed")
DONE = Response(
    id="resp_1",
    status="completed",
    created_at=100,
    completed_at=104,
    model="gpt-5",
    usage=TokenUsage(50, 7, 57, 10, 2),
    conversation_id="conv_1",
    output=(Item("reasoning", "rs_1"), CALL, Item("message", "msg_1", status="completed", role="assistant")),
)


def wire(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": "resp_1",
        "object": "response",
        "created_at": 100,
        "completed_at": 104,
        "status": "completed",
        "model": "gpt-5",
        "error": None,
        "incomplete_details": None,
        "usage": {
            "input_tokens": 50,
            "input_tokens_details": {"cached_tokens": 10},
            "output_tokens": 7,
            "output_tokens_details": {"reasoning_tokens": 2},
            "total_tokens": 57,
        },
        "conversation": {"id": "conv_1"},
        "previous_response_id": None,
        "background": False,
        "metadata": {},
        "output": [
            {
                "type": "function_call",
                "id": "fc_1",
                "call_id": "call_1",
                "name": "get_weather",
                "arguments": '{"city": "Oslo"}',
                "status": "completed",
            },
        ],
        "a_field_from_the_future": {"x": 1},
    }
    body.update(overrides)
    return body


class TestParsing:
    def test_a_wire_response_parses_with_unknown_fields_ignored(self) -> None:
        """Every field telemetry needs is read; unknown fields are ignored; content stays out without capture."""
        response = parse_response(wire())
        assert response.id == "resp_1" and response.completed_at == 104
        assert response.usage == TokenUsage(50, 7, 57, 10, 2)
        assert response.conversation_id == "conv_1" and response.background is False
        assert response.output == (CALL,)
        assert parse_response(wire(), content=True).output[0].arguments == '{"city": "Oslo"}'

    def test_missing_identity_is_invalid_odd_items_are_kept(self) -> None:
        """No id or created_at makes the response invalid; an item without a type is kept as `_unknown`."""
        with pytest.raises(InvalidObject):
            parse_response(wire(id=None))
        with pytest.raises(InvalidObject):
            parse_response(wire(created_at="yesterday"))
        assert parse_response(wire(output=[{"id": "x"}, 7])).output[0].type == "_unknown"

    def test_failed_incomplete_agent_and_metadata_traceparent(self) -> None:
        """A failed response's code, an incomplete one's reason, Foundry's agent reference and a traceparent in
        metadata are read; a failed response without an error object reads `_OTHER`."""
        failed = parse_response(wire(status="failed", completed_at=None, error={"code": "server_error"}))
        assert failed.error_code == "server_error"
        assert parse_response(wire(status="failed", error=None)).error_code == "_OTHER"
        cut = parse_response(wire(status="incomplete", incomplete_details={"reason": "max_output_tokens"}))
        assert cut.incomplete_reason == "max_output_tokens"
        foundry = parse_response(wire(agent_reference={"type": "agent_reference", "name": "helper", "version": 3}))
        assert foundry.agent == AgentReference("helper", "3")
        tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        assert parse_response(wire(metadata={"traceparent": tp})).traceparent == tp


class TestSpan:
    def test_completed_response_is_a_chat_span_exact_to_the_server(self) -> None:
        """A completed response without an agent is `chat {model}` from created_at to completed_at, with the
        conventions' attributes and no observed-time mark."""
        span = response_span(DONE, ResponseContext(observed_end=999.0), OPTIONS)
        assert span.name == "chat gpt-5" and span.kind == "client"
        assert (span.start_ns, span.end_ns) == (100 * S, 104 * S)
        attrs = span.attributes
        assert attrs["gen_ai.operation.name"] == "chat" and attrs["openai.api.type"] == "responses"
        assert attrs["gen_ai.provider.name"] == "openai"
        assert attrs["gen_ai.response.id"] == "resp_1" and attrs["gen_ai.conversation.id"] == "conv_1"
        assert attrs["gen_ai.request.model"] == attrs["gen_ai.response.model"] == "gpt-5"
        assert attrs["gen_ai.usage.cache_read.input_tokens"] == 10
        assert attrs["gen_ai.usage.reasoning.output_tokens"] == 2
        assert "stepscope.end_time.observed" not in attrs and span.error_type is None
        assert [e.attributes["openai.item.type"] for e in span.events] == ["reasoning", "function_call", "message"]
        assert span.events[1].attributes["gen_ai.tool.name"] == "get_weather"
        assert all(e.time_ns == 104 * S for e in span.events)

    def test_foundry_agent_response_is_invoke_agent_with_the_project(self) -> None:
        """A response with an agent reference is `invoke_agent {name}` with its version, provider
        azure.ai.foundry and the project's resource id."""
        span = response_span(replace(DONE, agent=AgentReference("helper", "3")), ResponseContext(), FOUNDRY)
        assert span.name == "invoke_agent helper"
        assert span.attributes["gen_ai.agent.name"] == "helper" and span.attributes["gen_ai.agent.version"] == "3"
        assert span.attributes["gen_ai.provider.name"] == "azure.ai.foundry"
        assert span.attributes["microsoft.foundry.project.id"] == FOUNDRY.project_id
        assert "openai.api.type" not in span.attributes

    @pytest.mark.parametrize(
        ("status", "fields", "error"),
        [
            ("failed", {"error_code": "rate_limit_exceeded"}, "rate_limit_exceeded"),
            ("incomplete", {"incomplete_reason": "content_filter"}, "content_filter"),
            ("cancelled", {}, None),
        ],
    )
    def test_other_endings_end_at_the_observed_time(self, status: str, fields: dict[str, Any], error: str) -> None:
        """Failed, incomplete and cancelled responses have no server end: the span ends when stepscope saw them
        terminal and says so; failed and incomplete are errors, cancelled is not."""
        response = replace(DONE, status=status, completed_at=None, **fields)
        span = response_span(response, ResponseContext(observed_end=107.25), OPTIONS)
        assert span.end_ns == 107_250_000_000
        assert span.attributes["stepscope.end_time.observed"] is True
        assert span.error_type == error

    def test_traceparent_parents_the_span_and_still_going_is_refused(self) -> None:
        """The request's traceparent makes the span a child in the application's trace; a response still going
        has no span."""
        tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        span = response_span(DONE, ResponseContext(traceparent=tp), OPTIONS)
        assert span.trace_id == 0x0AF7651916CD43DD8448EB211C80319C
        assert span.parent_span_id == 0xB7AD6B7169203331 and span.parent_remote
        assert response_span(DONE, ResponseContext(), OPTIONS).parent_span_id is None
        with pytest.raises(ValueError, match="not terminal"):
            response_span(replace(DONE, status="in_progress"), ResponseContext(), OPTIONS)

    def test_item_events_are_capped_and_content_needs_capture(self) -> None:
        """At most 128 item events, the rest counted on the span; content only with capture on."""
        many = replace(DONE, output=tuple(Item("reasoning", f"rs_{i}") for i in range(MAX_ITEM_EVENTS + 3)))
        span = response_span(many, ResponseContext(), OPTIONS)
        assert len(span.events) == MAX_ITEM_EVENTS and span.attributes["openai.response.items_dropped"] == 3
        loud = replace(DONE, output=(replace(CALL, arguments="{}", output="sunny"),))
        quiet_attrs = response_span(loud, ResponseContext(), OPTIONS).events[0].attributes
        assert "gen_ai.tool.call.arguments" not in quiet_attrs
        captured = ResponsesOptions(mapping=MappingOptions(capture_content=True))
        assert response_span(loud, ResponseContext(), captured).events[0].attributes["gen_ai.tool.call.result"] == (
            "sunny"
        )


class TestToolSpans:
    def test_tool_calls_the_proxy_timed_become_children(self) -> None:
        """Each tool-call item with proxy timings is an `execute_tool` child marked observed; items without
        timings, and items that are no tool calls, have none."""
        timed = {"fc_1": (101 * S, 102 * S + 5), "rs_1": (100 * S, 101 * S)}
        spans = tool_spans(DONE, ResponseContext(tool_times=timed))
        assert [s.name for s in spans] == ["execute_tool get_weather"]
        child = spans[0]
        parent = response_span(DONE, ResponseContext(), OPTIONS)
        assert (child.trace_id, child.parent_span_id) == (parent.trace_id, parent.span_id)
        assert (child.start_ns, child.end_ns) == (101 * S, 102 * S + 5)
        assert child.attributes["stepscope.time.observed"] is True
        assert child.attributes["gen_ai.tool.call.id"] == "call_1"
        assert child.attributes["gen_ai.tool.type"] == "function"
        assert tool_spans(DONE, ResponseContext()) == []


class TestObservations:
    def test_one_response_in_the_shared_families(self) -> None:
        """A completed response counts once in runs with its duration, its usage with both breakdowns, each
        item in run steps and each tool call, all labelled protocol=responses."""
        obs = response_observations(DONE, ResponseContext(), OPTIONS)
        by_metric: dict[str, list[Any]] = {}
        for o in obs:
            by_metric.setdefault(o.metric, []).append(o)
            assert o.labels["protocol"] == "responses"
        assert [o.labels["status"] for o in by_metric["stepscope_runs_total"]] == ["completed"]
        assert by_metric["stepscope_runs_total"][0].labels["assistant_id"] == "_unknown"
        assert [o.value for o in by_metric["stepscope_run_duration_seconds"]] == [4.0]
        tokens = {o.labels["token_type"]: o.value for o in by_metric["stepscope_tokens_total"]}
        assert tokens == {"input": 50, "output": 7, "cache_read": 10, "reasoning": 2}
        assert [o.labels["step_type"] for o in by_metric["stepscope_run_steps_total"]] == [
            "reasoning", "function_call", "message"
        ]  # fmt: skip
        assert [o.labels["tool_name"] for o in by_metric["stepscope_tool_calls_total"]] == ["get_weather"]

    def test_only_completed_responses_have_a_duration(self) -> None:
        """A failed response counts in runs but observes no duration: it has no server end."""
        failed = replace(DONE, status="failed", completed_at=None, error_code="server_error", usage=None)
        metrics = [o.metric for o in response_observations(failed, ResponseContext(observed_end=200.0), OPTIONS)]
        assert metrics.count("stepscope_runs_total") == 1
        assert "stepscope_run_duration_seconds" not in metrics and "stepscope_tokens_total" not in metrics

    def test_mapper_commits_the_span_children_and_observations_together(self) -> None:
        """The mapper's finish gives the response span first, then its timed tool spans, and refuses records."""
        telemetry = ResponsesMapper(OPTIONS).finish(DONE, ResponseContext(tool_times={"fc_1": (101 * S, 103 * S)}))
        assert [s.name for s in telemetry.spans] == ["chat gpt-5", "execute_tool get_weather"]
        assert telemetry.observations
        with pytest.raises(ValueError, match="with their response"):
            ResponsesMapper(OPTIONS).record(DONE, CALL)


def test_observations_carry_the_conventions_attributes_and_proxy_timings() -> None:
    """The response's observations carry its GenAI attributes (operation, provider, agent, model, error type), and
    a tool call the proxy timed its duration, for the OTLP instruments."""
    agent = replace(DONE, agent=AgentReference("helper", "3"), status="failed", error_code="server_error")
    obs = response_observations(agent, ResponseContext(tool_times={"fc_1": (101 * S, 103 * S)}), FOUNDRY)
    runs = next(o for o in obs if o.metric == "stepscope_runs_total")
    assert runs.attributes == {
        "gen_ai.operation.name": "invoke_agent",
        "gen_ai.provider.name": "azure.ai.foundry",
        "gen_ai.agent.name": "helper",
        "gen_ai.request.model": "gpt-5",
        "error.type": "server_error",
    }
    call = next(o for o in obs if o.metric == "stepscope_tool_calls_total")
    assert call.duration_s == 2.0 and call.attributes == {}
    plain = response_observations(DONE, ResponseContext(), OPTIONS)
    assert next(o for o in plain if o.metric == "stepscope_tool_calls_total").duration_s is None
    assert next(o for o in plain if o.metric == "stepscope_runs_total").attributes["gen_ai.operation.name"] == "chat"
