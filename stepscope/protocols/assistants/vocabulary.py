"""The Assistants protocol's words, each defined once: its endpoints, span attributes, statuses, step and tool types,
and the metric label values it defines in advance.

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

from enum import StrEnum

from stepscope.contract import metricdefs as md
from stepscope.core.records import KnownLabels
from stepscope.mapping import attributes as a

PROTOCOL = "assistants"
PROVIDER_AZURE = "azure.ai.agents"
"""`gen_ai.provider.name` of Azure AI Foundry Agents (classic); OpenAI's is `openai`."""


class Endpoint(StrEnum):
    """The requests the Assistants client makes: the `endpoint` label of `stepscope_api_requests_total`."""

    LIST_RUNS = "list_runs"
    GET_RUN = "get_run"
    LIST_STEPS = "list_steps"
    GET_STEP = "get_step"
    GET_ASSISTANT = "get_assistant"
    LIST_THREADS = "list_threads"  # Azure: the project's threads, for discovery with no thread configured


INVALID_KINDS = ("run", "run_step", "tool_call", "assistant")
"""The `kind` values of objects this protocol's parsers reject (`stepscope_invalid_objects_total`)."""

# --- span attributes of runs and steps (the conventions have no slot for these ids) -------------------------
OPENAI_RUN_ID = "openai.run.id"
OPENAI_RUN_STATUS = "openai.run.status"
OPENAI_RUN_STEP_ID = "openai.run_step.id"
OPENAI_RUN_STEP_TYPE = "openai.run_step.type"
OPENAI_RUN_STEP_STATUS = "openai.run_step.status"
OPENAI_MESSAGE_ID = "openai.message.id"
RUN_STARTED_EVENT = "openai.run.started"
"""Name of the run span's event at `started_at` (the end of the queue wait)."""

# --- statuses, step and tool types ---------------------------------------------------------------------------
STEP_TYPES = ("message_creation", "tool_calls")
STEP_STATUSES = ("completed", "failed", "cancelled", "expired")
"""Terminal step statuses: only terminal steps are counted, so `in_progress` never appears as a label."""
RUN_STATUSES = ("completed", "failed", "cancelled", "expired", "incomplete")
TOOL_TYPES: dict[str, str] = {
    "function": a.TOOL_TYPE_FUNCTION,
    "code_interpreter": a.TOOL_TYPE_EXTENSION,
    "file_search": a.TOOL_TYPE_DATASTORE,
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
        a.TOOL_TYPE_EXTENSION,
    ),
}
"""Raw tool-call `type` -> `gen_ai.tool.type`; see the module docstring for the reasoning."""
BUILTIN_TOOLS = (("code_interpreter", a.TOOL_TYPE_EXTENSION), ("file_search", a.TOOL_TYPE_DATASTORE))
"""`(tool_name, tool_type)` of the OpenAI built-in tools, whose series exist from start-up."""


def tool_type(raw_type: str) -> str:
    """`gen_ai.tool.type` for a tool call's raw `type`: `"file_search"` -> `"datastore"`, `"x_new"` -> `"x_new"`."""
    return TOOL_TYPES.get(raw_type, raw_type)


LABELS = KnownLabels(
    protocol=PROTOCOL,
    values={
        a.LABEL_STEP_TYPE: frozenset(STEP_TYPES),
        a.LABEL_STATUS: frozenset(STEP_STATUSES + RUN_STATUSES),
        a.LABEL_TOOL_TYPE: frozenset(TOOL_TYPES.values()),
        a.LABEL_TOOL_NAME: frozenset(TOOL_TYPES) - {"function"},
    },
    fan_out={
        md.RUN_STEPS.name: {a.LABEL_STEP_TYPE: STEP_TYPES, a.LABEL_STATUS: STEP_STATUSES},
        md.TOKENS.name: {a.LABEL_TOKEN_TYPE: a.TOKEN_TYPES, a.LABEL_STEP_TYPE: STEP_TYPES},
        md.RUNS.name: {a.LABEL_STATUS: RUN_STATUSES},
    },
    series=(
        *(
            (md.RUN_STEP_DURATION.name, {a.LABEL_STEP_TYPE: step_type, a.LABEL_STATUS: status})
            for step_type in STEP_TYPES
            for status in STEP_STATUSES
        ),
        *((md.RUN_DURATION.name, {a.LABEL_STATUS: status, a.LABEL_PROTOCOL: PROTOCOL}) for status in RUN_STATUSES),
        (md.RUN_QUEUE.name, {a.LABEL_PROTOCOL: PROTOCOL}),
        *(
            (md.TOOL_CALLS.name, {a.LABEL_TOOL_TYPE: kind, a.LABEL_TOOL_NAME: name, a.LABEL_PROTOCOL: PROTOCOL})
            for name, kind in BUILTIN_TOOLS
        ),
    ),
)
"""What the Prometheus families know of this protocol before its first run."""
