"""Wire shapes of the simulated Responses API objects at a point in time, as the openai SDK 3.57 types them.

`Response` (types/responses/response.py) with every field it declares (nullable ones null), `Conversation`
(types/conversations/conversation.py), output items (`ResponseOutputItem`) and list envelopes. Timestamps
(`created_at`, `completed_at`) are whole Unix seconds; `completed_at` is set only while the status is
`completed`, and `usage` only on completed and incomplete responses. On the azure flavour (Foundry) a response
carries `agent_reference` (null for plain model responses) and every item its `response_id` and
`agent_reference`, as Foundry's ItemResource adds them.
"""

from __future__ import annotations

from typing import Any

from stepscope.simulator.responses.state import SimConversation, SimItem, SimResponse


def usage_dict(usage: tuple[int, int, int, int] | None) -> dict[str, Any] | None:
    """`ResponseUsage` from (input, cached, output, reasoning) tokens."""
    if usage is None:
        return None
    inp, cached, out, reasoning = usage
    return {
        "input_tokens": inp,
        "input_tokens_details": {"cached_tokens": cached, "cache_write_tokens": 0},
        "output_tokens": out,
        "output_tokens_details": {"reasoning_tokens": reasoning},
        "total_tokens": inp + out,
    }


def item_dict(item: SimItem, t: float, resp: SimResponse | None, *, azure: bool) -> dict[str, Any]:
    """The output item `item` as of `t`: `in_progress` until done, then its final status and late fields."""
    out: dict[str, Any] = {"id": item.id, "type": item.type, **item.fields}
    done = t >= item.done
    if done:
        out.update(item.done_fields)
    if item.status is not None:
        out["status"] = item.status if done else "in_progress"
    if azure:
        _foundry(out, resp)
    return out


def stored_item_dict(entry: dict[str, Any] | SimItem, resp: SimResponse | None, *, azure: bool) -> dict[str, Any]:
    """An item as `input_items` and conversations list it (input dicts as stored, output items finished)."""
    if isinstance(entry, SimItem):
        return item_dict(entry, entry.done, resp, azure=azure)
    out = dict(entry)
    if azure:
        _foundry(out, resp)
    return out


def _foundry(out: dict[str, Any], resp: SimResponse | None) -> None:
    out["response_id"] = resp.id if resp is not None else None
    out["agent_reference"] = dict(resp.agent) if resp is not None and resp.agent is not None else None


def response_dict(resp: SimResponse, t: float, *, azure: bool) -> dict[str, Any]:
    """The `response` object of `resp` at `t`."""
    status = resp.status_at(t)
    req = resp.request
    reasoning = req.get("reasoning")
    obj: dict[str, Any] = {
        "id": resp.id,
        "object": "response",
        "created_at": int(resp.created),
        "status": status,
        "background": resp.background,
        "completed_at": int(resp.end) if status == "completed" else None,
        "conversation": {"id": resp.conversation_id} if resp.conversation_id else None,
        "error": {"code": resp.error[0], "message": resp.error[1], "param": None, "type": None}
        if status == "failed" and resp.error
        else None,
        "incomplete_details": {"reason": resp.incomplete_reason} if status == "incomplete" else None,
        "instructions": req.get("instructions"),
        "max_output_tokens": req.get("max_output_tokens"),
        "max_tool_calls": req.get("max_tool_calls"),
        "metadata": dict(resp.metadata),
        "model": resp.model,
        "output": [item_dict(item, t, resp, azure=azure) for item in resp.visible_output(t)],
        "parallel_tool_calls": req.get("parallel_tool_calls", True),
        "previous_response_id": resp.previous_response_id,
        "prompt": req.get("prompt"),
        "prompt_cache_key": req.get("prompt_cache_key"),
        "reasoning": reasoning if isinstance(reasoning, dict) else {"effort": None, "summary": None},
        "safety_identifier": req.get("safety_identifier"),
        "service_tier": req.get("service_tier", "default"),
        "store": resp.store,
        "temperature": req.get("temperature", 1.0),
        "text": req.get("text") or {"format": {"type": "text"}, "verbosity": "medium"},
        "tool_choice": req.get("tool_choice", "auto"),
        "tools": list(req.get("tools") or []),
        "top_logprobs": req.get("top_logprobs", 0),
        "top_p": req.get("top_p", 1.0),
        "truncation": req.get("truncation", "disabled"),
        "usage": usage_dict(resp.usage) if status in ("completed", "incomplete") else None,
        "user": req.get("user"),
    }
    if azure:
        obj["agent_reference"] = dict(resp.agent) if resp.agent is not None else None
    return obj


def conversation_dict(conv: SimConversation) -> dict[str, Any]:
    return {"id": conv.id, "object": "conversation", "created_at": int(conv.created), "metadata": dict(conv.metadata)}


def page(data: list[dict[str, Any]], more: bool) -> dict[str, Any]:
    """A cursor-page envelope: `first_id`/`last_id` of `data` (null when empty) and `has_more`."""
    first = data[0].get("id") if data else None
    last = data[-1].get("id") if data else None
    return {"object": "list", "data": data, "first_id": first, "last_id": last, "has_more": more}


def deleted_dict(resp_id: str) -> dict[str, Any]:
    return {"id": resp_id, "object": "response.deleted", "deleted": True}
