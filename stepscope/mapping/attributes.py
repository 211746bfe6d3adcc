"""Attribute keys, label keys and the small fixed value sets every protocol's mapping works with.

Span attributes follow the OpenTelemetry GenAI conventions (v1.37+ names: `gen_ai.provider.name`, `openai.*`);
ids the conventions have no slot for go in namespaced attributes that each protocol defines itself. Metric labels
come from small fixed sets; unit, record, container and call ids never become labels. A protocol's own words
(statuses, step and item types, tool-type tables) live in its `vocabulary` module.
"""

from __future__ import annotations

from dataclasses import dataclass

from stepscope.contract import metricdefs as md

# --- span attribute keys -------------------------------------------------------------------------------------

GEN_AI_OPERATION_NAME = "gen_ai.operation.name"
GEN_AI_PROVIDER_NAME = "gen_ai.provider.name"
GEN_AI_AGENT_ID = "gen_ai.agent.id"
GEN_AI_AGENT_NAME = "gen_ai.agent.name"
GEN_AI_AGENT_VERSION = "gen_ai.agent.version"
GEN_AI_CONVERSATION_ID = "gen_ai.conversation.id"
GEN_AI_REQUEST_MODEL = "gen_ai.request.model"
GEN_AI_USAGE_INPUT_TOKENS = "gen_ai.usage.input_tokens"
GEN_AI_USAGE_OUTPUT_TOKENS = "gen_ai.usage.output_tokens"
GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS = "gen_ai.usage.cache_read.input_tokens"
GEN_AI_USAGE_REASONING_OUTPUT_TOKENS = "gen_ai.usage.reasoning.output_tokens"
GEN_AI_TOOL_NAME = "gen_ai.tool.name"
GEN_AI_TOOL_TYPE = "gen_ai.tool.type"
GEN_AI_TOOL_CALL_ID = "gen_ai.tool.call.id"
GEN_AI_TOOL_CALL_ARGUMENTS = "gen_ai.tool.call.arguments"
GEN_AI_TOOL_CALL_RESULT = "gen_ai.tool.call.result"
ERROR_TYPE = "error.type"

GEN_AI_RESPONSE_ID = "gen_ai.response.id"
GEN_AI_RESPONSE_MODEL = "gen_ai.response.model"
OPENAI_API_TYPE = "openai.api.type"
STEPSCOPE_END_TIME_OBSERVED = "stepscope.end_time.observed"
"""True on a span whose end is the moment stepscope first saw its unit terminal: the server recorded no end."""
STEPSCOPE_TIME_OBSERVED = "stepscope.time.observed"
"""True on a span whose start and end are moments the proxy saw, not server times."""

OPERATION_INVOKE_AGENT = "invoke_agent"
OPERATION_EXECUTE_TOOL = "execute_tool"
OPERATION_CHAT = "chat"

PROVIDER_OPENAI = "openai"

MAX_CONTENT_CHARS = 4096
"""Captured tool arguments and results are cut to this many characters (the last one becomes `…`)."""


def truncate_content(text: str) -> str:
    """Captured content cut to `MAX_CONTENT_CHARS` characters, the last of them `…` when anything was cut."""
    if len(text) <= MAX_CONTENT_CHARS:
        return text
    return text[: MAX_CONTENT_CHARS - 1] + "…"


# --- tool types (`gen_ai.tool.type`) -------------------------------------------------------------------------

TOOL_TYPE_FUNCTION = "function"  # the client executes it
TOOL_TYPE_EXTENSION = "extension"  # the service executes it
TOOL_TYPE_DATASTORE = "datastore"  # retrieval

# --- metric label keys and shared values ---------------------------------------------------------------------

# The label names belong to the metric contract and are defined with the metrics in `stepscope.contract.metricdefs`.
LABEL_STEP_TYPE = md.LABEL_STEP_TYPE
LABEL_STATUS = md.LABEL_STATUS
LABEL_MODEL = md.LABEL_MODEL
LABEL_ASSISTANT_ID = md.LABEL_ASSISTANT_ID
LABEL_TOKEN_TYPE = md.LABEL_TOKEN_TYPE
LABEL_TOOL_TYPE = md.LABEL_TOOL_TYPE
LABEL_TOOL_NAME = md.LABEL_TOOL_NAME
LABEL_PROTOCOL = md.LABEL_PROTOCOL

UNKNOWN = "_unknown"
"""Label value when the API did not say (a run without `model`)."""
OTHER = "_other"
"""Label value past a capped label's limit, and of every label in a metric's overflow series."""
MAX_LABEL_CHARS = 64
"""Longer label values read `_other`: function names and Azure deployment names are at most 64 characters."""
TOKEN_INPUT, TOKEN_OUTPUT = "input", "output"
TOKEN_CACHE_READ = "cache_read"  # noqa: S105 - a label value: input tokens read from the prompt cache
TOKEN_REASONING = "reasoning"  # noqa: S105 - a label value: the reasoning part of the output tokens
TOKEN_TYPES = (TOKEN_INPUT, TOKEN_OUTPUT)
"""The `token_type` values every usage has; totals sum these two only, the breakdowns being parts of them."""
TOKEN_BREAKDOWNS = (TOKEN_CACHE_READ, TOKEN_REASONING)

CAPPED_LABELS = frozenset(
    {LABEL_STEP_TYPE, LABEL_STATUS, LABEL_TOOL_TYPE, LABEL_TOOL_NAME, LABEL_MODEL, LABEL_ASSISTANT_ID}
)
"""Every label whose values come from the server. These labels are capped: the values the protocol defines
(`KnownLabels.values`), `_unknown` and `_other` always pass, other values share the cap. `protocol` is not here:
stepscope sets it, so it is never capped."""
ENUM_LABELS = frozenset({LABEL_STEP_TYPE, LABEL_STATUS, LABEL_TOOL_TYPE})
"""Capped labels the protocol enumerates: a series with a value outside their known set is presumed garbage and
may use only half of its metric's series budget, so unknown values never crowd out the known ones."""


@dataclass(frozen=True, slots=True, kw_only=True)
class MappingOptions:
    """How units and records become spans.

    `provider_name` is `gen_ai.provider.name` (`openai`, or the Azure provider the protocol names).
    `capture_content` (from `STEPSCOPE_CAPTURE_CONTENT=true`) adds tool arguments, outputs and message content to
    spans; it is off by default because they may hold personal data.
    """

    provider_name: str = PROVIDER_OPENAI
    capture_content: bool = False
