"""Typed records of the OpenAI Agents API (beta, `OpenAI-Beta: agents=v1`): sessions, turns, items, subagents,
traces and agents, as frozen dataclasses holding only what telemetry needs.

Open enums (statuses, error codes, item types) are plain strings; the known values and the sets the mapping
needs (`TURN_TERMINAL`, `TOOL_CALL_ITEM_TYPES`) are defined here. Items (`Item`) carry no timestamps; every item
type, known or not, is one generic `Item`, whose content fields stay None unless parsed with content capture on.
The records are built only by `stepscope.protocols.agents.parsers`, which holds the tolerance rules and the bounds.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

# The Agents API's usage object is the Responses API's: the kit parses it for both.
from stepscope.client.parsing import TokenUsage

TURN_STATUSES = ("queued", "in_progress", "waiting", "completed", "failed", "cancelled")
TURN_TERMINAL = frozenset({"completed", "failed", "cancelled"})
SESSION_STATUSES = ("idle", "in_progress", "requires_action", "failed")
TOOL_CALL_ITEM_TYPES = frozenset(
    {"function_call", "mcp_call", "web_search_call", "command_execution", "computer_use_call"}
)
"""Item types that are tool calls: counted in `stepscope_tool_calls_total`."""
SUBAGENT_CALL_ITEM_TYPES = frozenset(
    {
        "create_subagent_call",
        "send_subagent_input_call",
        "resume_subagent_call",
        "wait_for_subagents_call",
        "interrupt_subagent_call",
        "close_subagent_call",
    }
)


@dataclass(frozen=True, slots=True)
class TurnError:
    """`error` of a failed turn. `code` is an open string (`_OTHER` when absent); `message` never leaves the process."""

    code: str
    message: str


@dataclass(frozen=True, slots=True)
class Agent:
    """An agent (`GET /agents/{id}`): only what telemetry needs."""

    id: str
    name: str | None = None
    model: str | None = None


@dataclass(frozen=True, slots=True)
class AgentSession:
    """A session (`agent.session`). `agent_*` come from its embedded root agent; `error` is a message only."""

    id: str
    status: str
    created_at: int
    agent_id: str
    agent_name: str | None = None
    model: str | None = None
    last_active_at: int | None = None
    error: str | None = None
    usage: TokenUsage | None = None
    metadata: Mapping[str, str] = field(default_factory=dict, hash=False)

    @property
    def is_active(self) -> bool:
        """A session the server is still working on: turns may change or appear."""
        return self.status in ("in_progress", "requires_action")


@dataclass(frozen=True, slots=True)
class Turn:
    """A turn (`agent.session.turn`). `subagent_id` is set for a turn a subagent ran; its `created_at` is then the
    subagent turn's start (the API's ordering rule), not a creation time."""

    id: str
    session_id: str
    agent_id: str
    status: str
    created_at: int
    subagent_id: str | None = None
    started_at: int | None = None
    completed_at: int | None = None
    error: TurnError | None = None
    usage: TokenUsage | None = None

    @property
    def is_terminal(self) -> bool:
        """True once the turn reached a final status; an unknown status counts only with `completed_at`."""
        if self.status in TURN_TERMINAL:
            return True
        return self.status not in TURN_STATUSES and self.completed_at is not None

    @property
    def ended_at(self) -> int | None:
        """`completed_at`, the time the turn reached a terminal state, once it is terminal."""
        return self.completed_at if self.is_terminal else None


@dataclass(frozen=True, slots=True)
class Item:
    """One item of a turn, of any type. `id` may be None (legacy user messages). `name` is the tool's or
    function's name when the item has one. `recipients` are the agents a subagent call addresses
    (`recipient_agent_id` or `recipient_agent_ids`); `agent_id` is a `create_subagent_call`'s requesting agent.
    The content fields are None unless parsed with `content=True`."""

    type: str
    id: str | None = None
    turn_id: str | None = None
    call_id: str | None = None
    name: str | None = None
    status: str | None = None
    role: str | None = None
    server_label: str | None = None
    agent_id: str | None = None
    sender_agent_id: str | None = None
    recipients: tuple[str, ...] = ()
    duration_ms: int | None = None
    exit_code: int | None = None
    arguments: str | None = None
    output: str | None = None
    error: str | None = None
    text: str | None = None
    command: str | None = None

    @property
    def is_tool_call(self) -> bool:
        return self.type in TOOL_CALL_ITEM_TYPES


@dataclass(frozen=True, slots=True)
class Subagent:
    """A subagent of a session (`agent.session.subagent`)."""

    id: str
    session_id: str
    parent_agent_id: str | None
    status: str
    opened_at: int
    name: str | None = None
    closed_at: int | None = None


@dataclass(frozen=True, slots=True)
class SessionTrace:
    """A published root-turn trace (`agent.session.trace`). `id` is the root turn's id; `otlp` is the server's OTLP
    JSON `ExportTraceServiceRequest` exactly as received, for relaying unchanged."""

    id: str
    session_id: str
    created_at: int
    otlp: Mapping[str, Any] = field(hash=False, compare=True)
