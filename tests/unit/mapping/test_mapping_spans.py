"""Runs and steps as span specs: exact expected output per object kind."""

from __future__ import annotations

from functools import partial

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stepscope.core.records import SpanEvent, SpanSpec
from stepscope.errors import InvalidObject
from stepscope.mapping.attributes import MappingOptions
from stepscope.mapping.ids import span_id_for, trace_id_for_run
from stepscope.protocols.assistants.observations import step_observations
from stepscope.protocols.assistants.records import LastError, ToolCall, Usage, parse_step
from stepscope.protocols.assistants.spans import run_span, run_trace, step_spans
from tests.kit import samples
from tests.kit.strategies import TIMESTAMPS, U64

S = 1_000_000_000
TP = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
OFF = MappingOptions()
ON = MappingOptions(capture_content=True)


make_run = partial(samples.make_run, usage=Usage(50, 7, 57))

make_step = partial(samples.make_step, usage=Usage(20, 3, 23), message_id="msg_1")


TRACE = trace_id_for_run("run_1")
RUN_SPAN = span_id_for("run", "run_1")
STEP_SPAN = span_id_for("step", "step_1")


class TestRunSpan:
    def test_completed_run(self) -> None:
        """A completed run becomes a CLIENT invoke_agent root span with usage, a start event and no error."""
        spec = run_span(make_run(), assistant_name="Helper", options=OFF)
        assert spec == SpanSpec(
            key="run:run_1",
            name="invoke_agent Helper",
            kind="client",
            trace_id=TRACE,
            span_id=RUN_SPAN,
            parent_span_id=None,
            start_ns=100 * S,
            end_ns=130 * S,
            attributes={
                "gen_ai.operation.name": "invoke_agent",
                "gen_ai.provider.name": "openai",
                "gen_ai.agent.id": "asst_1",
                "gen_ai.agent.name": "Helper",
                "gen_ai.conversation.id": "thread_1",
                "gen_ai.request.model": "gpt-4o",
                "openai.run.id": "run_1",
                "openai.run.status": "completed",
                "gen_ai.usage.input_tokens": 50,
                "gen_ai.usage.output_tokens": 7,
            },
            error_type=None,
            parent_remote=False,
            trace_flags=1,
            events=(SpanEvent("openai.run.started", 102 * S),),
        )

    def test_name_falls_back_to_id_then_bare(self) -> None:
        """Without a name the span is named after the assistant id, or bare when even that is unknown."""
        assert run_span(make_run(), assistant_name=None, options=OFF).name == "invoke_agent asst_1"
        unnamed = run_span(make_run(assistant_id="_unknown"), assistant_name=None, options=OFF)
        assert unnamed.name == "invoke_agent"
        assert "gen_ai.agent.name" not in run_span(make_run(), assistant_name=None, options=OFF).attributes

    def test_provider_name_is_an_option(self) -> None:
        """The Azure flavour reports gen_ai.provider.name=azure.ai.agents."""
        spec = run_span(make_run(), assistant_name=None, options=MappingOptions(provider_name="azure.ai.agents"))
        assert spec.attributes["gen_ai.provider.name"] == "azure.ai.agents"

    def test_failed_run(self) -> None:
        """A failed run is an error typed by last_error.code and ends at failed_at."""
        run = make_run(status="failed", completed_at=None, failed_at=120, last_error=LastError("server_error", "x"))
        spec = run_span(run, assistant_name=None, options=OFF)
        assert (spec.error_type, spec.attributes["error.type"], spec.end_ns) == (
            "server_error",
            "server_error",
            120 * S,
        )
        assert spec.attributes["openai.run.status"] == "failed"

    def test_failed_without_error_object(self) -> None:
        """A failed run without last_error reads _OTHER."""
        run = make_run(status="failed", completed_at=None, failed_at=120)
        assert run_span(run, assistant_name=None, options=OFF).error_type == "_OTHER"

    def test_expired_run(self) -> None:
        """An expired run is an error of type expired, ending at expires_at."""
        run = make_run(status="expired", completed_at=None, expires_at=700, usage=None)
        spec = run_span(run, assistant_name=None, options=OFF)
        assert (spec.error_type, spec.end_ns) == ("expired", 700 * S)
        assert "gen_ai.usage.input_tokens" not in spec.attributes

    def test_cancelled_run_is_not_an_error(self) -> None:
        """A cancelled run has no error type."""
        run = make_run(status="cancelled", completed_at=None, cancelled_at=110)
        spec = run_span(run, assistant_name=None, options=OFF)
        assert spec.error_type is None
        assert "error.type" not in spec.attributes
        assert spec.end_ns == 110 * S

    def test_incomplete_run(self) -> None:
        """An incomplete run is an error typed by its incomplete reason (or `incomplete`)."""
        run = make_run(status="incomplete", incomplete_reason="max_completion_tokens")
        assert run_span(run, assistant_name=None, options=OFF).error_type == "max_completion_tokens"
        bare = make_run(status="incomplete")
        assert run_span(bare, assistant_name=None, options=OFF).error_type == "incomplete"

    def test_no_end_means_zero_length(self) -> None:
        """A terminal run without any end timestamp ends at its start; so does one that ends before it starts."""
        run = make_run(status="expired", completed_at=None, expires_at=None, started_at=None)
        spec = run_span(run, assistant_name=None, options=OFF)
        assert (spec.start_ns, spec.end_ns, spec.events) == (100 * S, 100 * S, ())
        skewed = run_span(make_run(completed_at=90), assistant_name=None, options=OFF)
        assert skewed.end_ns == skewed.start_ns == 100 * S

    def test_non_terminal_run_rejected(self) -> None:
        """Mapping a run that is still in progress is a programming error."""
        with pytest.raises(ValueError, match="not terminal"):
            run_span(make_run(status="in_progress"), assistant_name=None, options=OFF)

    def test_traceparent_join(self) -> None:
        """A valid traceparent puts the run span into the application's trace, under the remote span."""
        spec = run_span(make_run(traceparent=TP), assistant_name=None, options=OFF)
        assert spec.trace_id == 0x0AF7651916CD43DD8448EB211C80319C
        assert spec.parent_span_id == 0xB7AD6B7169203331
        assert spec.parent_remote is True
        assert spec.span_id == RUN_SPAN

    def test_invalid_traceparent_ignored(self) -> None:
        """An invalid traceparent is ignored: the run starts its own derived trace."""
        spec = run_span(make_run(traceparent="00-zz-yy-01"), assistant_name=None, options=OFF)
        assert (spec.trace_id, spec.parent_span_id, spec.parent_remote) == (TRACE, None, False)


class TestStepSpans:
    def test_message_creation(self) -> None:
        """A message_creation step is one internal span under the run span, with usage and the message id."""
        assert step_spans(make_run(), make_step(), options=OFF) == [
            SpanSpec(
                key="step:step_1",
                name="run_step message_creation",
                kind="internal",
                trace_id=TRACE,
                span_id=STEP_SPAN,
                parent_span_id=RUN_SPAN,
                start_ns=103 * S,
                end_ns=105 * S,
                attributes={
                    "openai.run_step.id": "step_1",
                    "openai.run_step.type": "message_creation",
                    "openai.run_step.status": "completed",
                    "openai.run.id": "run_1",
                    "gen_ai.conversation.id": "thread_1",
                    "gen_ai.agent.id": "asst_1",
                    "gen_ai.request.model": "gpt-4o",
                    "gen_ai.usage.input_tokens": 20,
                    "gen_ai.usage.output_tokens": 3,
                    "openai.message.id": "msg_1",
                },
            )
        ]

    def test_tool_calls(self) -> None:
        """Each tool call becomes an execute_tool span under the step, typed function/extension/datastore."""
        calls = (
            ToolCall("call_f", "function", name="get_weather", arguments='{"city":"Oslo"}', output="sunny"),
            ToolCall("call_c", "code_interpreter", arguments="print(1)", output="1"),
            ToolCall("call_s", "file_search"),
        )
        step = make_step(type="tool_calls", message_id=None, tool_calls=calls, usage=None)
        specs = step_spans(make_run(), step, options=OFF)
        assert [s.key for s in specs] == [
            "step:step_1",
            "call:step_1:call_f",
            "call:step_1:call_c",
            "call:step_1:call_s",
        ]
        assert specs[0].attributes.get("gen_ai.usage.input_tokens") is None
        assert specs[1] == SpanSpec(
            key="call:step_1:call_f",
            name="execute_tool get_weather",
            kind="internal",
            trace_id=TRACE,
            span_id=span_id_for("call", "step_1", "call_f"),
            parent_span_id=STEP_SPAN,
            start_ns=103 * S,
            end_ns=105 * S,
            attributes={
                "gen_ai.operation.name": "execute_tool",
                "gen_ai.tool.name": "get_weather",
                "gen_ai.tool.type": "function",
                "gen_ai.tool.call.id": "call_f",
            },
        )
        assert [(s.name, s.attributes["gen_ai.tool.type"]) for s in specs[2:]] == [
            ("execute_tool code_interpreter", "extension"),
            ("execute_tool file_search", "datastore"),
        ]
        assert len({s.span_id for s in specs}) == 4

    def test_content_only_when_enabled(self) -> None:
        """Arguments and results appear only with capture_content, truncated to 4096 characters."""
        calls = (ToolCall("call_f", "function", name="f", arguments="a" * 5000, output="ok"),)
        step = make_step(type="tool_calls", tool_calls=calls)
        off = step_spans(make_run(), step, options=OFF)[1].attributes
        assert "gen_ai.tool.call.arguments" not in off
        assert "gen_ai.tool.call.result" not in off
        on = step_spans(make_run(), step, options=ON)[1].attributes
        assert on["gen_ai.tool.call.result"] == "ok"
        assert on["gen_ai.tool.call.arguments"] == "a" * 4095 + "…"

    def test_content_absent_output_not_invented(self) -> None:
        """A call without output gets no result attribute even with capture on."""
        step = make_step(type="tool_calls", tool_calls=(ToolCall("c", "function", name="f", arguments="{}"),))
        attrs = step_spans(make_run(), step, options=ON)[1].attributes
        assert attrs["gen_ai.tool.call.arguments"] == "{}"
        assert "gen_ai.tool.call.result" not in attrs

    def test_failed_step_marks_step_and_tools(self) -> None:
        """A failed step is an error on the step span and its tool spans, typed by last_error.code."""
        step = make_step(
            type="tool_calls",
            status="failed",
            completed_at=None,
            failed_at=106,
            last_error=LastError("rate_limit_exceeded", "slow down"),
            tool_calls=(ToolCall("c", "function", name="f"),),
        )
        specs = step_spans(make_run(), step, options=OFF)
        assert [(s.error_type, s.attributes["error.type"]) for s in specs] == [("rate_limit_exceeded",) * 2] * 2
        assert specs[0].end_ns == 106 * S

    def test_expired_and_cancelled_steps(self) -> None:
        """An expired step is an error of type expired; a cancelled one is not an error."""
        expired = step_spans(make_run(), make_step(status="expired", completed_at=None, expired_at=700), options=OFF)
        assert (expired[0].error_type, expired[0].end_ns) == ("expired", 700 * S)
        cancelled = step_spans(
            make_run(), make_step(status="cancelled", completed_at=None, cancelled_at=104), options=OFF
        )
        assert (cancelled[0].error_type, cancelled[0].end_ns) == (None, 104 * S)

    def test_unknown_types(self) -> None:
        """Azure activities steps still get a span; unknown tools keep their raw type; Azure tools are extensions."""
        calls = (
            ToolCall("c1", "quantum_tool"),
            ToolCall("c2", "mcp", name="search_docs"),
            ToolCall("c3", "bing_grounding"),
        )
        step = make_step(type="activities", message_id=None, tool_calls=calls)
        specs = step_spans(make_run(), step, options=OFF)
        assert specs[0].name == "run_step activities"
        assert [(s.name, s.attributes["gen_ai.tool.name"], s.attributes["gen_ai.tool.type"]) for s in specs[1:]] == [
            ("execute_tool quantum_tool", "quantum_tool", "quantum_tool"),
            ("execute_tool search_docs", "search_docs", "extension"),
            ("execute_tool bing_grounding", "bing_grounding", "extension"),
        ]

    def test_clock_skew_and_open_end(self) -> None:
        """An end before the start is clamped; a step without an end is zero-length."""
        skewed = step_spans(make_run(), make_step(completed_at=90), options=OFF)[0]
        assert skewed.end_ns == skewed.start_ns == 103 * S
        open_step = step_spans(make_run(), make_step(status="in_progress", completed_at=None), options=OFF)[0]
        assert open_step.end_ns == open_step.start_ns

    def test_step_joins_run_traceparent(self) -> None:
        """A step of a run with a traceparent lives in that trace, still under the run span."""
        run = make_run(traceparent=TP, model=None)
        spec = step_spans(run, make_step(), options=OFF)[0]
        assert (spec.trace_id, spec.parent_span_id, spec.parent_remote) == (
            run_trace(run).trace_id,
            RUN_SPAN,
            False,
        )
        assert spec.trace_id == 0x0AF7651916CD43DD8448EB211C80319C
        assert "gen_ai.request.model" not in spec.attributes

    def test_ids_deterministic_across_calls(self) -> None:
        """Mapping the same step twice yields identical specs (same ids), and another step different ids."""
        first = step_spans(make_run(), make_step(), options=OFF)
        assert first == step_spans(make_run(), make_step(), options=OFF)
        other = step_spans(make_run(), make_step(id="step_2"), options=OFF)
        assert other[0].span_id != first[0].span_id


@settings(max_examples=200, deadline=None)
@given(
    created=TIMESTAMPS,
    ends=st.dictionaries(st.sampled_from(["completed_at", "failed_at", "cancelled_at", "expired_at"]), TIMESTAMPS),
    status=st.sampled_from(["completed", "failed", "cancelled", "expired", "x_unknown"]),
    tokens=st.integers(min_value=-(10**31), max_value=10**31),
)
def test_any_parsed_step_maps_to_encodable_spans_and_sane_metrics(
    created: object, ends: dict[str, object], status: str, tokens: int
) -> None:
    """Whatever timestamps and token counts the server sends, a step either is invalid or maps to spans with
    0 <= start <= end < 2^64 ns and to metrics with non-negative durations and at most 10^9 tokens per count."""
    raw = {
        "id": "step_1",
        "object": "thread.run.step",
        "created_at": created,
        "run_id": "run_1",
        "thread_id": "thread_1",
        "type": "tool_calls",
        "status": status,
        "usage": {"prompt_tokens": tokens, "completion_tokens": 1},
        "step_details": {"tool_calls": [{"id": "c", "type": "function", "function": {"name": "f"}}]},
        **ends,
    }
    try:
        step = parse_step(raw)
    except InvalidObject:
        return
    for spec in step_spans(make_run(), step, options=OFF):
        assert 0 <= spec.start_ns <= spec.end_ns < U64
    for obs in step_observations(make_run(), step):
        limit = 10**9 if obs.metric == "stepscope_tokens_total" else 4_102_444_800
        assert 0 <= obs.value <= limit


class TestParsedThenMapped:
    def test_end_before_start_gives_a_zero_length_span_and_duration(self) -> None:
        """A step whose completed_at precedes created_at parses, then maps to a 0 s span and a 0 s duration."""
        step = parse_step(
            {
                "id": "step_1",
                "created_at": 1_780_000_100,
                "completed_at": 1_780_000_040,
                "run_id": "run_1",
                "thread_id": "thread_1",
                "type": "message_creation",
                "status": "completed",
            }
        )
        spec = step_spans(make_run(), step, options=OFF)[0]
        assert spec.end_ns == spec.start_ns == 1_780_000_100 * S
        durations = [o.value for o in step_observations(make_run(), step) if o.metric.endswith("_seconds")]
        assert durations == [0.0]
