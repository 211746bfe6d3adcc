"""Tolerant parsing of Assistants v2 JSON (OpenAI and Azure shapes) into typed records."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, TypeVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stepscope.client.parsing import parse_page
from stepscope.core.records import UnitRef
from stepscope.errors import InvalidObject
from stepscope.protocols.assistants.records import (
    LastError,
    Run,
    RunStep,
    Usage,
    parse_assistant,
    parse_run,
    parse_step,
    parse_tool_call,
)
from tests.kit.contract import REPO

T = TypeVar("T")
FIXTURES = REPO / "tests" / "fixtures"


def load(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text(encoding="utf-8"))


def step_json(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "id": "step_1",
        "object": "thread.run.step",
        "created_at": 100,
        "run_id": "run_1",
        "thread_id": "thread_1",
        "assistant_id": "asst_1",
        "type": "message_creation",
        "status": "completed",
        "step_details": {"type": "message_creation", "message_creation": {"message_id": "msg_1"}},
    }
    base.update(fields)
    return base


def run_json(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "id": "run_1",
        "object": "thread.run",
        "created_at": 100,
        "thread_id": "thread_1",
        "assistant_id": "asst_1",
        "status": "completed",
    }
    base.update(fields)
    return base


class TestOpenAIPages:
    def test_runs_page(self) -> None:
        """An OpenAI runs page parses every run, ignores unknown fields and keeps the cursor."""
        page = parse_page(load("openai_runs_page.json"), "run", parse_run)
        assert [r.status for r in page.data] == ["in_progress", "requires_action", "completed"]
        assert page.has_more is True
        assert page.last_id == "run_Zc0ODn2N3lE4C0bXqgMhlqHt"
        assert page.invalid == ()
        first, _, last = page.data
        assert first.traceparent == "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        assert first.model == "gpt-4o-2024-08-06"
        assert first.expires_at == 1780000900
        assert first.usage is None
        assert first.ref == UnitRef("thread_7oVq1XTxSD4s2CK3vUv3yHf2", "run_3KVpb7VQbwwFjBdxRBgNr5gK")
        assert last.usage == Usage(1200, 80, 1280)
        assert last.ended_at == 1780000012
        assert last.traceparent is None

    def test_steps_page(self) -> None:
        """Known tool-call shapes parse; unknown statuses stay strings; unreadable items are collected."""
        page = parse_page(load("openai_steps_page.json"), "run_step", parse_step)
        assert [s.id for s in page.data] == [
            "step_DQfPq3JPu8hRKW0ctAraWC9s",
            "step_RmHtNDA4oWQs2GgHqjVSAVtp",
            "step_Wq3Kx5pL0mN8bV2cR7tY1uIo",
            "step_Pz9Ox8Iy7Uv6Tr5Es4Wa3Qb2",
        ]
        assert [e.object_id for e in page.invalid] == [None, "step_Lk8Jh7Gf6Ds5Ap4Oi3Uy2Tr1"]
        assert page.last_id == "step_Lk8Jh7Gf6Ds5Ap4Oi3Uy2Tr1"
        tools, message, failed, odd = page.data
        function, code, search = tools.tool_calls
        assert (function.type, function.name, function.arguments, function.output) == (
            "function",
            "get_weather",
            '{"city": "Paris"}',
            '{"temp_c": 21}',
        )
        assert (code.type, code.arguments, code.output) == ("code_interpreter", "print(2 + 2)", "4\ndone")
        assert (search.type, search.name, search.arguments, search.output) == ("file_search", None, None, None)
        assert tools.usage == Usage(640, 42, 682)
        assert message.message_id == "msg_Y3fNkP9aQwErTyUiOpAsDfGh"
        assert failed.last_error == LastError("server_error", "Something went wrong.")
        assert failed.tool_calls[0].output is None
        assert (failed.is_terminal, failed.ended_at) == (True, 1780000013)
        assert (odd.status, odd.is_terminal, odd.ended_at) == ("paused_for_review", False, None)

    def test_empty_page(self) -> None:
        """An empty page with null cursors has no data, no cursor and no more pages."""
        page = parse_page(load("openai_empty_page.json"), "run_step", parse_step)
        assert (page.data, page.has_more, page.last_id) == ((), False, None)


class TestAzurePages:
    def test_runs_page(self) -> None:
        """Azure runs with open enums, extra fields and a bare envelope parse fully."""
        page = parse_page(load("azure_runs_page.json"), "run", parse_run)
        assert (page.has_more, page.last_id, page.invalid) == (False, "run_y5Z6a7B8c9D0e1F2g3H4i5J6", ())
        incomplete, waiting, failed = page.data
        assert incomplete.incomplete_reason == "content_filter"
        assert incomplete.ended_at == 1780000520
        assert incomplete.expires_at is None
        assert waiting.status == "requires_action"
        assert waiting.is_terminal is False
        assert waiting.ended_at is None
        assert failed.last_error == LastError("tool_user_error", "Connection conn-1 not found.")
        assert failed.ended_at == 1780000310

    def test_steps_page(self) -> None:
        """Azure-only tool calls, the activities step type and missing usage are tolerated."""
        page = parse_page(load("azure_steps_page.json"), "run_step", parse_step)
        assert page.invalid == ()
        assert (page.has_more, page.last_id) == (True, "step_Az0000000000000000000003")
        tools, activities, open_step = page.data
        calls = {c.type: c for c in tools.tool_calls}
        assert list(calls) == ["bing_grounding", "mcp", "connected_agent", "function", "azure_ai_search"]
        assert (calls["mcp"].name, calls["mcp"].arguments, calls["mcp"].output) == (
            "search_docs",
            '{"q": "otel"}',
            "3 results",
        )
        assert (calls["connected_agent"].name, calls["connected_agent"].output) == ("researcher", "summary")
        assert calls["function"].output is None
        assert calls["bing_grounding"].name is None
        assert (calls["azure_ai_search"].arguments, calls["azure_ai_search"].output) == ("query text", "hits")
        assert tools.usage is None
        assert (activities.type, activities.tool_calls, activities.ended_at) == ("activities", (), 1780000507)
        assert open_step.assistant_id == "_unknown"
        assert open_step.message_id == "msg_Az00000000000000000001"


class TestStepFields:
    @pytest.mark.parametrize(
        ("status", "field", "ended"),
        [("completed", "completed_at", 5), ("failed", "failed_at", 5), ("cancelled", "cancelled_at", 5)],
    )
    def test_ended_at_follows_status(self, status: str, field: str, ended: int) -> None:
        """The terminal timestamp matching the status is the end."""
        step = parse_step(step_json(status=status, **{field: ended}))
        assert (step.is_terminal, step.ended_at) == (True, ended)

    def test_expired_step(self) -> None:
        """An expired step ends at `expired_at`."""
        step = parse_step(step_json(status="expired", expired_at=9))
        assert step.ended_at == 9

    def test_unknown_status_with_end_is_terminal(self) -> None:
        """An unknown status with a terminal timestamp counts as terminal and ends there."""
        step = parse_step(step_json(status="skipped", cancelled_at=7))
        assert (step.is_terminal, step.ended_at) == (True, 7)

    def test_terminal_without_timestamp(self) -> None:
        """A completed step without timestamps is terminal but has no end."""
        step = parse_step(step_json())
        assert (step.is_terminal, step.ended_at) == (True, None)

    def test_in_progress_is_not_terminal(self) -> None:
        """An in-progress step is never terminal, even with a stray timestamp."""
        assert parse_step(step_json(status="in_progress", completed_at=5)).is_terminal is False

    def test_float_timestamp_truncates(self) -> None:
        """A float timestamp becomes whole seconds."""
        assert parse_step(step_json(created_at=100.9)).created_at == 100

    @pytest.mark.parametrize("value", [True, "100", None, [], float("inf"), float("nan")])
    def test_bad_created_at_is_invalid(self, value: object) -> None:
        """A missing, boolean, textual or non-finite `created_at` makes the step invalid."""
        with pytest.raises(InvalidObject, match="created_at"):
            parse_step(step_json(created_at=value))

    def test_bad_optional_timestamp_is_none(self) -> None:
        """A mistyped optional timestamp is dropped rather than rejecting the step."""
        step = parse_step(step_json(completed_at="soon", failed_at=True, expired_at=float("inf")))
        assert (step.completed_at, step.failed_at, step.expired_at) == (None, None, None)

    @pytest.mark.parametrize("field", ["id", "run_id", "thread_id", "type", "status"])
    def test_missing_identity_is_invalid(self, field: str) -> None:
        """A missing id, parent id, type or status makes the step invalid, naming the field."""
        obj = step_json()
        del obj[field]
        with pytest.raises(InvalidObject, match=field) as info:
            parse_step(obj)
        assert info.value.kind == "run_step"

    def test_agent_id_stands_in(self) -> None:
        """Azure SDK-style `agent_id` is used when `assistant_id` is absent."""
        obj = step_json(agent_id="asst_agent")
        del obj["assistant_id"]
        assert parse_step(obj).assistant_id == "asst_agent"

    def test_not_an_object(self) -> None:
        """A non-object item is invalid."""
        with pytest.raises(InvalidObject, match="not a JSON object"):
            parse_step(["step_1"])

    @pytest.mark.parametrize(
        ("usage", "expected"),
        [
            ({"prompt_tokens": 3, "completion_tokens": 4}, Usage(3, 4, 7)),
            ({"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": True}, Usage(3, 4, 7)),
            ({"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 10**30}, Usage(3, 4, 7)),
            ({"prompt_tokens": 10**9, "completion_tokens": 0}, Usage(10**9, 0, 10**9)),
            ({"prompt_tokens": "3", "completion_tokens": 4}, None),
            ({"prompt_tokens": 3.0, "completion_tokens": 4}, None),
            ("lots", None),
        ],
    )
    def test_usage(self, usage: object, expected: Usage | None) -> None:
        """Usage needs integer token counts (else it is dropped); a missing or absurd total is their sum."""
        assert parse_step(step_json(usage=usage)).usage == expected

    @pytest.mark.parametrize(
        "usage",
        [
            {"prompt_tokens": 10**30, "completion_tokens": 4},
            {"prompt_tokens": 3, "completion_tokens": 10**9 + 1},
            {"prompt_tokens": -1, "completion_tokens": 4, "total_tokens": 3},
        ],
    )
    def test_absurd_token_count_is_invalid(self, usage: object) -> None:
        """A token count outside 0..10^9 makes the step invalid, so it is counted and skipped, never summed."""
        with pytest.raises(InvalidObject, match="usage") as raised:
            parse_step(step_json(usage=usage))
        assert (raised.value.kind, raised.value.object_id) == ("run_step", "step_1")

    @pytest.mark.parametrize("field", ["created_at", "completed_at", "failed_at", "cancelled_at", "expired_at"])
    @pytest.mark.parametrize("value", [10**12, -1, 4_102_444_800, 1e300, -1.5])
    def test_out_of_range_timestamp_is_invalid(self, field: str, value: float) -> None:
        """Any step timestamp before 1970 or from 2100 on makes the step invalid, naming the field."""
        with pytest.raises(InvalidObject, match=field) as raised:
            parse_step(step_json(**{field: value}))
        assert raised.value.kind == "run_step"

    def test_timestamp_bounds_are_inclusive_below_exclusive_above(self) -> None:
        """0 and 2099-12-31T23:59:59Z are accepted timestamps."""
        step = parse_step(step_json(created_at=0, completed_at=4_102_444_799))
        assert (step.created_at, step.ended_at) == (0, 4_102_444_799)

    def test_end_before_start_is_kept_for_mapping_to_clamp(self) -> None:
        """A terminal timestamp before `created_at` parses; mapping clamps it (see test_mapping_spans)."""
        step = parse_step(step_json(created_at=1_780_000_100, completed_at=1_780_000_000))
        assert step.ended_at == 1_780_000_000

    def test_bad_step_in_page_spares_its_siblings(self) -> None:
        """One step with an absurd timestamp or token count is set aside; the sane steps of its page parse."""
        bad_time = step_json(id="step_bad_time", created_at=10**12)
        bad_usage = step_json(id="step_bad_usage", usage={"prompt_tokens": 10**30, "completion_tokens": 1})
        page = parse_page(
            {"data": [step_json(id="step_a"), bad_time, bad_usage, step_json(id="step_b")], "has_more": False},
            "run_step",
            parse_step,
        )
        assert [s.id for s in page.data] == ["step_a", "step_b"]
        assert [e.object_id for e in page.invalid] == ["step_bad_time", "step_bad_usage"]
        assert page.last_id == "step_b"

    def test_last_error_defaults(self) -> None:
        """A `last_error` without code or message keeps an `_OTHER` code and an empty message."""
        assert parse_step(step_json(last_error={"code": None})).last_error == LastError("_OTHER", "")
        assert parse_step(step_json(last_error="boom")).last_error is None

    def test_odd_step_details(self) -> None:
        """Missing or mistyped `step_details` leave no message id and no tool calls."""
        step = parse_step(step_json(step_details="x"))
        assert (step.message_id, step.tool_calls) == (None, ())
        step = parse_step(step_json(step_details={"message_creation": "msg_1"}))
        assert step.message_id is None


class TestToolCalls:
    def test_bad_tool_call_invalidates_step(self) -> None:
        """A tool call without an id makes its step invalid, reported under the step's id."""
        obj = step_json(type="tool_calls", step_details={"tool_calls": [{"type": "function"}]})
        with pytest.raises(InvalidObject) as info:
            parse_step(obj)
        assert info.value.object_id == "step_1"

    def test_non_object_tool_call(self) -> None:
        """A tool call that is not an object is invalid."""
        with pytest.raises(InvalidObject, match="not a JSON object"):
            parse_tool_call("call_1", step_id="step_1")

    def test_structured_arguments_become_json(self) -> None:
        """Arguments sent as a JSON object (not text) are kept as JSON text."""
        call = parse_tool_call({"id": "c", "type": "openapi", "openapi": {"arguments": {"a": 1}, "output": 5}})
        assert (call.arguments, call.output) == ('{"a": 1}', "5")

    def test_code_interpreter_without_logs(self) -> None:
        """A code interpreter call with only image outputs (or unreadable outputs) has no output text."""
        image = {"input": "x", "outputs": [{"type": "image", "image": {"file_id": "f"}}]}
        assert parse_tool_call({"id": "c", "type": "code_interpreter", "code_interpreter": image}).output is None
        odd = {"input": "x", "outputs": 5}
        assert parse_tool_call({"id": "c", "type": "code_interpreter", "code_interpreter": odd}).output is None

    def test_body_not_an_object(self) -> None:
        """A tool call whose body is not an object keeps only its id and type."""
        call = parse_tool_call({"id": "c", "type": "mcp", "mcp": "oops"})
        assert (call.name, call.arguments, call.output) == (None, None, None)


class TestRunFields:
    @pytest.mark.parametrize(
        ("fields", "ended"),
        [
            ({"status": "completed", "completed_at": 5}, 5),
            ({"status": "failed", "failed_at": 6}, 6),
            ({"status": "cancelled", "cancelled_at": 7}, 7),
            ({"status": "expired", "expires_at": 8}, 8),
            ({"status": "incomplete", "failed_at": 9}, 9),
            ({"status": "completed", "failed_at": 4}, 4),
            ({"status": "completed"}, None),
            ({"status": "in_progress", "completed_at": 3}, None),
            ({"status": "queued"}, None),
        ],
    )
    def test_ended_at(self, fields: dict[str, Any], ended: int | None) -> None:
        """A run's end is the status's own timestamp, else the first present on a terminal run."""
        assert parse_run(run_json(**fields)).ended_at == ended

    @pytest.mark.parametrize(
        "fields",
        [
            {"created_at": -5},
            {"started_at": 10**12},
            {"expires_at": 10**12},
            {"completed_at": -1},
            {"usage": {"prompt_tokens": 10**30, "completion_tokens": 1}},
        ],
    )
    def test_absurd_numbers_make_a_run_invalid(self, fields: dict[str, Any]) -> None:
        """A run timestamp outside 1970..2100 or a token count past 10^9 makes the run invalid."""
        with pytest.raises(InvalidObject, match="run_1"):
            parse_run(run_json(**fields))

    def test_missing_identity_is_invalid(self) -> None:
        """A run without a thread id is invalid, naming the run."""
        obj = run_json()
        del obj["thread_id"]
        with pytest.raises(InvalidObject, match="run_1"):
            parse_run(obj)

    def test_not_an_object(self) -> None:
        """A non-object run is invalid."""
        with pytest.raises(InvalidObject):
            parse_run(None)

    def test_odd_metadata(self) -> None:
        """A non-string traceparent or non-object metadata is ignored."""
        assert parse_run(run_json(metadata={"traceparent": 5})).traceparent is None
        assert parse_run(run_json(metadata=["x"])).traceparent is None

    def test_agent_id_and_unknown_assistant(self) -> None:
        """`agent_id` stands in for `assistant_id`, and a run with neither gets `_unknown`."""
        obj = run_json(agent_id="asst_a")
        del obj["assistant_id"]
        assert parse_run(obj).assistant_id == "asst_a"
        del obj["agent_id"]
        assert parse_run(obj).assistant_id == "_unknown"


class TestAssistantAndPage:
    def test_assistant(self) -> None:
        """An assistant keeps its id, name and model; other fields are ignored."""
        parsed = parse_assistant({"id": "asst_1", "name": "helper", "model": "gpt-4o", "tools": []})
        assert (parsed.id, parsed.name, parsed.model) == ("asst_1", "helper", "gpt-4o")
        assert parse_assistant({"id": "asst_2", "name": None}).name is None

    def test_assistant_invalid(self) -> None:
        """An assistant without an id, or not an object, is invalid."""
        with pytest.raises(InvalidObject):
            parse_assistant({"name": "x"})
        with pytest.raises(InvalidObject):
            parse_assistant("asst_1")

    @pytest.mark.parametrize("body", [None, {"data": "x"}, {"object": "list"}, []])
    def test_envelope_without_data(self, body: object) -> None:
        """A list body without a `data` array is an invalid list."""
        with pytest.raises(InvalidObject) as info:
            parse_page(body, "run", parse_run)
        assert info.value.kind == "list"

    def test_has_more_without_cursor(self) -> None:
        """`has_more` with an id-less last item cannot be paged and is invalid."""
        with pytest.raises(InvalidObject, match="last id"):
            parse_page({"data": [{"x": 1}], "has_more": True}, "run", parse_run)

    def test_numeric_last_id_is_no_cursor(self) -> None:
        """A last item whose id is not a string gives no cursor (and is itself invalid)."""
        page = parse_page({"data": [{"id": 5}], "has_more": False}, "run", parse_run)
        assert (page.last_id, len(page.invalid)) == (None, 1)
        assert parse_page({"data": ["run_1"], "has_more": False}, "run", parse_run).last_id is None

    def test_has_more_must_be_true(self) -> None:
        """Only a literal `true` means more pages."""
        assert parse_page({"data": [], "has_more": "yes"}, "run", parse_run).has_more is False


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)


def parse_or_error(parse: Callable[[object], T], obj: object) -> T | InvalidObject:
    """The parsed record, or the InvalidObject raised; any other exception propagates and fails the test."""
    try:
        return parse(obj)
    except InvalidObject as exc:
        return exc


STEP_KEYS = st.sampled_from([*step_json(), "usage", "last_error", "completed_at", "tool_calls"])


@settings(max_examples=150, deadline=None)
@given(updates=st.dictionaries(STEP_KEYS, JSON, max_size=5), details=JSON)
def test_fuzzed_steps_parse_or_are_invalid(updates: dict[str, Any], details: Any) -> None:
    """Any JSON in any step field yields a RunStep or InvalidObject, never another exception."""
    obj = step_json(type="tool_calls", step_details={"tool_calls": [{"id": "c", "type": "x", "x": details}]})
    obj.update(updates)
    result = parse_or_error(parse_step, obj)
    assert isinstance(result, RunStep) or result.kind in {"run_step", "tool_call"}


@settings(max_examples=100, deadline=None)
@given(updates=st.dictionaries(st.sampled_from([*run_json(), "usage", "metadata", "incomplete_details"]), JSON))
def test_fuzzed_runs_parse_or_are_invalid(updates: dict[str, Any]) -> None:
    """Any JSON in any run field yields a Run or InvalidObject, never another exception."""
    obj = run_json()
    obj.update(updates)
    result = parse_or_error(parse_run, obj)
    assert isinstance(result, Run) or result.kind == "run"


@settings(max_examples=100, deadline=None)
@given(outputs=JSON)
def test_fuzzed_code_interpreter_outputs(outputs: Any) -> None:
    """Any JSON as code interpreter outputs parses without raising."""
    call = parse_tool_call({"id": "c", "type": "code_interpreter", "code_interpreter": {"outputs": outputs}})
    assert call.output is None or isinstance(call.output, str)
