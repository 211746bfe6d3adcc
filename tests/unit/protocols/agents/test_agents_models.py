"""Agents API records: tolerant parsing of sessions, turns, items, traces and agents, with the same bounds as runs."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from stepscope.client.parsing import TokenUsage, parse_page, parse_usage
from stepscope.errors import InvalidObject
from stepscope.protocols.agents.parsers import (
    parse_agent,
    parse_item,
    parse_session,
    parse_subagent,
    parse_trace,
    parse_turn,
)
from stepscope.protocols.agents.records import Agent, TurnError

USAGE = {
    "input_tokens": 120,
    "input_tokens_details": {"cached_tokens": 100},
    "output_tokens": 30,
    "output_tokens_details": {"reasoning_tokens": 12},
    "total_tokens": 150,
}


def turn_obj(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "id": "turn_1",
        "object": "agent.session.turn",
        "session_id": "sess_1",
        "agent_id": "agent_1",
        "status": "completed",
        "created_at": 1_780_000_000,
        "started_at": 1_780_000_002,
        "completed_at": 1_780_000_030,
        "error": None,
        "usage": USAGE,
    }
    base.update(fields)
    return base


class TestTurn:
    def test_full_turn(self) -> None:
        """Every field the SDK's Turn defines is read, usage details included."""
        turn = parse_turn(turn_obj(subagent_id="sa_1"))
        assert (turn.id, turn.session_id, turn.agent_id, turn.subagent_id) == ("turn_1", "sess_1", "agent_1", "sa_1")
        assert (turn.created_at, turn.started_at, turn.completed_at) == (1_780_000_000, 1_780_000_002, 1_780_000_030)
        assert turn.usage == TokenUsage(120, 30, 150, cached_tokens=100, reasoning_tokens=12)
        assert turn.is_terminal
        assert turn.ended_at == 1_780_000_030

    def test_failed_turn_error(self) -> None:
        """A failed turn keeps its error code and message; an error without a code reads _OTHER."""
        turn = parse_turn(turn_obj(status="failed", error={"code": "rate_limit_exceeded", "message": "slow"}))
        assert turn.error == TurnError("rate_limit_exceeded", "slow")
        assert parse_turn(turn_obj(status="failed", error={"message": "x"})).error == TurnError("_OTHER", "x")

    @pytest.mark.parametrize(("status", "terminal"), [("queued", False), ("waiting", False), ("cancelled", True)])
    def test_known_statuses(self, status: str, terminal: bool) -> None:
        """Terminal means completed, failed or cancelled; queued and waiting turns have no end yet."""
        turn = parse_turn(turn_obj(status=status, completed_at=None))
        assert turn.is_terminal is terminal
        assert turn.ended_at is None

    def test_unknown_status_kept(self) -> None:
        """An unknown status is kept as a string and counts as terminal only with completed_at."""
        assert parse_turn(turn_obj(status="paused")).is_terminal
        open_turn = parse_turn(turn_obj(status="paused", completed_at=None))
        assert open_turn.status == "paused"
        assert not open_turn.is_terminal

    @pytest.mark.parametrize(
        ("field", "value"),
        [
            ("id", None),
            ("session_id", ""),
            ("status", 3),
            ("created_at", "yesterday"),
            ("created_at", True),
            ("created_at", -1),
            ("completed_at", 4_102_444_800),
            ("started_at", 10**12),
        ],
    )
    def test_bad_identity_or_time_is_invalid(self, field: str, value: object) -> None:
        """A missing id, status or session, or a timestamp outside [1970, 2100), rejects the turn."""
        with pytest.raises(InvalidObject) as info:
            parse_turn(turn_obj(**{field: value}))
        assert info.value.kind == "agent_turn"

    @pytest.mark.parametrize(
        "usage",
        [
            {**USAGE, "input_tokens": 10**9 + 1},
            {**USAGE, "output_tokens": -1},
            {**USAGE, "input_tokens_details": {"cached_tokens": 10**10}},
            {**USAGE, "output_tokens_details": {"reasoning_tokens": -5}},
        ],
    )
    def test_token_counts_out_of_bounds_are_invalid(self, usage: dict[str, Any]) -> None:
        """Any token count outside 0..10^9 rejects the whole turn."""
        with pytest.raises(InvalidObject, match=r"outside 0\.\.1000000000"):
            parse_turn(turn_obj(usage=usage))

    def test_usage_tolerance(self) -> None:
        """Usage without counts is None; without details the details are None; a bad total is recomputed."""
        assert parse_usage({"input_tokens": "many"}) is None
        assert parse_usage(None) is None
        bare = parse_usage({"input_tokens": 5, "output_tokens": 2, "total_tokens": True})
        assert bare == TokenUsage(5, 2, 7, None, None)


class TestItems:
    def test_function_call_without_content(self) -> None:
        """A function call keeps its identity, call id, name and status; arguments stay out by default."""
        raw = {
            "type": "function_call",
            "id": "fc_1",
            "call_id": "call_1",
            "name": "get_weather",
            "arguments": {"city": "Oslo"},
            "status": "completed",
            "turn_id": "turn_1",
        }
        item = parse_item(raw)
        assert (item.type, item.id, item.call_id, item.name, item.status, item.turn_id) == (
            "function_call",
            "fc_1",
            "call_1",
            "get_weather",
            "completed",
            "turn_1",
        )
        assert item.is_tool_call
        assert item.arguments is None
        assert parse_item(raw, content=True).arguments == '{"city": "Oslo"}'

    def test_content_kept_only_on_request(self) -> None:
        """Outputs, errors, message text and commands are read only with content=True."""
        command = {
            "type": "command_execution",
            "id": "ce_1",
            "command": "ls -la",
            "output": "total 0",
            "duration_ms": 1250,
            "exit_code": 0,
            "status": "completed",
        }
        plain = parse_item(command)
        assert (plain.command, plain.output, plain.duration_ms, plain.exit_code) == (None, None, 1250, 0)
        full = parse_item(command, content=True)
        assert (full.command, full.output) == ("ls -la", "total 0")
        message = parse_item({"type": "message", "id": None, "role": "user", "content": [{"text": "hi"}]}, content=True)
        assert message.id is None
        assert message.role == "user"
        assert message.text == '[{"text": "hi"}]'

    def test_unknown_item_type_is_generic(self) -> None:
        """An item type the SDK does not define parses into a generic item with what it has."""
        item = parse_item({"type": "hologram_call", "id": "h_1", "status": "weird", "extra": [1, 2]})
        assert (item.type, item.id, item.status, item.is_tool_call) == ("hologram_call", "h_1", "weird", False)

    def test_subagent_references(self) -> None:
        """Subagent calls keep their sender and recipients, one or many."""
        one = parse_item({"type": "send_subagent_input_call", "sender_agent_id": "a", "recipient_agent_id": "sa_1"})
        many = parse_item({"type": "wait_for_subagents_call", "recipient_agent_ids": ["sa_1", 3, "sa_2"]})
        assert (one.sender_agent_id, one.recipients) == ("a", ("sa_1",))
        assert many.recipients == ("sa_1", "sa_2")

    def test_item_without_type_is_invalid(self) -> None:
        """Only a missing type makes an item invalid."""
        with pytest.raises(InvalidObject):
            parse_item({"id": "x"})
        with pytest.raises(InvalidObject):
            parse_item(["not", "an", "object"])

    def test_absurd_duration_dropped(self) -> None:
        """A negative or absurd command duration is not trusted (None), the item still parses."""
        assert parse_item({"type": "command_execution", "duration_ms": -3}).duration_ms is None
        assert parse_item({"type": "command_execution", "duration_ms": 10**20}).duration_ms is None


class TestSessionTraceAgent:
    def test_session(self) -> None:
        """A session reads its root agent, status, activity time, message-only error, usage and string metadata."""
        session = parse_session(
            {
                "id": "sess_1",
                "object": "agent.session",
                "agent": {"id": "agent_1", "name": "Helper", "model": "gpt-5"},
                "created_at": 1_780_000_000,
                "last_active_at": 1_780_000_100,
                "status": "requires_action",
                "error": "boom",
                "usage": USAGE,
                "metadata": {"team": "a", "n": 3},
            }
        )
        assert (session.agent_id, session.agent_name, session.model) == ("agent_1", "Helper", "gpt-5")
        assert session.is_active
        assert session.error == "boom"
        assert session.metadata == {"team": "a"}
        with pytest.raises(InvalidObject):
            parse_session({"id": "sess_1", "status": "idle", "created_at": 5_000_000_000})

    def test_trace_keeps_payload_untouched(self) -> None:
        """A trace's OTLP payload is the very object received, not a copy or a rewrite."""
        otlp: dict[str, Any] = {"resourceSpans": [{"resource": {}, "scopeSpans": []}]}
        raw = {"id": "turn_1", "session_id": "sess_1", "created_at": 1_780_000_000, "otlp": otlp}
        before = copy.deepcopy(raw)
        trace = parse_trace(raw)
        assert trace.otlp is otlp
        assert raw == before
        with pytest.raises(InvalidObject, match="otlp"):
            parse_trace({**raw, "otlp": "[]"})

    def test_agent_and_subagent(self) -> None:
        """Agents keep id, name and model; subagents their parent, status and times."""
        assert parse_agent({"id": "agent_1", "name": None, "model": "gpt-5"}) == Agent("agent_1", None, "gpt-5")
        sub = parse_subagent(
            {"id": "sa_1", "session_id": "s", "parent_agent_id": "agent_1", "status": "closed", "opened_at": 5}
        )
        assert (sub.parent_agent_id, sub.status, sub.opened_at, sub.closed_at) == ("agent_1", "closed", 5, None)


class TestConversationPage:
    def test_cursor_is_body_last_id(self) -> None:
        """Turn-item pages page on the body's last_id, which may differ from the last item's id."""
        body = {"data": [{"type": "message", "id": "m1"}, {"type": "reasoning", "id": "r1"}], "last_id": "cur_9"}
        page = parse_page({**body, "has_more": True}, "agent_item", parse_item, body_cursor=True)
        assert page.last_id == "cur_9"
        assert [i.id for i in page.data] == ["m1", "r1"]

    def test_invalid_items_collected_not_raised(self) -> None:
        """A bad item is skipped into the page's invalid list; a has_more without any cursor is a bad list."""
        page = parse_page({"data": [{"id": "x"}, {"type": "message"}]}, "agent_item", parse_item, body_cursor=True)
        assert len(page.data) == 1
        assert len(page.invalid) == 1
        with pytest.raises(InvalidObject):
            parse_page({"data": [{"type": "message"}], "has_more": True}, "agent_item", parse_item, body_cursor=True)
