"""The stream events of a simulated response, read off its timeline (the same for SSE and the WebSocket mode).

In order, each stamped with the simulated instant it happens at and numbered by `sequence_number` from 0:
`response.created` (status `queued` for a background response, else `in_progress`), `response.queued`
(background only), `response.in_progress` (when it leaves the queue), per output item `response.output_item.added`
and, when the item is done, `response.output_item.done` (a message adds `response.content_part.added`, three
`response.output_text.delta`, `response.output_text.done` and `response.content_part.done` in between), then
exactly one terminal event: `response.completed`, `response.incomplete`, or an `error` event followed by
`response.failed`. Lifecycle events carry the whole Response as of their instant.

A cancelled response has no terminal event (the API defines none): its events stop at the cancel instant. A
response stuck in `queued` sends `response.created` and `response.queued` and then nothing. Because a cancel only
removes events from its instant on, the number of every earlier event never changes, so `starting_after` resumes
are stable.
"""

from __future__ import annotations

from typing import Any

from stepscope.simulator.responses import serializers as ser
from stepscope.simulator.responses.state import INF, SimItem, SimResponse

_DELTAS = 3
Step = tuple[float, str, int, int]  # (instant, kind, output index, delta number)


def _chunks(text: str) -> list[str]:
    size = max(1, -(-len(text) // _DELTAS))
    return [text[k : k + size] for k in range(0, len(text), size)] or [""]


def _steps(resp: SimResponse) -> list[Step]:
    """Every event of the response's timeline, in order (instants never decrease)."""
    c = resp.created
    steps: list[Step] = [(c, "created", -1, 0)]
    if resp.background:
        steps.append((c, "queued", -1, 0))
    if resp.start < INF:
        steps.append((resp.start, "in_progress", -1, 0))
    for i, item in enumerate(resp.output):
        steps.append((item.added, "added", i, 0))
        if item.type == "message" and item.text is not None:
            steps.append((item.added, "part_added", i, 0))
            chunks = _chunks(item.text)
            gap = (item.done - item.added) / (len(chunks) + 1)
            steps += [(item.added + gap * (k + 1), "delta", i, k) for k in range(len(chunks))]
            steps += [(item.done, "text_done", i, 0), (item.done, "part_done", i, 0)]
        steps.append((item.done, "done", i, 0))
    if resp.status == "failed":
        steps.append((resp.end, "error", -1, 0))
    if resp.status != "cancelled":
        steps.append((resp.end, "terminal", -1, 0))
    return steps


def _last(resp: SimResponse, t: float) -> float:
    """The latest instant whose events exist at `t`: a cancelled response's stop strictly before the cancel."""
    if resp.status != "cancelled":
        return t
    return min(t, max(resp.end - 1e-9, resp.created))  # its created (and queued) events exist whatever happens


def _text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _render(resp: SimResponse, step: Step, seq: int, *, azure: bool) -> dict[str, Any]:
    at, kind, i, k = step
    head: dict[str, Any] = {"sequence_number": seq}
    if kind in ("created", "queued", "in_progress", "terminal"):
        name = resp.status if kind == "terminal" else kind
        return {"type": f"response.{name}", **head, "response": ser.response_dict(resp, at, azure=azure)}
    if kind == "error":
        code, message = resp.error or ("server_error", "The response failed.")
        return {"type": "error", **head, "code": code, "message": message, "param": None}
    item: SimItem = resp.output[i]
    where = {"output_index": i}
    if kind in ("added", "done"):
        event = "response.output_item.added" if kind == "added" else "response.output_item.done"
        return {"type": event, **head, **where, "item": ser.item_dict(item, at, resp, azure=azure)}
    text = item.text or ""
    part = {"item_id": item.id, **where, "content_index": 0}
    if kind == "part_added":
        return {"type": "response.content_part.added", **head, **part, "part": _text_part("")}
    if kind == "delta":
        return {"type": "response.output_text.delta", **head, **part, "delta": _chunks(text)[k], "logprobs": []}
    if kind == "text_done":
        return {"type": "response.output_text.done", **head, **part, "text": text, "logprobs": []}
    return {"type": "response.content_part.done", **head, **part, "part": _text_part(text)}


def events_until(resp: SimResponse, t: float, *, azure: bool, after: int = -1) -> list[dict[str, Any]]:
    """The events that happened by `t` with a `sequence_number` above `after`, in order."""
    last = _last(resp, t)
    out: list[dict[str, Any]] = []
    for seq, step in enumerate(_steps(resp)):
        if step[0] > last:
            break
        if seq > after:
            out.append(_render(resp, step, seq, azure=azure))
    return out


def next_instant(resp: SimResponse, t: float) -> float | None:
    """When the next event after `t` happens (None: no more events, or none planned)."""
    last = _last(resp, INF)
    return next((s[0] for s in _steps(resp) if t < s[0] <= last), None)
