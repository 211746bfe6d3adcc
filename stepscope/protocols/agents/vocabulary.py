"""The Agents API protocol's words, each defined once: its endpoints, statuses, item types, tool types and the metric
label values it defines in advance. Turns count as runs and items as steps in the shared metric families."""

from __future__ import annotations

from enum import StrEnum

from stepscope.contract import metricdefs as md
from stepscope.core.records import KnownLabels
from stepscope.mapping import attributes as a

PROTOCOL = "agents"


class Endpoint(StrEnum):
    """The requests the Agents client makes: the `endpoint` label of `stepscope_api_requests_total`, named as the
    simulator names them."""

    LIST_SESSIONS = "list_agent_sessions"
    GET_SESSION = "get_agent_session"
    LIST_TURNS = "list_agent_turns"
    GET_TURN = "get_agent_turn"
    LIST_TURN_ITEMS = "list_agent_turn_items"
    LIST_TRACES = "list_agent_traces"
    LIST_SUBAGENTS = "list_agent_subagents"
    LIST_SUBAGENT_TURNS = "list_agent_subagent_turns"
    GET_SUBAGENT_TURN = "get_agent_subagent_turn"
    LIST_SUBAGENT_TURN_ITEMS = "list_agent_subagent_turn_items"


INVALID_KINDS = ("agent_session", "agent_turn", "agent_item", "agent_subagent", "agent_trace")
"""The `kind` values of objects this protocol's parsers reject (`stepscope_invalid_objects_total`)."""

TURN_STEP_TYPE = "turn"
"""`step_type` of the token series a turn's usage adds (turns have no steps; items carry no usage)."""
TURN_STATUSES = ("completed", "failed", "cancelled")
"""Terminal turn statuses: the `status` values a turn adds to the run families."""
ITEM_TYPES = (
    "message",
    "reasoning",
    "function_call",
    "function_call_output",
    "agent_message",
    "mcp_call",
    "web_search_call",
    "command_execution",
    "computer_use_call",
    "computer_use_approval_request",
    "computer_use_approval_request_result",
    "create_subagent_call",
    "send_subagent_input_call",
    "resume_subagent_call",
    "wait_for_subagents_call",
    "interrupt_subagent_call",
    "close_subagent_call",
)
"""Item types the Agents API defines: the `step_type` values its items add to `stepscope_run_steps_total`."""
ITEM_STATUSES = ("in_progress", "completed", "failed", "incomplete")
"""Item statuses the API defines. Items of a terminal turn are counted as they are, so `in_progress` can appear."""
ITEM_TOOL_TYPES: dict[str, str] = {
    "function_call": a.TOOL_TYPE_FUNCTION,  # the application executes it and sends the output back
    "mcp_call": a.TOOL_TYPE_EXTENSION,  # the service calls the MCP server
    "web_search_call": a.TOOL_TYPE_EXTENSION,
    "command_execution": a.TOOL_TYPE_EXTENSION,  # runs in the session's environment, not in the client
    "computer_use_call": a.TOOL_TYPE_EXTENSION,
}
"""Tool-call item type -> `gen_ai.tool.type`, the same reasoning as for Assistants tools."""
NAMELESS_ITEM_TOOLS = (
    ("web_search_call", a.TOOL_TYPE_EXTENSION),
    ("command_execution", a.TOOL_TYPE_EXTENSION),
    ("computer_use_call", a.TOOL_TYPE_EXTENSION),
)
"""`(tool_name, tool_type)` of the tool-call items that carry no name: their `tool_name` is the item type."""

LABELS = KnownLabels(
    protocol=PROTOCOL,
    values={
        a.LABEL_STEP_TYPE: frozenset((TURN_STEP_TYPE, *ITEM_TYPES)),
        a.LABEL_STATUS: frozenset(TURN_STATUSES + ITEM_STATUSES),
        a.LABEL_TOOL_TYPE: frozenset(ITEM_TOOL_TYPES.values()),
        a.LABEL_TOOL_NAME: frozenset(name for name, _ in NAMELESS_ITEM_TOOLS),
    },
    # Items are not filled in: their types are many, and the ratios' `or ... * 0` covers them.
    fan_out={
        md.TOKENS.name: {a.LABEL_TOKEN_TYPE: a.TOKEN_TYPES, a.LABEL_STEP_TYPE: (TURN_STEP_TYPE,)},
        md.RUNS.name: {a.LABEL_STATUS: TURN_STATUSES},
    },
    series=(
        *((md.RUN_DURATION.name, {a.LABEL_STATUS: status, a.LABEL_PROTOCOL: PROTOCOL}) for status in TURN_STATUSES),
        (md.RUN_QUEUE.name, {a.LABEL_PROTOCOL: PROTOCOL}),
        *(
            (md.TOOL_CALLS.name, {a.LABEL_TOOL_TYPE: kind, a.LABEL_TOOL_NAME: name, a.LABEL_PROTOCOL: PROTOCOL})
            for name, kind in NAMELESS_ITEM_TOOLS
        ),
    ),
)
"""What the Prometheus families know of this protocol before its first turn."""
