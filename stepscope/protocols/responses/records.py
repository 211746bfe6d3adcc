"""Typed records of the Responses API (OpenAI's, and Foundry's Agent Service on it): responses and their output
items, as frozen dataclasses holding only what telemetry needs.

Open enums (statuses, error codes, incomplete reasons, item types) are plain strings; the known values are in
`vocabulary`. Items carry no timestamps. Content fields stay None unless parsed with content capture on. The records
are built only by `stepscope.protocols.responses.parsers`, which holds the tolerance rules and the bounds.
"""

from __future__ import annotations

from dataclasses import dataclass

from stepscope.client.parsing import TokenUsage
from stepscope.protocols.responses.vocabulary import STATUSES, TERMINAL, is_tool_call


@dataclass(frozen=True, slots=True)
class AgentReference:
    """Foundry's `agent_reference`: the agent that produced a response."""

    name: str
    version: str | None = None


@dataclass(frozen=True, slots=True)
class Item:
    """One output item of any type. `name` is the tool's or function's name when the item has one. The content
    fields are None unless parsed with `content=True`."""

    type: str
    id: str | None = None
    call_id: str | None = None
    name: str | None = None
    status: str | None = None
    role: str | None = None
    server_label: str | None = None
    arguments: str | None = None
    output: str | None = None
    text: str | None = None

    @property
    def is_tool_call(self) -> bool:
        return is_tool_call(self.type)


@dataclass(frozen=True, slots=True)
class Response:
    """A response. `completed_at` is the server's end time, which the API gives only to completed responses;
    `error_code` is set for failed ones (`_OTHER` without a code), `incomplete_reason` for incomplete ones.
    `traceparent` is the one in its `metadata`, when the application put one there."""

    id: str
    status: str
    created_at: int
    completed_at: int | None = None
    model: str | None = None
    error_code: str | None = None
    incomplete_reason: str | None = None
    usage: TokenUsage | None = None
    conversation_id: str | None = None
    previous_response_id: str | None = None
    background: bool | None = None
    agent: AgentReference | None = None
    output: tuple[Item, ...] = ()
    traceparent: str | None = None

    @property
    def is_terminal(self) -> bool:
        """True once the response reached a final status; an unknown status counts only with `completed_at`."""
        if self.status in TERMINAL:
            return True
        return self.status not in STATUSES and self.completed_at is not None

    @property
    def server_end(self) -> int | None:
        """The server's end time once terminal: `completed_at`, which the API gives completed responses only."""
        return self.completed_at if self.is_terminal else None
