"""Wire shapes of simulated objects at a point in time, as the Assistants v2 API serialises them.

OpenAI flavour: every field present, nullable ones null. Azure flavour: `usage` left out where the plan says so,
`required_action` left out when null, list envelopes reduced to `{data, last_id, has_more}`.
Terminal runs carry exactly the timestamp of their status (`incomplete` uses `completed_at`; `expired` has no
timestamp of its own and keeps `expires_at`, which is null on every other terminal status). Messages have the same
shape on both flavours.
"""

from __future__ import annotations

import json
from typing import Any

from stepscope.simulator.messages import SimMessage, ThreadMessage
from stepscope.simulator.state import RUN_TERMINAL, SimRun, SimStep, SimThread

_DUMPS = json.JSONEncoder(separators=(",", ":")).encode
_CONTENT_INCLUDE = "step_details.tool_calls[*].file_search.results[*].content"
_TERMINAL_FIELD = {"completed": "completed_at", "failed": "failed_at", "cancelled": "cancelled_at"}


def dumps(obj: Any) -> bytes:
    """Compact JSON bytes, as every response body is encoded."""
    return _DUMPS(obj).encode()


def wants_content(include: list[str]) -> bool:
    return _CONTENT_INCLUDE in include


def step_dict(run: SimRun, step: SimStep, t: float, *, content: bool, azure: bool) -> dict[str, Any]:
    """The `thread.run.step` object of `step` at time `t`."""
    sp = step.plan
    done = t >= step.end
    filled = step.outputs_at is not None and t >= step.outputs_at
    status = step.end_status if done else "in_progress"
    end = int(step.end) if done else None
    if sp.kind == "message_creation":
        details: dict[str, Any] = {"type": "message_creation", "message_creation": {"message_id": sp.message_id}}
    else:
        details = {"type": "tool_calls", "tool_calls": [_call(c, step, filled, content) for c in sp.calls]}
    usage = None
    if done:
        prompt, completion = sp.usage
        usage = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
    obj: dict[str, Any] = {
        "id": sp.id,
        "object": "thread.run.step",
        "created_at": int(step.created),
        "run_id": run.id,
        "assistant_id": run.assistant_id,
        "thread_id": run.thread_id,
        "type": sp.kind,
        "status": status,
        "cancelled_at": end if status == "cancelled" else None,
        "completed_at": end if status == "completed" else None,
        "expired_at": end if status == "expired" else None,
        "failed_at": end if status == "failed" else None,
        "last_error": {"code": step.error[0], "message": step.error[1]} if done and step.error else None,
        "step_details": details,
        "usage": usage,
        "metadata": {},
    }
    if azure and sp.omit_usage:
        del obj["usage"]
    return obj


def _call(call: dict[str, Any], step: SimStep, filled: bool, content: bool) -> dict[str, Any]:
    kind = call["type"]
    if kind == "function":
        fn = dict(call["function"])
        fn["output"] = step.outputs.get(call["id"]) if filled else None
        return {"id": call["id"], "type": "function", "function": fn}
    if kind == "file_search" and content:
        body = dict(call["file_search"])
        body["results"] = [
            {**r, "content": [{"type": "text", "text": f"Excerpt of {r['file_name']}."}]} for r in body["results"]
        ]
        return {"id": call["id"], "type": kind, "file_search": body}
    return call


def step_bytes(run: SimRun, step: SimStep, t: float, *, content: bool, azure: bool) -> bytes:
    """`step_dict` encoded, cached per step state: a step has at most a handful of distinct states."""
    key = (t >= step.end, step.outputs_at is not None and t >= step.outputs_at, content)
    cached: bytes | None = step.cache.get(key)
    if cached is None:
        cached = step.cache[key] = dumps(step_dict(run, step, t, content=content, azure=azure))
    return cached


def run_dict(run: SimRun, t: float, *, azure: bool) -> dict[str, Any]:
    """The `thread.run` object of `run` at time `t`."""
    status, action_step = run.status_at(t)
    terminal = status in RUN_TERMINAL
    end = int(run.terminal_at) if terminal else None
    field = _TERMINAL_FIELD.get(status, "completed_at" if status == "incomplete" else "")
    required = None
    if action_step >= 0:
        calls = [
            {"id": c["id"], "type": "function", "function": {k: c["function"][k] for k in ("name", "arguments")}}
            for c in run.plan.steps[action_step].calls
        ]
        required = {"type": "submit_tool_outputs", "submit_tool_outputs": {"tool_calls": calls}}
    usage = None
    if terminal:
        prompt = completion = 0
        for step in run.steps:
            prompt += step.plan.usage[0]
            completion += step.plan.usage[1]
        usage = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
    error = None
    if status == "failed" and run.plan.error:
        error = {"code": run.plan.error[0], "message": run.plan.error[1]}
    opts = run.options
    obj: dict[str, Any] = {
        "id": run.id,
        "object": "thread.run",
        "created_at": int(run.created),
        "assistant_id": run.assistant_id,
        "thread_id": run.thread_id,
        "status": status,
        "started_at": int(run.started) if run.started is not None and t >= run.started else None,
        "expires_at": int(run.expires_at) if not terminal or status == "expired" else None,
        "cancelled_at": end if field == "cancelled_at" else None,
        "failed_at": end if field == "failed_at" else None,
        "completed_at": end if field == "completed_at" else None,
        "required_action": required,
        "last_error": error,
        "model": run.model,
        "instructions": run.instructions,
        "tools": run.tools,
        "metadata": run.metadata,
        "incomplete_details": {"reason": run.plan.incomplete_reason} if status == "incomplete" else None,
        "usage": usage,
        "temperature": opts.get("temperature", 1.0),
        "top_p": opts.get("top_p", 1.0),
        "max_prompt_tokens": opts.get("max_prompt_tokens"),
        "max_completion_tokens": opts.get("max_completion_tokens"),
        "truncation_strategy": opts.get("truncation_strategy") or {"type": "auto", "last_messages": None},
        "tool_choice": opts.get("tool_choice", "auto"),
        "parallel_tool_calls": opts.get("parallel_tool_calls", True),
        "response_format": opts.get("response_format", "auto"),
    }
    if azure and required is None:
        del obj["required_action"]
    return obj


def thread_dict(thread: SimThread) -> dict[str, Any]:
    return {
        "id": thread.id,
        "object": "thread",
        "created_at": int(thread.created),
        "metadata": thread.metadata,
        "tool_resources": {},
    }


def message_dict(message: ThreadMessage, t: float, *, opening: bool = False) -> dict[str, Any]:
    """The `thread.message` object of `message` at `t`. `opening`: as the stream's `thread.message.created` shows a
    run's message, in progress and still empty.

    A written message is completed at its creation (`completed_at` equals `created_at`) and has no run or
    assistant; a run's message carries both, its text so far and, once it ended, its end and incomplete reason.
    """
    if isinstance(message, SimMessage):
        created = int(message.created)
        return {
            "id": message.id,
            "object": "thread.message",
            "created_at": created,
            "assistant_id": None,
            "thread_id": message.thread_id,
            "run_id": None,
            "status": "completed",
            "incomplete_details": None,
            "incomplete_at": None,
            "completed_at": created,
            "role": message.role,
            "content": message.content,
            "attachments": message.attachments,
            "metadata": message.metadata,
        }
    run = message.run
    status, text, end, reason = ("in_progress", "", None, None) if opening else message.state(t)
    return {
        "id": message.id,
        "object": "thread.message",
        "created_at": int(message.step.created),
        "assistant_id": run.assistant_id,
        "thread_id": run.thread_id,
        "run_id": run.id,
        "status": status,
        "incomplete_details": {"reason": reason} if reason else None,
        "incomplete_at": int(end) if end is not None and reason else None,
        "completed_at": int(end) if end is not None and not reason else None,
        "role": "assistant",
        "content": [{"type": "text", "text": {"value": text, "annotations": []}}] if text else [],
        "attachments": [],
        "metadata": {},
    }


def message_delta(message_id: str, chunk: str, *, first: bool) -> dict[str, Any]:
    """A `thread.message.delta` object adding `chunk` to the text part; the first delta creates the part."""
    text: dict[str, Any] = {"value": chunk, "annotations": []} if first else {"value": chunk}
    return {
        "id": message_id,
        "object": "thread.message.delta",
        "delta": {"content": [{"index": 0, "type": "text", "text": text}]},
    }


def list_bytes(items: list[bytes], first_id: str | None, last_id: str | None, has_more: bool, *, azure: bool) -> bytes:
    """A list envelope around already encoded items (OpenAI: five keys; Azure: `data`, `last_id`, `has_more`)."""
    more = b"true" if has_more else b"false"
    last = dumps(last_id)
    if azure:
        return b'{"data":[' + b",".join(items) + b'],"last_id":' + last + b',"has_more":' + more + b"}"
    head = b'{"object":"list","data":[' + b",".join(items) + b'],"first_id":' + dumps(first_id)
    return head + b',"last_id":' + last + b',"has_more":' + more + b"}"
