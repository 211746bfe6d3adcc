"""The OpenAI Agents API (beta) as a source: typed records (`models`), their parsers (`parsers`), and a client on
the shared request core."""

from __future__ import annotations

from stepscope.client.parsing import TokenUsage
from stepscope.protocols.agents.client import AGENTS_ENDPOINTS, AgentsClient
from stepscope.protocols.agents.records import (
    TOOL_CALL_ITEM_TYPES,
    TURN_TERMINAL,
    Agent,
    AgentSession,
    Item,
    SessionTrace,
    Subagent,
    Turn,
    TurnError,
)

__all__ = [
    "AGENTS_ENDPOINTS",
    "TOOL_CALL_ITEM_TYPES",
    "TURN_TERMINAL",
    "Agent",
    "AgentSession",
    "AgentsClient",
    "Item",
    "SessionTrace",
    "Subagent",
    "TokenUsage",
    "Turn",
    "TurnError",
]
