"""Simulated Responses API objects with lazily evaluated timelines: responses, their items, conversations.

A response's whole future (when it leaves `queued`, when each output item is added and done, how it ends, its
usage) is fixed when it is created (`plan.build_response`). The one thing that can change it later is a cancel of
a background response, which cuts the timeline at the cancel instant (`SimResponse.cancel`); nothing before that
instant changes, so a client that read the response earlier never sees history rewritten.

Items carry no timestamps on the wire: `added` and `done` are the simulator's bookkeeping, used for an item's
status at `t` and for the spacing of stream events.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

RESPONSE_TERMINAL = frozenset({"completed", "failed", "cancelled", "incomplete"})
RESPONSE_STATUSES = ("queued", "in_progress", "completed", "failed", "cancelled", "incomplete")
# The status an item cut short by a cancel ends with, where its type has no `incomplete` status.
_CUT_STATUS = {"image_generation_call": "failed", "workflow_action": "cancelled"}
INF = float("inf")


class SimItem:
    """One output item. `status` is its final status (None: the type has no status field).

    Until `done` an item with a status shows `in_progress`; `done_fields` are merged in once it is done. `text`
    is a message's full text, which its stream deltas spell out (kept when a cancel cuts the message short).
    """

    __slots__ = ("added", "done", "done_fields", "fields", "id", "status", "text", "type")

    def __init__(
        self, type_: str, item_id: str, *, added: float, done: float, status: str | None, fields: dict[str, Any],
        done_fields: dict[str, Any] | None = None,
    ) -> None:  # fmt: skip
        self.type = type_
        self.id = item_id
        self.added = added
        self.done = done
        self.status = status
        self.fields = fields
        self.done_fields = done_fields or {}
        self.text: str | None = None

    def status_at(self, t: float) -> str | None:
        if self.status is None:
            return None
        return self.status if t >= self.done else "in_progress"

    def tool_name(self) -> str:
        """The tool a tool-call item used: its `name` where it has one (function_call, mcp_call, ...), else its
        type."""
        name = self.fields.get("name")
        return name if isinstance(name, str) else self.type


@dataclass(slots=True, eq=False)  # identity: two responses are never the same one
class SimResponse:
    """One response. `start` is when it leaves `queued` (== `created` unless background), `end` when it reaches
    `status`, its final status (`INF` for a background response stuck in `queued`).

    `request` keeps the echoed request fields (instructions, tools, temperature, ...); `input_items` are the
    input as items (wire dicts); `usage` is (input, cached, output, reasoning) tokens, set when it ends completed
    or incomplete. `seq` is the creation order, which breaks created_at ties in listings.
    """

    id: str
    seq: int
    created: float
    start: float
    end: float
    status: str
    model: str
    background: bool
    store: bool
    request: dict[str, Any]
    input_items: list[dict[str, Any]]
    output: list[SimItem] = field(default_factory=list)
    usage: tuple[int, int, int, int] | None = None
    error: tuple[str, str] | None = None
    incomplete_reason: str | None = None
    conversation_id: str | None = None
    previous_response_id: str | None = None
    agent: dict[str, Any] | None = None  # Foundry `agent_reference`
    metadata: dict[str, str] = field(default_factory=dict)
    source: str = "client"  # or "workload"
    deleted_at: float = INF

    def status_at(self, t: float) -> str:
        if t >= self.end:
            return self.status
        return "queued" if t < self.start else "in_progress"

    def terminal_at(self, t: float) -> bool:
        return t >= self.end

    def stuck(self) -> bool:
        """A background response that never leaves `queued` (the known server bug)."""
        return self.start == INF and self.end == INF

    def visible_output(self, t: float) -> list[SimItem]:
        return [item for item in self.output if item.added <= t]

    def exists_at(self, t: float) -> bool:
        """Stored and not deleted at `t`: what GET, the listings and input_items can see."""
        return self.store and self.created <= t < self.deleted_at

    def cancel(self, at: float) -> None:
        """End the response `cancelled` at `at` (before its planned end): later items vanish, open ones end
        `incomplete` (`failed`, `cancelled` for types without it) without their late fields; no usage."""
        self.output = [item for item in self.output if item.added <= at]
        for item in self.output:
            if item.done > at:
                item.done, item.done_fields = at, {}
                if item.status is not None:
                    item.status = _CUT_STATUS.get(item.type, "incomplete")
        if self.start > at:
            self.start = INF  # cancelled while queued: it never started
        self.end, self.status = at, "cancelled"
        self.usage, self.error, self.incomplete_reason = None, None, None


@dataclass(slots=True, eq=False)
class SimConversation:
    """A conversation: its own items (given at creation) and the responses created in it, in creation order.

    Items join in time order: a response's input items when it is created, its output items when it ends
    completed or incomplete (a failed or cancelled response adds only its input).
    """

    id: str
    created: float
    metadata: dict[str, str]
    items: list[dict[str, Any]] = field(default_factory=list)
    responses: list[SimResponse] = field(default_factory=list)
    until: float = 0.0  # the latest planned end of its responses (a later cancel may end one sooner)

    def add(self, resp: SimResponse) -> None:
        self.responses.append(resp)
        self.until = max(self.until, resp.end)

    def busy_until(self) -> float:
        """When the conversation can take its next workload response: the end of its last one."""
        return max(self.until, self.created)

    def items_at(self, t: float) -> list[tuple[dict[str, Any] | SimItem, SimResponse | None]]:
        """The items that joined by `t`, oldest first: input items as wire dicts, output items as `SimItem`s
        (finished by then), each with the response that added it (None: created with the conversation)."""
        timed: list[tuple[float, int, int, dict[str, Any] | SimItem, SimResponse | None]] = [
            (self.created, -1, k, item, None) for k, item in enumerate(self.items)
        ]
        for r in self.responses:
            if r.created > t:
                continue
            timed += [(r.created, r.seq, k, item, r) for k, item in enumerate(r.input_items)]
            if r.end <= t and r.status in ("completed", "incomplete"):
                timed += [(r.end, r.seq, len(r.input_items) + k, item, r) for k, item in enumerate(r.output)]
        timed.sort(key=lambda x: (x[0], x[1], x[2]))
        return [(item, r) for _, _, _, item, r in timed]
