"""Output and input items of simulated responses, with the fields the openai SDK 3.57 declares for each type.

`ItemMaker` appends output items to a response, moving a time cursor forward: each item exists from `added` and is
done at `done`, when its late fields (message text, tool output, search results) appear. About one hosted tool
call in ten fails (`status: failed`, MCP with an `http_error`). Foundry's tool calls (`bing_grounding_call`,
`azure_ai_search_call`, `openapi_call`, `azure_function_call`, `a2a_preview_call`) are followed by their `_output`
item; `memory_search_call` and `workflow_action` are single items. `input_items` turns a request's `input` into
the items `input_items` and conversations list.
"""

from __future__ import annotations

import json
import random
from typing import Any

from stepscope.simulator.responses.state import SimItem, SimResponse

REASONING_PREFIXES = ("o1", "o3", "o4", "gpt-5")
OUTPUT_PAIRS = frozenset({"bing_grounding_call", "azure_ai_search_call", "openapi_call", "azure_function_call",
                          "a2a_preview_call"})  # fmt: skip
_PREFIX = {
    "message": "msg", "reasoning": "rs", "function_call": "fc", "function_call_output": "fco",
    "file_search_call": "fs", "web_search_call": "ws", "code_interpreter_call": "ci", "mcp_call": "mcp",
    "image_generation_call": "ig", "bing_grounding_call": "bgc", "azure_ai_search_call": "aisc",
    "openapi_call": "oac", "azure_function_call": "afc", "a2a_preview_call": "a2a", "memory_search_call": "msc",
    "workflow_action": "wfa",
}  # fmt: skip
_ANSWERS = (
    "Your order shipped yesterday and should arrive within three days.",
    "Here is a short summary of the documents you asked about, with the key figures highlighted.",
    "The forecast for Lisbon is sunny with a high of 24 degrees.",
    "I compared the two plans: the second one is cheaper for teams of more than ten people.",
)
_TOOL_FAILURE_RATE = 0.1
# A 1x1 transparent PNG: image_generation_call results are base64 images.
_PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAQAAAC1HAwCAAAAC0lEQVR42mNkYAAAAAYAAjCB0C8AAAAASUVORK5CYII="


def hex_id(rng: random.Random, prefix: str) -> str:
    """`prefix_` and 48 hex digits, the shape of the API's response and item ids."""
    return f"{prefix}_{rng.getrandbits(192):048x}"


def item_id(rng: random.Random, type_: str) -> str:
    """A new id for an item of `type_` (a Foundry `_output` item takes its call's prefix plus `o`)."""
    base = type_.removesuffix("_output")
    prefix = _PREFIX.get(type_) or (_PREFIX[base] + "o" if base in _PREFIX else "item")
    return hex_id(rng, prefix)


def input_items(rng: random.Random, raw: str | list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The items a request's `input` becomes: a string is one user message; messages get ids, a status and typed
    content; other items get an id when they have none."""
    entries: list[dict[str, Any]] = [{"role": "user", "content": raw}] if isinstance(raw, str) else raw
    out: list[dict[str, Any]] = []
    for entry in entries:
        if entry.get("type", "message") == "message" and "role" in entry:
            role = entry["role"]
            kind = "output_text" if role == "assistant" else "input_text"
            content = entry.get("content", "")
            if isinstance(content, str):
                content = [{"type": kind, "text": content, **({"annotations": []} if role == "assistant" else {})}]
            out.append({"id": entry.get("id") or item_id(rng, "message"), "type": "message", "role": role,
                        "content": content, "status": "completed"})  # fmt: skip
        else:
            item = {"id": entry.get("id") or item_id(rng, str(entry.get("type"))), **entry}
            if item.get("type") == "function_call_output":
                item.setdefault("status", "completed")
            out.append(item)
    return out


class ItemMaker:
    """Appends items to `resp.output` from time `t` on; `t` is where the next item starts."""

    def __init__(self, rng: random.Random, resp: SimResponse, t: float) -> None:
        self.rng = rng
        self.resp = resp
        self.t = t

    def add(self, type_: str, span: float, status: str | None, fields: dict[str, Any],
            after: dict[str, Any] | None = None) -> SimItem:  # fmt: skip
        item = SimItem(type_, item_id(self.rng, type_), added=self.t, done=self.t + span, status=status,
                       fields=fields, done_fields=after)  # fmt: skip
        self.resp.output.append(item)
        self.t += span
        return item

    def _status(self) -> str:
        return "failed" if self.rng.random() < _TOOL_FAILURE_RATE else "completed"

    def reasoning(self, span: float) -> None:
        summary = [{"type": "summary_text", "text": "**Planning the answer**\n\nWorking out which tools help."}]
        self.add("reasoning", span, "completed", {"summary": [], "encrypted_content": None}, {"summary": summary})

    def message(self, span: float, *, incomplete: bool) -> None:
        text = self.rng.choice(_ANSWERS)
        if incomplete:
            text = text[: len(text) // 2]
        content = [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]
        item = self.add("message", span, "incomplete" if incomplete else "completed",
                        {"role": "assistant", "content": []}, {"content": content})  # fmt: skip
        item.text = text

    def tool(self, kind: str, span: float) -> None:
        rng = self.rng
        if kind == "function_call":
            args = json.dumps({"order_id": f"ord_{rng.randrange(10_000)}"})
            fields: dict[str, Any] = {"call_id": hex_id(rng, "call"), "name": "lookup_order", "arguments": args}
            self.add(kind, span, "completed", fields)
        elif kind == "file_search_call":
            results = [{"file_id": "file-sim001", "filename": "handbook.pdf", "score": 0.82, "text": "Refunds..."}]
            self.add(kind, span, self._status(), {"queries": ["refund policy"], "results": None}, {"results": results})
        elif kind == "web_search_call":
            action = {"type": "search", "query": f"weather lisbon {rng.randrange(100)}", "sources": None}
            self.add(kind, span, self._status(), {"action": action})
        elif kind == "code_interpreter_call":
            fields = {"code": "import pandas as pd\nprint(pd.__version__)", "container_id": hex_id(rng, "cntr"),
                      "outputs": None}  # fmt: skip
            self.add(kind, span, self._status(), fields, {"outputs": [{"type": "logs", "logs": "2.2.3\n"}]})
        elif kind == "mcp_call":
            status = self._status()
            fields = {"server_label": "docs", "name": "search_docs", "arguments": json.dumps({"q": "pricing"}),
                      "output": None, "error": None, "approval_request_id": None}  # fmt: skip
            after = ({"error": {"type": "http_error", "code": 502, "message": "upstream returned 502"}}
                     if status == "failed" else {"output": "Pricing: $10 per seat."})  # fmt: skip
            self.add(kind, span, status, fields, after)
        elif kind == "image_generation_call":
            status = self._status()
            after = {"result": _PNG, "revised_prompt": "A small blue square"} if status == "completed" else {}
            self.add(kind, span, status, {"result": None, "output_format": "png"}, after)
        elif kind == "memory_search_call":
            memories = [{"memory_id": hex_id(rng, "mem"), "content": "Prefers window seats."}]
            self.add(kind, span, self._status(), {"memories": None}, {"memories": memories})
        elif kind == "workflow_action":
            previous = next((i.fields["action_id"] for i in reversed(self.resp.output)
                             if i.type == "workflow_action"), None)  # fmt: skip
            fields = {"kind": "InvokeAzureAgent", "action_id": f"action_{rng.randrange(10**6)}",
                      "parent_action_id": None, "previous_action_id": previous}  # fmt: skip
            self.add(kind, span, self._status(), fields)
        else:
            raise ValueError(f"unknown tool-call kind {kind!r}")

    def azure_pair(self, kind: str, span: float) -> None:
        """A Foundry tool call and its `_output` item (added when the call is done)."""
        rng = self.rng
        call: dict[str, Any] = {"call_id": hex_id(rng, "call"), "arguments": json.dumps({"query": "contoso news"})}
        if kind in ("openapi_call", "azure_function_call", "a2a_preview_call"):
            call["name"] = {"openapi_call": "get_forecast", "azure_function_call": "queue_order",
                            "a2a_preview_call": "travel-agent"}[kind]  # fmt: skip
        status = self._status()
        self.add(kind, span * 0.8, status, call)
        output = {k: v for k, v in call.items() if k != "arguments"}
        after = {"output": json.dumps({"results": rng.randint(1, 9)})} if status == "completed" else {}
        self.add(kind + "_output", span * 0.2, status, {**output, "output": None}, after)
