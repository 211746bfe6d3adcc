"""The body of `POST /responses` (and of a WebSocket `response.create`): validation into `CreateParams`.

Problems raise `ApiError(400)` with the error body the API uses: `unknown_parameter` for a field the API does not
take (Foundry's `agent_reference` and its deprecated alias `agent` exist on the azure flavour only),
`invalid_type` for a field of the wrong JSON type, `missing_required_parameter` for a missing `model` (Foundry
takes the model from the agent instead), and plain `invalid_request_error`s for values out of range, `background`
without `store`, and `conversation` together with `previous_response_id`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from stepscope.simulator.handlers import ApiError

# The parameters of ResponseCreateParams in openai 3.57 (types/responses/response_create_params.py), plus stream.
CREATE_FIELDS = frozenset({
    "access_programs", "background", "background_options", "context_management", "conversation", "image", "include",
    "input", "instructions", "max_output_tokens", "max_tool_calls", "metadata", "model", "moderation",
    "parallel_tool_calls", "previous_response_id", "prompt", "prompt_cache_key", "prompt_cache_options",
    "prompt_cache_retention", "reasoning", "safety_identifier", "service_tier", "store", "stream", "stream_options",
    "temperature", "text", "tool_choice", "tools", "top_logprobs", "top_p", "truncation", "user",
})  # fmt: skip
AZURE_FIELDS = frozenset({"agent_reference", "agent", "structured_inputs"})
WEBSOCKET_FIELDS = frozenset({"type", "stream_id", "generate"})
# Request fields the Response object echoes as given (null when absent).
ECHOED = ("max_output_tokens", "max_tool_calls", "prompt_cache_key", "safety_identifier", "user", "prompt")
# Request fields kept to shape the Response object (echoed, or read by the plan such as max_output_tokens).
KEPT = (*ECHOED, "temperature", "top_p", "parallel_tool_calls", "tool_choice", "truncation", "service_tier",
        "reasoning", "text", "top_logprobs")  # fmt: skip
_MAX_METADATA = 16


def json_type(value: Any) -> str:
    """The JSON type name of `value` as the API's error messages spell it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a decimal"
    if isinstance(value, str):
        return "a string"
    return "an array" if isinstance(value, list) else "an object"


def type_error(name: str, expected: str, value: Any) -> ApiError:
    return ApiError(400, f"Invalid type for '{name}': expected {expected}, but got {json_type(value)} instead.",
                    param=name, code="invalid_type")  # fmt: skip


@dataclass(slots=True)
class CreateParams:
    """A validated create request. `input` is the raw input (a string or a list of item dicts)."""

    model: str | None
    input: str | list[dict[str, Any]]
    instructions: str | None = None
    tools: list[dict[str, Any]] = field(default_factory=list)
    stream: bool = False
    background: bool = False
    store: bool = True
    conversation_id: str | None = None
    previous_response_id: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    agent: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # other echoed fields, as given
    stream_id: str | None = None


def _opt(body: dict[str, Any], name: str, kind: type | tuple[type, ...], expected: str) -> Any:
    value = body.get(name)
    if value is not None and (not isinstance(value, kind) or (kind is not bool and isinstance(value, bool))):
        raise type_error(name, expected, value)
    return value


def metadata_param(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise type_error("metadata", "an object", value)
    if len(value) > _MAX_METADATA:
        raise ApiError(400, f"Invalid 'metadata': too many properties. Expected an object with at most 16 "
                       f"properties, but got an object with {len(value)} properties instead.", param="metadata",
                       code="object_above_max_length")  # fmt: skip
    for key, val in value.items():
        if not isinstance(val, str):
            raise type_error(f"metadata.{key}", "a string", val)
        if len(key) > 64 or len(val) > 512:
            raise ApiError(400, f"Invalid 'metadata.{key}': keys are at most 64 and values at most 512 characters.",
                           param=f"metadata.{key}", code="string_above_max_length")  # fmt: skip
    return dict(value)


def _agent(body: dict[str, Any]) -> dict[str, Any] | None:
    name = "agent_reference" if "agent_reference" in body else "agent"
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise type_error(name, "an object", value)
    if not isinstance(value.get("name"), str) or not value["name"] or len(value["name"]) > 256:
        raise ApiError(400, f"Invalid '{name}.name': expected a string of 1 to 256 characters.",
                       param=f"{name}.name")  # fmt: skip
    version = value.get("version")
    if version is not None and not isinstance(version, str):
        raise type_error(f"{name}.version", "a string", version)
    return {"type": "agent_reference", "name": value["name"], "version": version}


def parse_create(body: dict[str, Any], *, azure: bool, websocket: bool = False) -> CreateParams:
    """Validate a create body; `ApiError` 400 names the first problem."""
    known = CREATE_FIELDS | (AZURE_FIELDS if azure else frozenset()) | (WEBSOCKET_FIELDS if websocket else frozenset())
    for name in body:
        if name not in known:
            raise ApiError(400, f"Unknown parameter: '{name}'.", param=name, code="unknown_parameter")
    agent = _agent(body) if azure else None
    model = _opt(body, "model", str, "a string")
    if model is None and agent is None and body.get("prompt") is None:
        raise ApiError(400, "Missing required parameter: 'model'.", param="model", code="missing_required_parameter")
    raw_input = body.get("input", [])
    if isinstance(raw_input, list):
        for k, entry in enumerate(raw_input):
            if not isinstance(entry, dict):
                raise type_error(f"input[{k}]", "an object", entry)
    elif not isinstance(raw_input, str):
        raise type_error("input", "one of a string or array of input items", raw_input)
    tools = _opt(body, "tools", list, "an array") or []
    for k, tool in enumerate(tools):
        if not isinstance(tool, dict) or not isinstance(tool.get("type"), str):
            raise ApiError(400, f"Invalid 'tools[{k}]': expected an object with a string 'type'.",
                           param=f"tools[{k}]", code="invalid_type")  # fmt: skip
    flags = {name: _opt(body, name, bool, "a boolean") for name in ("stream", "background", "store",
                                                                     "parallel_tool_calls")}  # fmt: skip
    for name in ("temperature", "top_p"):
        _opt(body, name, (int, float), "a number")
    max_out = _opt(body, "max_output_tokens", int, "an integer")
    if max_out is not None and max_out < 16:
        raise ApiError(400, f"Invalid 'max_output_tokens': integer below minimum value. Expected a value >= 16, "
                       f"but got {max_out} instead.", param="max_output_tokens",
                       code="integer_below_min_value")  # fmt: skip
    conversation = body.get("conversation")
    if isinstance(conversation, dict):
        conversation = conversation.get("id")
    if conversation is not None and not isinstance(conversation, str):
        raise type_error("conversation", "a string or an object with a string 'id'", body["conversation"])
    previous = _opt(body, "previous_response_id", str, "a string")
    if conversation is not None and previous is not None:
        raise ApiError(400, "Mutually exclusive parameters: Ensure you are only providing one of: "
                       "'previous_response_id' or 'conversation'.", param="conversation")  # fmt: skip
    store = flags["store"] is not False
    if flags["background"] and not store:
        raise ApiError(400, "Background mode requires 'store' to be true.", param="background")
    extra = {k: body[k] for k in KEPT if k in body}
    stream_id = body.get("stream_id") if websocket else None
    return CreateParams(
        model=model, input=raw_input, instructions=_opt(body, "instructions", str, "a string"), tools=tools,
        stream=bool(flags["stream"]), background=bool(flags["background"]), store=store,
        conversation_id=conversation, previous_response_id=previous, metadata=metadata_param(body.get("metadata")),
        agent=agent, extra=extra, stream_id=stream_id if isinstance(stream_id, str) else None,
    )  # fmt: skip
