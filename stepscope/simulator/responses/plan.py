"""Seeded responses: what a response does, fixed when it is created.

`build_response` draws from the response's own `random.Random`, so one response never depends on how many
others exist. A response is (for reasoning models) a reasoning item, then tool-call items of the kinds its tools
allow, then the assistant message; a `function_call` ends the response instead (the application answers it in a
follow-up response with `previous_response_id`). Foundry's tool calls come as a call item and its `_output` item.
Outcomes follow the scenario's rates: failed (an `error` with a code of the SDK's `ResponseError` enum, no
message), incomplete (`max_output_tokens` or `content_filter`, the message ends `incomplete`), cancelled
(background only: the application cancels it at a random moment), completed. A background response may stay
`queued` forever (the workload knob `stuck_queued_rate`).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from typing import Any

from stepscope.simulator.responses.items import OUTPUT_PAIRS, REASONING_PREFIXES, ItemMaker
from stepscope.simulator.responses.params import CreateParams
from stepscope.simulator.responses.state import INF, SimResponse
from stepscope.simulator.scenario import Scenario

OPENAI_KINDS = ("function_call", "file_search_call", "web_search_call", "code_interpreter_call", "mcp_call",
                "image_generation_call")  # fmt: skip
AZURE_KINDS = ("bing_grounding_call", "azure_ai_search_call", "openapi_call", "azure_function_call",
               "a2a_preview_call", "memory_search_call", "workflow_action")  # fmt: skip
_OPENAI_WEIGHTS = (0.3, 0.2, 0.2, 0.12, 0.12, 0.06)
KIND_OF_TOOL = {
    "function": "function_call", "file_search": "file_search_call", "web_search": "web_search_call",
    "web_search_preview": "web_search_call", "code_interpreter": "code_interpreter_call", "mcp": "mcp_call",
    "image_generation": "image_generation_call", "bing_grounding": "bing_grounding_call",
    "azure_ai_search": "azure_ai_search_call", "openapi": "openapi_call", "azure_function": "azure_function_call",
    "a2a_preview": "a2a_preview_call", "a2a": "a2a_preview_call", "memory_search": "memory_search_call",
    "memory_search_preview": "memory_search_call",
}  # fmt: skip
OUTCOMES = ("completed", "failed", "incomplete", "cancelled")
# (code, message) pairs from the SDK's ResponseError code enum, weighted towards what a service sees most.
ERRORS = (
    ("server_error", "The model produced an error while processing your request. Please try again."),
    ("server_error", "The server had an error while processing your request. Sorry about that!"),
    ("rate_limit_exceeded", "Rate limit reached for requests. Please try again later."),
    ("vector_store_timeout", "The vector store search timed out."),
    ("invalid_prompt", "Invalid prompt: your prompt was flagged as potentially violating our usage policy."),
)
_FINAL_DELAY_S = 0.05  # from the last item's end to the response's terminal status


@dataclass(frozen=True, slots=True)
class ResponseKnobs:
    """Test controls for one response; None fields are drawn from the scenario.

    `kinds` fixes the tool-call kinds in order (a `function_call` ends the list); `seconds` fixes every duration
    (queueing and each item); `outcome` is one of `OUTCOMES`; `reason` the incomplete reason, `error_code` the
    failure code; `stuck` keeps a background response queued forever.
    """

    kinds: tuple[str, ...] | None = None
    seconds: float | None = None
    outcome: str | None = None
    reason: str | None = None
    error_code: str | None = None
    stuck: bool = False


def reasons(model: str) -> bool:
    """Whether `model` is a reasoning model (reasoning items and reasoning tokens)."""
    return model.startswith(REASONING_PREFIXES)


def draw_kinds(rng: random.Random, scenario: Scenario, *, azure: bool, n: int) -> list[str]:
    """`n` tool-call kinds from the workload's mix (Foundry's with weight `azure_tool_weight` on azure)."""
    kinds: list[str] = []
    for _ in range(n):
        if azure and rng.random() < scenario.azure_tool_weight:
            kinds.append(rng.choice(AZURE_KINDS))
        else:
            kinds.append(rng.choices(OPENAI_KINDS, _OPENAI_WEIGHTS)[0])
    return kinds


def tools_for(kinds: list[str]) -> list[dict[str, Any]]:
    """Tool definitions (as a request would carry them) that allow `kinds`."""
    tool_of = {kind: tool for tool, kind in KIND_OF_TOOL.items()}
    tool_of["web_search_call"], tool_of["a2a_preview_call"] = "web_search", "a2a_preview"
    tool_of["memory_search_call"] = "memory_search"
    out: list[dict[str, Any]] = []
    for kind in dict.fromkeys(kinds):
        tool = tool_of.get(kind)
        if tool == "function":
            out.append({"type": "function", "name": "lookup_order", "description": "Look an order up.",
                        "parameters": {"type": "object", "properties": {"order_id": {"type": "string"}}},
                        "strict": True})  # fmt: skip
        elif tool == "file_search":
            out.append({"type": "file_search", "vector_store_ids": ["vs_sim_docs"]})
        elif tool == "code_interpreter":
            out.append({"type": "code_interpreter", "container": {"type": "auto"}})
        elif tool == "mcp":
            out.append({"type": "mcp", "server_label": "docs", "server_url": "https://mcp.example.invalid/sse",
                        "require_approval": "never"})  # fmt: skip
        elif tool is not None:
            out.append({"type": tool})
    return out


def _outcome(rng: random.Random, scenario: Scenario, background: bool) -> str:
    roll = rng.random()  # drawn always, so a response's later draws do not depend on `background`
    for name, rate in (("failed", scenario.failure_rate), ("incomplete", scenario.incomplete_rate),
                       ("cancelled", scenario.cancel_rate)):  # fmt: skip
        if roll < rate:
            return name if name != "cancelled" or background else "completed"
        roll -= rate
    return "completed"


def _usage(rng: random.Random, scenario: Scenario, model: str, cap: int | None) -> tuple[int, int, int, int]:
    prompt = rng.randint(*scenario.prompt_tokens)
    cached = 0 if rng.random() < 0.4 else int(prompt * rng.uniform(0.2, 0.9)) // 128 * 128
    completion = cap if cap is not None else rng.randint(*scenario.completion_tokens)
    reasoning = int(completion * rng.uniform(0.2, 0.7)) if reasons(model) else 0
    return prompt, cached, completion, reasoning


def build_response(
    rng: random.Random, scenario: Scenario, params: CreateParams, *, response_id: str, seq: int, created: float,
    model: str, input_items: list[dict[str, Any]], kinds: list[str], stuck_rate: float,
    knobs: ResponseKnobs | None = None,
) -> SimResponse:  # fmt: skip
    """The response `params` asks for, created at `created`, with tool calls of `kinds` (unless `knobs` fix them)."""
    knobs = knobs or ResponseKnobs()
    seconds = knobs.seconds

    def dur(span: tuple[float, float], share: float = 1.0) -> float:
        return seconds if seconds is not None else rng.uniform(*span) * share

    outcome = knobs.outcome or _outcome(rng, scenario, params.background)
    stuck = params.background and (rng.random() < stuck_rate or knobs.stuck)
    resp = SimResponse(
        id=response_id, seq=seq, created=created, start=created, end=INF, status="completed", model=model,
        background=params.background, store=params.store, request=_echo(params), input_items=input_items,
        conversation_id=params.conversation_id, previous_response_id=params.previous_response_id,
        agent=params.agent, metadata=dict(params.metadata),
    )  # fmt: skip
    queue = dur(scenario.queue_seconds)
    if stuck:
        resp.start, resp.status = INF, "queued"
        return resp
    if params.background:
        resp.start = created + queue
    make = ItemMaker(rng, resp, resp.start if params.background else created + queue)
    kinds = list(knobs.kinds) if knobs.kinds is not None else kinds
    if "function_call" in kinds:
        kinds = kinds[: kinds.index("function_call") + 1]
    if outcome == "failed":
        kinds = kinds[: rng.randint(0, len(kinds))]
    if reasons(model):
        make.reasoning(dur(scenario.step_seconds, 0.4))
    for kind in kinds:
        step = dur(scenario.step_seconds, 0.6)
        if kind in OUTPUT_PAIRS:
            make.azure_pair(kind, step)
        else:
            make.tool(kind, step)
    if outcome == "failed":
        code, message = _error(rng, knobs.error_code)
        resp.status, resp.error = "failed", (code, message)
    elif kinds and kinds[-1] == "function_call" and outcome != "incomplete":
        resp.status = "completed"
    else:
        reason = knobs.reason or ("max_output_tokens" if rng.random() < 0.7 else "content_filter")
        incomplete = outcome == "incomplete"
        make.message(dur(scenario.step_seconds, 0.5), incomplete=incomplete)
        if incomplete:
            resp.status, resp.incomplete_reason = "incomplete", reason
    resp.end = make.t + _FINAL_DELAY_S
    if resp.status in ("completed", "incomplete"):
        cap = params.extra.get("max_output_tokens") if resp.incomplete_reason == "max_output_tokens" else None
        resp.usage = _usage(rng, scenario, model, cap if isinstance(cap, int) else None)
    if outcome == "cancelled" and params.background:
        resp.cancel(created + rng.uniform(0.0, resp.end - created))
    return resp


def _error(rng: random.Random, code: str | None) -> tuple[str, str]:
    if code is not None:
        return code, next((m for c, m in ERRORS if c == code), f"The response failed ({code}).")
    return rng.choice(ERRORS)


def _echo(params: CreateParams) -> dict[str, Any]:
    """The request fields the Response object repeats."""
    return {"instructions": params.instructions, "tools": params.tools, **params.extra}


def function_output(rng: random.Random, call_id: str) -> dict[str, Any]:
    """The input item an application sends back for a function call (workload follow-ups)."""
    return {"type": "function_call_output", "call_id": call_id,
            "output": json.dumps({"status": "shipped", "eta_days": rng.randint(1, 9)})}  # fmt: skip
