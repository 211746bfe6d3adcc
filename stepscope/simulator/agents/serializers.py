"""Wire shapes of the simulated Agents API objects at a point in time, as the openai SDK 3.57 types them.

`AgentSession` (types/beta/agent_session.py), `Turn` (types/beta/agents/sessions/turn.py), the
`AgentSessionItem` union (types/beta/agent_session_item.py), `Subagent` and `SessionTrace`. Every field the SDK
declares is present; nullable ones are null. Items carry no timestamps; an item with a status shows
`in_progress` until it is done. Turn and session `usage` is best effort: what was recorded by `t`.
"""

from __future__ import annotations

from typing import Any

from stepscope.simulator.agents.state import TURN_TERMINAL, SimItem, SimSession, SimSubagent, SimTurn

_AGENT_TOOLS: list[dict[str, Any]] = [
    {"type": "function", "name": "get_weather", "description": "Current weather for a city.",
     "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}, "defer_loading": False},
    {"type": "mcp", "server_label": "docs", "transport": {"type": "http", "server_url": "https://mcp.example.invalid"},
     "connection_origin": "service", "request_metadata": {}, "required": False, "allowed_tools": None,
     "credential_id": None},
    {"type": "web_search", "context_size": "medium", "mode": "live", "allowed_domains": None, "location": None},
    {"type": "computer_use", "include_screenshots": False},
]  # fmt: skip


def usage_dict(usage: tuple[int, int, int, int] | None) -> dict[str, Any] | None:
    """`TokenUsage` from (input, cached, output, reasoning) tokens."""
    if usage is None:
        return None
    inp, cached, out, reasoning = usage
    return {
        "input_tokens": inp,
        "input_tokens_details": {"cached_tokens": cached},
        "output_tokens": out,
        "output_tokens_details": {"reasoning_tokens": reasoning},
        "total_tokens": inp + out,
    }


def agent_dict(agent: dict[str, Any]) -> dict[str, Any]:
    """The session's `agent` object (effective configuration)."""
    return {
        "id": agent["id"],
        "name": agent["name"],
        "model": agent["model"],
        "instructions": agent["instructions"],
        "multi_agent": {"enabled": True, "max_concurrent_subagents": 6},
        "reasoning": {"effort": "medium", "summary": "auto"},
        "service_tier": "auto",
        "text": {"format": {"type": "text"}, "verbosity": "medium"},
        "tools": _AGENT_TOOLS,
        "compaction": {"async": False},
        "experimental": {"time_awareness": False},
    }


def session_usage(session: SimSession, t: float) -> tuple[int, int, int, int] | None:
    """Root-turn usage recorded by `t`, summed (None when nothing was recorded)."""
    total: tuple[int, int, int, int] | None = None
    for turn in session.turns[: session.visible_turns(t)]:
        usage = turn.usage_at(t)
        if usage is not None:
            total = usage if total is None else (total[0] + usage[0], total[1] + usage[1], total[2] + usage[2],
                                                 total[3] + usage[3])  # fmt: skip
    return total


def session_dict(session: SimSession, t: float) -> dict[str, Any]:
    """The `agent.session` object at `t`."""
    status = session.status_at(t)
    n = session.visible_turns(t)
    last_active = max([session.created, *(turn.last_activity(t) for turn in session.turns[max(n - 1, 0) : n])])
    active = session.active_turn(t)
    wait = active.wait_at(t) if active is not None else None
    actions = []
    if wait is not None and active is not None:
        actions.append({"type": "function_call", "call_id": wait.call_id, "name": wait.name,
                        "arguments": wait.arguments, "turn_id": active.id})  # fmt: skip
    return {
        "id": session.id,
        "object": "agent.session",
        "agent": agent_dict(session.agent),
        "created_at": int(session.created),
        "environment": {"type": "none"},
        "error": session.error if status == "failed" else None,
        "last_active_at": int(last_active),
        "metadata": session.metadata,
        "required_actions": actions,
        "status": status,
        "usage": usage_dict(session_usage(session, t)),
        "vault_ids": [],
        "prompt_cache_options": None,
    }


def turn_dict(turn: SimTurn, t: float) -> dict[str, Any]:
    """The `agent.session.turn` object at `t` (root or subagent turn)."""
    status = turn.status_at(t)
    terminal = status in TURN_TERMINAL
    error = None
    if terminal and status == "failed" and turn.error is not None:
        error = {"code": turn.error[0], "message": turn.error[1]}
    return {
        "id": turn.id,
        "object": "agent.session.turn",
        "session_id": turn.session_id,
        "agent_id": turn.agent_id,
        "subagent_id": turn.subagent_id,
        "status": status,
        "created_at": int(turn.created),
        "started_at": int(turn.started) if turn.started is not None and t >= turn.started else None,
        "completed_at": int(turn.end) if terminal else None,
        "error": error,
        "usage": usage_dict(turn.usage_at(t)),
        "prompt_cache_options": None,
    }


def item_dict(item: SimItem, t: float) -> dict[str, Any]:
    """The item as `AgentSessionItem` at `t`: no timestamps; status and late fields follow its progress."""
    obj: dict[str, Any] = {"id": item.id, "type": item.type, "turn_id": item.turn_id, **item.fields}
    status = item.status_at(t)
    if status is not None:
        obj["status"] = status
    if t >= item.done:
        obj.update(item.done_fields)
    return obj


def subagent_dict(sub: SimSubagent, t: float) -> dict[str, Any]:
    closed = sub.closed is not None and t >= sub.closed
    return {
        "id": sub.id,
        "object": "agent.session.subagent",
        "session_id": sub.session_id,
        "parent_agent_id": sub.parent_agent_id,
        "name": sub.name,
        "instructions": [{"type": "output_text", "text": sub.instructions}],
        "status": "closed" if closed else "active",
        "opened_at": int(sub.opened),
        "closed_at": int(sub.closed) if closed and sub.closed is not None else None,
    }


def trace_dict(turn: SimTurn, otlp: dict[str, Any]) -> dict[str, Any]:
    """`SessionTrace`: the id is the root turn's, the anchor of trace pagination."""
    return {
        "id": turn.id,
        "object": "agent.session.trace",
        "session_id": turn.session_id,
        "created_at": int(turn.created),
        "otlp": otlp,
    }


def page(data: list[dict[str, Any]], more: bool, *, last_id: str | None = None) -> dict[str, Any]:
    """A list envelope; `last_id` overrides the last object's id (conversation cursor pages)."""
    first = data[0].get("id") if data else None
    last = last_id if last_id is not None else (data[-1].get("id") if data else None)
    return {"object": "list", "data": data, "first_id": first, "last_id": last, "has_more": more}
