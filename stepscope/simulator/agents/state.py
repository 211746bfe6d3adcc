"""Simulated Agents API objects with lazily evaluated timelines: sessions, turns, items and subagents.

A turn's whole future (status transitions, items with the times they appear and finish, usage increments, the
subagents it opens) is fixed when the turn is created (`plan.build_root_turn`); nothing a client does changes it,
because the simulated Agents API is read-only. The state at time `t` is then a lookup: a bisect over the
transition times, a prefix of the items by their `added` time.

Items carry no timestamps on the wire: `added` and `done` are the simulator's own bookkeeping, used for the item's
status at `t` and for the spans of the published trace.
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass, field
from typing import Any

TURN_TERMINAL = frozenset({"completed", "failed", "cancelled"})
TOOL_CALL_TYPES = frozenset({"function_call", "mcp_call", "web_search_call", "command_execution", "computer_use_call"})
"""Item types that are tool calls: a tool span in the published trace, a `tool_calls` count in the truth."""


class SimItem:
    """One item of a turn. `status` is the final status (None: the type has no status field).

    Before `done` an item with a status shows `in_progress`; `done_fields` are merged in once it is done.
    `cursor` is the opaque page cursor used when the item has no id (legacy user messages).
    """

    __slots__ = ("added", "cursor", "done", "done_fields", "fields", "id", "status", "turn_id", "type")

    def __init__(
        self,
        type_: str,
        item_id: str | None,
        turn_id: str,
        *,
        added: float,
        done: float,
        status: str | None,
        fields: dict[str, Any],
        done_fields: dict[str, Any] | None = None,
    ) -> None:
        self.type = type_
        self.id = item_id
        self.turn_id = turn_id
        self.added = added
        self.done = done
        self.status = status
        self.fields = fields
        self.done_fields = done_fields or {}
        self.cursor = item_id or ""  # set by `SimTurn.seal` for items without an id

    def status_at(self, t: float) -> str | None:
        if self.status is None:
            return None
        return self.status if t >= self.done else "in_progress"

    def tool_name(self) -> str:
        """The tool a tool-call item used: its `name` (function_call, mcp_call), else its type."""
        name = self.fields.get("name")
        return name if isinstance(name, str) else self.type


@dataclass(slots=True)
class Wait:
    """An interval in which the turn waits for a client's function output (session status requires_action)."""

    start: float
    end: float
    call_id: str
    name: str
    arguments: str


class SimTurn:
    """A root or subagent turn: transitions, items in creation order, usage increments, subagents opened."""

    __slots__ = (
        "agent_id", "created", "end", "error", "id", "items", "items_added", "model", "otlp", "publish_at",
        "session_id", "started", "status", "subagent_id", "subagents", "trans", "trans_times", "usage_events",
        "waits",
    )  # fmt: skip

    def __init__(
        self,
        turn_id: str,
        session_id: str,
        agent_id: str,
        model: str,
        created: float,
        *,
        subagent_id: str | None = None,
    ) -> None:
        self.id = turn_id
        self.session_id = session_id
        self.agent_id = agent_id
        self.model = model
        self.subagent_id = subagent_id
        self.created = created
        self.started: float | None = None
        self.end = created
        self.status = "completed"
        self.error: tuple[str, str] | None = None
        self.trans: list[tuple[float, str]] = [(created, "queued")]
        self.trans_times: list[float] = []
        self.items: list[SimItem] = []
        self.items_added: list[float] = []
        self.usage_events: list[tuple[float, int, int, int, int]] = []  # (time, input, cached, output, reasoning)
        self.waits: list[Wait] = []
        self.subagents: list[SimSubagent] = []
        self.publish_at = float("inf")
        self.otlp: dict[str, Any] | None = None

    def seal(self) -> None:
        """Index the timeline once it is final (after building and any cut)."""
        self.trans.sort(key=lambda tr: tr[0])
        self.trans_times = [tr[0] for tr in self.trans]
        self.items_added = [item.added for item in self.items]
        for k, item in enumerate(self.items):
            item.cursor = item.id or f"itemcursor_{self.id}_{k}"

    def status_at(self, t: float) -> str:
        i = bisect_right(self.trans_times, t) - 1
        return self.trans[max(i, 0)][1]

    def terminal_at(self, t: float) -> bool:
        return t >= self.end

    def visible_items(self, t: float) -> int:
        """How many items exist at `t` (items appear in order, so they are a prefix)."""
        return bisect_right(self.items_added, t)

    def usage_at(self, t: float) -> tuple[int, int, int, int] | None:
        """(input, cached, output, reasoning) tokens recorded by `t`, or None when nothing was recorded yet."""
        events = [e for e in self.usage_events if e[0] <= t]
        if not events:
            return None
        return (sum(e[1] for e in events), sum(e[2] for e in events), sum(e[3] for e in events),
                sum(e[4] for e in events))  # fmt: skip

    def wait_at(self, t: float) -> Wait | None:
        return next((w for w in self.waits if w.start <= t < w.end), None)

    def last_activity(self, t: float) -> float:
        """The latest transition at or before `t` (the turn's contribution to `last_active_at`)."""
        i = bisect_right(self.trans_times, t) - 1
        return self.trans_times[max(i, 0)]


class SimSubagent:
    """A subagent a root turn opened, with its own turns (usually one)."""

    __slots__ = ("closed", "id", "instructions", "name", "opened", "parent_agent_id", "session_id", "turns")

    def __init__(
        self, sub_id: str, session_id: str, parent_agent_id: str, *, name: str, instructions: str, opened: float
    ) -> None:
        self.id = sub_id
        self.session_id = session_id
        self.parent_agent_id = parent_agent_id
        self.name = name
        self.instructions = instructions
        self.opened = opened
        self.closed: float | None = None
        self.turns: list[SimTurn] = []


@dataclass(slots=True)
class SimSession:
    """A session: its root agent, its root turns in creation order (one at a time) and the subagents they opened.

    `failed_at` is set when a failed turn also fails the session (no turn follows it).
    """

    id: str
    agent: dict[str, Any]
    created: float
    metadata: dict[str, str]
    turns: list[SimTurn] = field(default_factory=list)
    turn_pos: dict[str, int] = field(default_factory=dict)
    turn_created: list[float] = field(default_factory=list)
    subagents: list[SimSubagent] = field(default_factory=list)
    subagent_pos: dict[str, int] = field(default_factory=dict)
    failed_at: float | None = None
    error: str | None = None

    def add_turn(self, turn: SimTurn) -> None:
        self.turn_pos[turn.id] = len(self.turns)
        self.turns.append(turn)
        self.turn_created.append(turn.created)
        for sub in turn.subagents:
            self.subagent_pos[sub.id] = len(self.subagents)
            self.subagents.append(sub)

    def visible_turns(self, t: float) -> int:
        return bisect_right(self.turn_created, t)

    def busy_until(self) -> float:
        """When the session can take its next turn: the end of its last turn (inf once the session failed)."""
        if self.failed_at is not None:
            return float("inf")
        return self.turns[-1].end if self.turns else self.created

    def active_turn(self, t: float) -> SimTurn | None:
        n = self.visible_turns(t)
        if n and not self.turns[n - 1].terminal_at(t):
            return self.turns[n - 1]
        return None

    def status_at(self, t: float) -> str:
        if self.failed_at is not None and t >= self.failed_at:
            return "failed"
        turn = self.active_turn(t)
        if turn is None:
            return "idle"
        return "requires_action" if turn.status_at(t) == "waiting" else "in_progress"

    def visible_subagents(self, t: float) -> list[SimSubagent]:
        return [s for s in self.subagents if s.opened <= t]
