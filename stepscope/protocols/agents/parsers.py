"""Tolerant parsers from Agents API JSON to the records of `stepscope.protocols.agents.records`.

The rules of the tolerant-parsing kit (`stepscope.client.parsing`): unknown fields are ignored, open enums (statuses,
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

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from stepscope.client.parsing import (
    as_object,
    as_text,
    created_at,
    integer,
    nested_deeper_than,
    object_id,
    optional_str,
    parse_usage,
    required_str,
    timestamp_field,
)
from stepscope.errors import InvalidObject
from stepscope.protocols.agents.records import (
    Agent,
    AgentSession,
    Item,
    SessionTrace,
    Subagent,
    Turn,
    TurnError,
)

MAX_TRACE_DEPTH = 32
"""Levels of nesting a published OTLP JSON trace may have: spans, events and attributes take about 12; a deeper
one is refused (its turn is committed without it) rather than risk the encoders' recursion limits."""
MAX_DURATION_MS = 10**9 * 1000
"""A `command_execution.duration_ms` past ~31 years is dropped (None), not trusted."""


def parse_agent(obj: object) -> Agent:
    """`{"id": "agent_1", "name": "Helper", "model": "gpt-5", ...}` -> `Agent("agent_1", "Helper", "gpt-5")`."""
    o = as_object(obj, "agent")
    return Agent(id=required_str(o, "id", "agent", None), name=optional_str(o, "name"), model=optional_str(o, "model"))


def parse_session(obj: object) -> AgentSession:
    """Parse one `agent.session`; its root agent may be an object (`agent.id`) or a bare `agent_id`."""
    kind = "agent_session"
    o = as_object(obj, kind)
    sid = required_str(o, "id", kind, object_id(o))
    created = created_at(o, kind, sid)
    agent = o.get("agent")
    agent = agent if isinstance(agent, Mapping) else {}
    metadata = o.get("metadata")
    error = o.get("error")
    if isinstance(error, Mapping):  # tolerate an error object where the beta sends a bare message
        error = error.get("message")
    return AgentSession(
        id=sid,
        status=required_str(o, "status", kind, sid),
        created_at=created,
        agent_id=optional_str(agent, "id") or optional_str(o, "agent_id") or "_unknown",
        agent_name=optional_str(agent, "name"),
        model=optional_str(agent, "model"),
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
    o = as_object(obj, kind)
    tid = required_str(o, "id", kind, object_id(o))
    created = created_at(o, kind, tid)
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
        session_id=required_str(o, "session_id", kind, tid),
        agent_id=optional_str(o, "agent_id") or "_unknown",
        status=required_str(o, "status", kind, tid),
        created_at=created,
        subagent_id=optional_str(o, "subagent_id"),
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
    o = as_object(obj, kind)
    oid = object_id(o)
    item_type = required_str(o, "type", kind, oid)
    recipients = o.get("recipient_agent_ids")
    if isinstance(recipients, list):
        to = tuple(r for r in recipients if isinstance(r, str) and r)
    else:
        one = optional_str(o, "recipient_agent_id")
        to = (one,) if one else ()
    duration = integer(o.get("duration_ms"))
    item = Item(
        type=item_type,
        id=oid or None,
        turn_id=optional_str(o, "turn_id"),
        call_id=optional_str(o, "call_id"),
        name=optional_str(o, "name"),
        status=optional_str(o, "status"),
        role=optional_str(o, "role"),
        server_label=optional_str(o, "server_label"),
        agent_id=optional_str(o, "agent_id"),
        sender_agent_id=optional_str(o, "sender_agent_id"),
        recipients=to,
        duration_ms=duration if duration is not None and 0 <= duration <= MAX_DURATION_MS else None,
        exit_code=integer(o.get("exit_code")),
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
        arguments=as_text(o.get("arguments")),
        output=as_text(output),
        error=as_text(o.get("error")),
        text=as_text(o.get("content", o.get("summary"))),
        command=optional_str(o, "command"),
    )


def parse_subagent(obj: object) -> Subagent:
    """Parse one `agent.session.subagent`."""
    kind = "agent_subagent"
    o = as_object(obj, kind)
    said = required_str(o, "id", kind, object_id(o))
    opened_at = timestamp_field(o, "opened_at", kind, said, required=True)
    assert opened_at is not None
    return Subagent(
        id=said,
        session_id=required_str(o, "session_id", kind, said),
        parent_agent_id=optional_str(o, "parent_agent_id"),
        status=required_str(o, "status", kind, said),
        opened_at=opened_at,
        name=optional_str(o, "name"),
        closed_at=timestamp_field(o, "closed_at", kind, said),
    )


def parse_trace(obj: object) -> SessionTrace:
    """Parse one `agent.session.trace`; `otlp` must be a JSON object and is kept as it came."""
    kind = "agent_trace"
    o = as_object(obj, kind)
    tid = required_str(o, "id", kind, object_id(o))
    created = created_at(o, kind, tid)
    otlp = o.get("otlp")
    if not isinstance(otlp, Mapping):
        raise InvalidObject(kind, "field 'otlp' must be a JSON object", object_id=tid)
    if nested_deeper_than(otlp, MAX_TRACE_DEPTH):
        raise InvalidObject(kind, f"field 'otlp' nests deeper than {MAX_TRACE_DEPTH} levels", object_id=tid)
    return SessionTrace(id=tid, session_id=required_str(o, "session_id", kind, tid), created_at=created, otlp=otlp)
