"""Tolerant parsers from Agents API JSON to the records of `stepscope.source.agents.models`.

The same rules as `stepscope.models` for Assistants objects: unknown fields are ignored, open enums (statuses,
error codes, item types) are kept as plain strings, missing optional fields become None, and only a missing or
mistyped identity (ids, `created_at`, `status`, an item's `type`) makes an object invalid; the parser then raises
`InvalidObject`, which the client counts and skips. The same bounds too: a timestamp outside [1970-01-01,
2100-01-01) or a token count outside 0..10^9 rejects the whole object, since no span or counter built from it
would be true.

Every item type parses, known or not, into one generic `Item` (type, id, call id, name, status, subagent
references); content (arguments, outputs, errors, message text, commands) is kept only when the caller asks for
it (`content=True`), because it may hold personal data and is exported only with content capture on. Pure
functions: no I/O, no clock.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from stepscope.errors import InvalidObject
from stepscope.models import MAX_TOKENS, Page, timestamp_field
from stepscope.source.agents.models import (
    Agent,
    AgentSession,
    Item,
    SessionTrace,
    Subagent,
    TokenUsage,
    Turn,
    TurnError,
)

MAX_DURATION_MS = 10**9 * 1000
"""A `command_execution.duration_ms` past ~31 years is dropped (None), not trusted."""


def _req_str(obj: Mapping[str, Any], key: str, kind: str, oid: str | None) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not value:
        raise InvalidObject(kind, f"field {key!r} must be a non-empty string", object_id=oid)
    return value


def _opt_str(obj: Mapping[str, Any], key: str) -> str | None:
    value = obj.get(key)
    return value if isinstance(value, str) and value else None


def _int(value: object) -> int | None:
    # bool is an int subclass; True is a malformed number, not 1.
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _tokens(value: object, key: str, kind: str, oid: str | None) -> int | None:
    number = _int(value)
    if number is not None and not 0 <= number <= MAX_TOKENS:
        raise InvalidObject(kind, f"usage {key!r} is outside 0..{MAX_TOKENS}", object_id=oid)
    return number


def parse_usage(value: object, kind: str = "usage", oid: str | None = None) -> TokenUsage | None:
    """`TokenUsage` when both main counts are integers, else None; any count outside 0..10^9 is `InvalidObject`.

    `{"input_tokens": 120, "input_tokens_details": {"cached_tokens": 100}, "output_tokens": 30,
    "output_tokens_details": {"reasoning_tokens": 12}, "total_tokens": 150}` -> `TokenUsage(120, 30, 150, 100, 12)`.
    """
    if not isinstance(value, Mapping):
        return None
    input_tokens = _tokens(value.get("input_tokens"), "input_tokens", kind, oid)
    output_tokens = _tokens(value.get("output_tokens"), "output_tokens", kind, oid)
    in_details = value.get("input_tokens_details")
    out_details = value.get("output_tokens_details")
    cached = (
        _tokens(in_details.get("cached_tokens"), "cached_tokens", kind, oid)
        if isinstance(in_details, Mapping)
        else None
    )
    reasoning = (
        _tokens(out_details.get("reasoning_tokens"), "reasoning_tokens", kind, oid)
        if isinstance(out_details, Mapping)
        else None
    )
    if input_tokens is None or output_tokens is None:
        return None
    total = _int(value.get("total_tokens"))
    if total is None or not 0 <= total <= 2 * MAX_TOKENS:
        total = input_tokens + output_tokens
    return TokenUsage(input_tokens, output_tokens, total, cached, reasoning)


def _object(obj: object, kind: str) -> Mapping[str, Any]:
    if not isinstance(obj, Mapping):
        raise InvalidObject(kind, "not a JSON object")
    return obj


def _object_id(obj: Mapping[str, Any]) -> str | None:
    value = obj.get("id")
    return value if isinstance(value, str) else None


def _text(value: object) -> str | None:
    """Content as text: strings as they are, structured values as JSON (function arguments may be objects)."""
    if value is None:
        return None
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, default=str)


def parse_agent(obj: object) -> Agent:
    """`{"id": "agent_1", "name": "Helper", "model": "gpt-5", ...}` -> `Agent("agent_1", "Helper", "gpt-5")`."""
    o = _object(obj, "agent")
    return Agent(id=_req_str(o, "id", "agent", None), name=_opt_str(o, "name"), model=_opt_str(o, "model"))


def parse_session(obj: object) -> AgentSession:
    """Parse one `agent.session`; its root agent may be an object (`agent.id`) or a bare `agent_id`."""
    kind = "agent_session"
    o = _object(obj, kind)
    sid = _req_str(o, "id", kind, _object_id(o))
    created_at = timestamp_field(o, "created_at", kind, sid, required=True)
    assert created_at is not None
    agent = o.get("agent")
    agent = agent if isinstance(agent, Mapping) else {}
    metadata = o.get("metadata")
    error = o.get("error")
    if isinstance(error, Mapping):  # tolerate an error object where the beta sends a bare message
        error = error.get("message")
    return AgentSession(
        id=sid,
        status=_req_str(o, "status", kind, sid),
        created_at=created_at,
        agent_id=_opt_str(agent, "id") or _opt_str(o, "agent_id") or "_unknown",
        agent_name=_opt_str(agent, "name"),
        model=_opt_str(agent, "model"),
        last_active_at=timestamp_field(o, "last_active_at", kind, sid),
        error=error if isinstance(error, str) else None,
        usage=parse_usage(o.get("usage"), kind, sid),
        metadata={k: v for k, v in metadata.items() if isinstance(k, str) and isinstance(v, str)}
        if isinstance(metadata, Mapping)
        else {},
    )


def parse_turn(obj: object) -> Turn:
    """Parse one `agent.session.turn`; raise `InvalidObject` when its identity is unreadable."""
    kind = "agent_turn"
    o = _object(obj, kind)
    tid = _req_str(o, "id", kind, _object_id(o))
    created_at = timestamp_field(o, "created_at", kind, tid, required=True)
    assert created_at is not None
    error = o.get("error")
    turn_error = None
    if isinstance(error, Mapping):
        code, message = error.get("code"), error.get("message")
        turn_error = TurnError(
            code=code if isinstance(code, str) and code else "_OTHER",
            message=message if isinstance(message, str) else "",
        )
    return Turn(
        id=tid,
        session_id=_req_str(o, "session_id", kind, tid),
        agent_id=_opt_str(o, "agent_id") or "_unknown",
        status=_req_str(o, "status", kind, tid),
        created_at=created_at,
        subagent_id=_opt_str(o, "subagent_id"),
        started_at=timestamp_field(o, "started_at", kind, tid),
        completed_at=timestamp_field(o, "completed_at", kind, tid),
        error=turn_error,
        usage=parse_usage(o.get("usage"), kind, tid),
    )


def parse_item(obj: object, *, content: bool = False) -> Item:
    """Parse one item of any type; only a missing `type` makes it invalid. Content only with `content=True`.

    `{"type": "function_call", "id": "fc_1", "call_id": "call_1", "name": "get_weather", "arguments": "{}",
    "status": "completed", "turn_id": "turn_1"}` -> `Item("function_call", "fc_1", "turn_1", "call_1",
    "get_weather", "completed")` (plus `arguments="{}"` with `content=True`).
    """
    kind = "agent_item"
    o = _object(obj, kind)
    oid = _object_id(o)
    item_type = _req_str(o, "type", kind, oid)
    recipients = o.get("recipient_agent_ids")
    if isinstance(recipients, list):
        to = tuple(r for r in recipients if isinstance(r, str) and r)
    else:
        one = _opt_str(o, "recipient_agent_id")
        to = (one,) if one else ()
    duration = _int(o.get("duration_ms"))
    item = Item(
        type=item_type,
        id=oid or None,
        turn_id=_opt_str(o, "turn_id"),
        call_id=_opt_str(o, "call_id"),
        name=_opt_str(o, "name"),
        status=_opt_str(o, "status"),
        role=_opt_str(o, "role"),
        server_label=_opt_str(o, "server_label"),
        agent_id=_opt_str(o, "agent_id"),
        sender_agent_id=_opt_str(o, "sender_agent_id"),
        recipients=to,
        duration_ms=duration if duration is not None and 0 <= duration <= MAX_DURATION_MS else None,
        exit_code=_int(o.get("exit_code")),
    )
    if not content:
        return item
    return _with_content(item, o)


def _with_content(item: Item, o: Mapping[str, Any]) -> Item:
    output = o.get("output")
    if item.type == "computer_use_call" and isinstance(output, Mapping):
        output = output.get("image_url")
    return replace(
        item,
        arguments=_text(o.get("arguments")),
        output=_text(output),
        error=_text(o.get("error")),
        text=_text(o.get("content", o.get("summary"))),
        command=_opt_str(o, "command"),
    )


def parse_subagent(obj: object) -> Subagent:
    """Parse one `agent.session.subagent`."""
    kind = "agent_subagent"
    o = _object(obj, kind)
    said = _req_str(o, "id", kind, _object_id(o))
    opened_at = timestamp_field(o, "opened_at", kind, said, required=True)
    assert opened_at is not None
    return Subagent(
        id=said,
        session_id=_req_str(o, "session_id", kind, said),
        parent_agent_id=_opt_str(o, "parent_agent_id"),
        status=_req_str(o, "status", kind, said),
        opened_at=opened_at,
        name=_opt_str(o, "name"),
        closed_at=timestamp_field(o, "closed_at", kind, said),
    )


def parse_trace(obj: object) -> SessionTrace:
    """Parse one `agent.session.trace`; `otlp` must be a JSON object and is kept as it came."""
    kind = "agent_trace"
    o = _object(obj, kind)
    tid = _req_str(o, "id", kind, _object_id(o))
    created_at = timestamp_field(o, "created_at", kind, tid, required=True)
    assert created_at is not None
    otlp = o.get("otlp")
    if not isinstance(otlp, Mapping):
        raise InvalidObject(kind, "field 'otlp' must be a JSON object", object_id=tid)
    return SessionTrace(id=tid, session_id=_req_str(o, "session_id", kind, tid), created_at=created_at, otlp=otlp)


def parse_conversation_page(obj: object, kind: str, parse: Any) -> Page:
    """A turn-items page: like `stepscope.models.parse_page`, but the cursor is the body's `last_id`, which the API
    says can differ from the last item's id; the last raw item's id stands in only when `last_id` is absent."""
    if not isinstance(obj, Mapping) or not isinstance(obj.get("data"), list):
        raise InvalidObject("list", f"{kind} list without a 'data' array")
    items: list[Any] = []
    invalid: list[InvalidObject] = []
    for raw in obj["data"]:
        try:
            items.append(parse(raw))
        except InvalidObject as exc:
            invalid.append(exc)
    last_id = obj.get("last_id")
    if not isinstance(last_id, str) or not last_id:
        tail = obj["data"][-1] if obj["data"] else None
        last_id = _object_id(tail) if isinstance(tail, Mapping) else None
    has_more = obj.get("has_more") is True
    if has_more and last_id is None:
        raise InvalidObject("list", f"{kind} list has_more without a readable last id")
    return Page(data=tuple(items), has_more=has_more, last_id=last_id, invalid=tuple(invalid))
