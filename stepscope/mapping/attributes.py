"""Attribute keys, label keys and the small fixed value sets the mapping works with.

Span attributes follow the OpenTelemetry GenAI conventions (v1.37+ names: `gen_ai.provider.name`, `openai.*`);
ids that the conventions have no slot for go in namespaced `openai.*` attributes. Metric labels come from small
fixed sets; run, step, thread and call ids never become labels.

Tool types (`gen_ai.tool.type`), decided here:

- `function` -> `function`: the client executes it.
- `code_interpreter` -> `extension`; `file_search` -> `datastore` (retrieval), as the conventions say.
- Azure's server-side tools -> `extension`: they run on the agent service, not in the client. That is
  `bing_grounding`, `bing_custom_search`, `azure_ai_search`, `sharepoint_grounding`, `fabric_dataagent`,
  `deep_research`, `browser_automation`, `openapi`, `mcp`, `connected_agent` and `azure_function` (the service
  calls the function app itself, unlike `function`). `azure_ai_search` retrieves, but from the service's own index
  connection, so it stays `extension` alongside Bing grounding: dashboards group all server-side tools together.
- Any other type -> the raw type string, so new tools show up instead of vanishing into `_OTHER`.
"""

from __future__ import annotations

from dataclasses import dataclass

from stepscope.contract import metricdefs as md

# --- span attribute keys -------------------------------------------------------------------------------------

GEN_AI_OPERATION_NAME = "gen_ai.operation.name"
GEN_AI_PROVIDER_NAME = "gen_ai.provider.name"
GEN_AI_AGENT_ID = "gen_ai.agent.id"
GEN_AI_AGENT_NAME = "gen_ai.agent.name"
GEN_AI_CONVERSATION_ID = "gen_ai.conversation.id"
GEN_AI_REQUEST_MODEL = "gen_ai.request.model"
GEN_AI_USAGE_INPUT_TOKENS = "gen_ai.usage.input_tokens"
GEN_AI_USAGE_OUTPUT_TOKENS = "gen_ai.usage.output_tokens"
GEN_AI_TOOL_NAME = "gen_ai.tool.name"
GEN_AI_TOOL_TYPE = "gen_ai.tool.type"
GEN_AI_TOOL_CALL_ID = "gen_ai.tool.call.id"
GEN_AI_TOOL_CALL_ARGUMENTS = "gen_ai.tool.call.arguments"
GEN_AI_TOOL_CALL_RESULT = "gen_ai.tool.call.result"
ERROR_TYPE = "error.type"
OPENAI_RUN_ID = "openai.run.id"
OPENAI_RUN_STATUS = "openai.run.status"
OPENAI_RUN_STEP_ID = "openai.run_step.id"
OPENAI_RUN_STEP_TYPE = "openai.run_step.type"
OPENAI_RUN_STEP_STATUS = "openai.run_step.status"
OPENAI_MESSAGE_ID = "openai.message.id"

OPERATION_INVOKE_AGENT = "invoke_agent"
OPERATION_EXECUTE_TOOL = "execute_tool"
RUN_STARTED_EVENT = "openai.run.started"
"""Name of the run span's event at `started_at` (the end of the queue wait)."""

PROVIDER_OPENAI = "openai"
PROVIDER_AZURE = "azure.ai.agents"

MAX_CONTENT_CHARS = 4096
"""Captured tool arguments and results are cut to this many characters (the last one becomes `…`)."""


def truncate_content(text: str) -> str:
    """Captured content cut to `MAX_CONTENT_CHARS` characters, the last of them `…` when anything was cut."""
    if len(text) <= MAX_CONTENT_CHARS:
        return text
    return text[: MAX_CONTENT_CHARS - 1] + "…"


# --- tool types ----------------------------------------------------------------------------------------------

TOOL_TYPE_FUNCTION = "function"
TOOL_TYPE_EXTENSION = "extension"
TOOL_TYPE_DATASTORE = "datastore"

TOOL_TYPES: dict[str, str] = {
    "function": TOOL_TYPE_FUNCTION,
    "code_interpreter": TOOL_TYPE_EXTENSION,
    "file_search": TOOL_TYPE_DATASTORE,
    **dict.fromkeys(
        (
            "bing_grounding",
            "bing_custom_search",
            "azure_ai_search",
            "sharepoint_grounding",
            "fabric_dataagent",
            "deep_research",
            "browser_automation",
            "openapi",
            "mcp",
            "connected_agent",
            "azure_function",
        ),
        TOOL_TYPE_EXTENSION,
    ),
}
"""Raw tool-call `type` -> `gen_ai.tool.type`; see the module docstring for the reasoning."""


def tool_type(raw_type: str) -> str:
    """`gen_ai.tool.type` for a tool call's raw `type`: `"file_search"` -> `"datastore"`, `"x_new"` -> `"x_new"`."""
    return TOOL_TYPES.get(raw_type, raw_type)


# --- metric label keys and known values ----------------------------------------------------------------------

# The label names belong to the metric contract and are defined with the metrics in `stepscope.contract.metricdefs`.
LABEL_STEP_TYPE = md.LABEL_STEP_TYPE
LABEL_STATUS = md.LABEL_STATUS
LABEL_MODEL = md.LABEL_MODEL
LABEL_ASSISTANT_ID = md.LABEL_ASSISTANT_ID
LABEL_TOKEN_TYPE = md.LABEL_TOKEN_TYPE
LABEL_TOOL_TYPE = md.LABEL_TOOL_TYPE
LABEL_TOOL_NAME = md.LABEL_TOOL_NAME
LABEL_PROTOCOL = md.LABEL_PROTOCOL

PROTOCOL_ASSISTANTS = "assistants"
PROTOCOL_AGENTS = "agents"
PROTOCOLS = (PROTOCOL_ASSISTANTS, PROTOCOL_AGENTS)
"""Values of the `protocol` label: stepscope sets it, so it is a closed set and needs no cap."""

UNKNOWN = "_unknown"
"""Label value when the API did not say (a run without `model`)."""
OTHER = "_other"
"""Label value past a capped label's limit, and of every label in a metric's overflow series."""
MAX_LABEL_CHARS = 64
"""Longer label values read `_other`: function names and Azure deployment names are at most 64 characters."""

STEP_TYPES = ("message_creation", "tool_calls")
STEP_STATUSES = ("completed", "failed", "cancelled", "expired")
"""Terminal step statuses: only terminal steps are counted, so `in_progress` never appears as a label."""
RUN_STATUSES = ("completed", "failed", "cancelled", "expired", "incomplete")
TOKEN_TYPES = ("input", "output")
BUILTIN_TOOLS = (("code_interpreter", TOOL_TYPE_EXTENSION), ("file_search", TOOL_TYPE_DATASTORE))
"""`(tool_name, tool_type)` of the OpenAI built-in tools, whose series exist from start-up."""

# Agents API: turns count as runs, items as steps (`mapping/agents.py`).
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
NAMELESS_ITEM_TOOLS = (
    ("web_search_call", TOOL_TYPE_EXTENSION),
    ("command_execution", TOOL_TYPE_EXTENSION),
    ("computer_use_call", TOOL_TYPE_EXTENSION),
)
"""`(tool_name, tool_type)` of the tool-call items that carry no name: their `tool_name` is the item type."""

KNOWN_VALUES: dict[str, frozenset[str]] = {
    LABEL_STEP_TYPE: frozenset((*STEP_TYPES, TURN_STEP_TYPE, *ITEM_TYPES)),
    LABEL_STATUS: frozenset(STEP_STATUSES + RUN_STATUSES + TURN_STATUSES + ITEM_STATUSES),
    LABEL_TOOL_TYPE: frozenset(TOOL_TYPES.values()),
    LABEL_TOOL_NAME: (frozenset(TOOL_TYPES) - {"function"}) | {name for name, _ in NAMELESS_ITEM_TOOLS},
    LABEL_MODEL: frozenset(),
    LABEL_ASSISTANT_ID: frozenset(),
}
"""Every label whose values come from the server -> the values the protocols define (tool names: the tools whose
calls carry no name). These labels are capped: known values, `_unknown` and `_other` always pass, other values
share the cap. `protocol` is not here: stepscope sets it from `PROTOCOLS`, so it is never capped."""
CAPPED_LABELS = frozenset(KNOWN_VALUES)
ENUM_LABELS = frozenset({LABEL_STEP_TYPE, LABEL_STATUS, LABEL_TOOL_TYPE})
"""Capped labels the protocol enumerates: a series with a value outside their known set is presumed garbage and
may use only half of its metric's series budget, so unknown values never crowd out the known ones."""


@dataclass(frozen=True, slots=True, kw_only=True)
class MappingOptions:
    """How runs and steps become spans.

    `provider_name` is `gen_ai.provider.name`: `openai` for OpenAI, `azure.ai.agents` for Azure AI Foundry Agents.
    `capture_content` (from `STEPSCOPE_CAPTURE_CONTENT=true`) adds tool arguments, outputs and code input to tool
    spans; it is off by default because they may hold personal data.
    """

    provider_name: str = PROVIDER_OPENAI
    capture_content: bool = False
