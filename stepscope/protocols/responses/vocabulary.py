"""The Responses protocol's words, each defined once: its endpoints, statuses, item types, tool types and the metric
label values it defines in advance. Responses count as runs and items as steps in the shared metric families."""

from __future__ import annotations

from enum import StrEnum

from stepscope.contract import metricdefs as md
from stepscope.core.records import KnownLabels
from stepscope.mapping import attributes as a

PROTOCOL = "responses"
PROVIDER_FOUNDRY = "azure.ai.foundry"
"""`gen_ai.provider.name` of Foundry's Agent Service (`STEPSCOPE_FLAVOR=azure`)."""
CONTAINER = "project"
"""The container of every response: a response is addressed by its id alone (a webhook names nothing else), and the
project is the one place the listing covers. `UnitRef(CONTAINER, response_id)`."""


class Endpoint(StrEnum):
    """The requests the Responses client makes: the `endpoint` label of `stepscope_api_requests_total`, named as the
    simulator names them."""

    LIST_RESPONSES = "list_responses"
    GET_RESPONSE = "get_response"


INVALID_KINDS = ("response",)
"""The `kind` values of objects this protocol's parsers reject (`stepscope_invalid_objects_total`)."""

RESPONSE_STEP_TYPE = "response"
"""`step_type` of the token series a response's usage adds (items carry no usage)."""
STATUSES = ("queued", "in_progress", "completed", "failed", "cancelled", "incomplete")
TERMINAL = frozenset({"completed", "failed", "cancelled", "incomplete"})
TERMINAL_STATUSES = ("completed", "failed", "cancelled", "incomplete")
"""Terminal response statuses: the `status` values a response adds to the run families."""
ITEM_STATUSES = ("in_progress", "completed", "incomplete", "failed", "searching", "calling", "cancelled")
"""Item statuses the APIs define. Items of a terminal response are counted as they are."""

ITEM_TYPES = (
    # OpenAI
    "message",
    "reasoning",
    "function_call",
    "function_call_output",
    "file_search_call",
    "web_search_call",
    "code_interpreter_call",
    "image_generation_call",
    "computer_call",
    "local_shell_call",
    "shell_call",
    "apply_patch_call",
    "custom_tool_call",
    "mcp_call",
    "mcp_list_tools",
    "mcp_approval_request",
    # Foundry's Agent Service
    "bing_grounding_call",
    "azure_ai_search_call",
    "openapi_call",
    "azure_function_call",
    "a2a_preview_call",
    "memory_search_call",
    "sharepoint_grounding_preview_call",
    "browser_automation_preview_call",
    "fabric_dataagent_preview_call",
    "bing_custom_search_preview_call",
    "workflow_action",
)
"""Item types the APIs define: the `step_type` values their items add to `stepscope_run_steps_total`. Unknown types
are counted too (capped like any server value)."""

CLIENT_TOOLS = frozenset({"function_call", "custom_tool_call", "computer_call", "local_shell_call", "shell_call",
                          "apply_patch_call"})  # fmt: skip
"""Tool calls the application executes and answers (`gen_ai.tool.type` `function`)."""
DATASTORE_TOOLS = frozenset({"file_search_call", "azure_ai_search_call", "memory_search_call"})
"""Retrieval the service runs (`datastore`); every other tool call the service runs is an `extension`."""
NAMED_TOOLS = frozenset({"function_call", "custom_tool_call", "mcp_call", "openapi_call", "azure_function_call",
                         "a2a_preview_call"})  # fmt: skip
"""Tool-call items that carry the tool's `name`; the others are named by their type."""


def is_tool_call(item_type: str) -> bool:
    """Whether an item type is a tool call: every `*_call` type, known or future, but not its `*_call_output`."""
    return item_type.endswith("_call")


def tool_type(item_type: str) -> str:
    """`gen_ai.tool.type` of a tool-call item type: `function`, `datastore` or `extension`."""
    if item_type in CLIENT_TOOLS:
        return a.TOOL_TYPE_FUNCTION
    return a.TOOL_TYPE_DATASTORE if item_type in DATASTORE_TOOLS else a.TOOL_TYPE_EXTENSION


NAMELESS_TOOLS = tuple(t for t in ITEM_TYPES if is_tool_call(t) and t not in NAMED_TOOLS)

LABELS = KnownLabels(
    protocol=PROTOCOL,
    values={
        a.LABEL_STEP_TYPE: frozenset((RESPONSE_STEP_TYPE, *ITEM_TYPES)),
        a.LABEL_STATUS: frozenset(TERMINAL_STATUSES + ITEM_STATUSES),
        a.LABEL_TOOL_TYPE: frozenset((a.TOOL_TYPE_FUNCTION, a.TOOL_TYPE_DATASTORE, a.TOOL_TYPE_EXTENSION)),
        a.LABEL_TOOL_NAME: frozenset(NAMELESS_TOOLS),
    },
    fan_out={
        md.TOKENS.name: {a.LABEL_TOKEN_TYPE: a.TOKEN_TYPES, a.LABEL_STEP_TYPE: (RESPONSE_STEP_TYPE,)},
        md.RUNS.name: {a.LABEL_STATUS: TERMINAL_STATUSES},
    },
    series=(
        # Only completed responses have a server duration: the others end at an observed time.
        (md.RUN_DURATION.name, {a.LABEL_STATUS: "completed", a.LABEL_PROTOCOL: PROTOCOL}),
    ),
)
"""What the Prometheus families know of this protocol before its first response."""
