"""What really happened on the simulated Agents API, for tests to compare counters and spans against.

`agents_truth(engine, t)` returns

```
{"now": int, "agents": [{id, name, model, instructions}],
 "sessions": [<agent.session as served> + {"turns": [<turn> + {"items", "sim_completed_at", "trace"}],
                                          "subagents": [<subagent> + {"turns": [...]}]}],
 "stats": {"sessions", "turns": {"root", "subagent"},
           "terminal_turns": {"root"|"subagent": {"completed", "failed", "cancelled"}},
           "failed_turns_by_code": {"root"|"subagent": {code: n}},
           "usage": {"root"|"subagent": {"input_tokens", "cached_tokens", "output_tokens", "reasoning_tokens",
                                         "total_tokens"}},
           "items": {"root"|"subagent": {type: {status: n}}},
           "tool_calls": {"root"|"subagent": {type: {tool name: n}}},
           "traces": {root turn id: {"trace_id", "span_ids"}}}}
```

`usage`, `items` and `tool_calls` cover terminal turns only (their values are final): an item without a status
field (`agent_message`) counts under status `none`; tool-call items are function_call, mcp_call,
web_search_call, command_execution and computer_use_call, named by their `name` field where they have one
(function_call, mcp_call) and by their type otherwise. `traces` lists the traces published by `t`.
`sim_completed_at` is a terminal turn's exact (sub-second) end.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from stepscope.simulator.agents import serializers as ser
from stepscope.simulator.agents.engine import AgentsEngine
from stepscope.simulator.agents.otlp import build_trace, span_ids
from stepscope.simulator.agents.state import TOOL_CALL_TYPES, SimTurn

_USAGE_KEYS = ("input_tokens", "cached_tokens", "output_tokens", "reasoning_tokens")


class _Tally:
    def __init__(self) -> None:
        self.turns = 0
        self.terminal: Counter[str] = Counter({"completed": 0, "failed": 0, "cancelled": 0})
        self.codes: Counter[str] = Counter()
        self.usage: Counter[str] = Counter(dict.fromkeys(_USAGE_KEYS, 0))
        self.items: dict[str, Counter[str]] = {}
        self.tools: dict[str, Counter[str]] = {}

    def add(self, turn: SimTurn, t: float) -> None:
        self.turns += 1
        if not turn.terminal_at(t):
            return
        self.terminal[turn.status] += 1
        if turn.error is not None and turn.status == "failed":
            self.codes[turn.error[0]] += 1
        usage = turn.usage_at(t)
        if usage is not None:
            self.usage.update(dict(zip(_USAGE_KEYS, usage, strict=True)))
        for item in turn.items:
            self.items.setdefault(item.type, Counter())[item.status or "none"] += 1
            if item.type in TOOL_CALL_TYPES:
                self.tools.setdefault(item.type, Counter())[item.tool_name()] += 1

    def usage_dict(self) -> dict[str, int]:
        return {**self.usage, "total_tokens": self.usage["input_tokens"] + self.usage["output_tokens"]}


def _turn(turn: SimTurn, t: float, seed: int) -> dict[str, Any]:
    obj = ser.turn_dict(turn, t)
    obj["items"] = [ser.item_dict(item, t) for item in turn.items[: turn.visible_items(t)]]
    obj["sim_completed_at"] = turn.end if turn.terminal_at(t) else None
    obj["trace"] = None
    if turn.publish_at <= t:
        otlp = turn.otlp or build_trace(turn, seed)
        turn.otlp = otlp
        trace_id = otlp["resourceSpans"][0]["scopeSpans"][0]["spans"][0]["traceId"]
        obj["trace"] = {"trace_id": trace_id, "span_ids": span_ids(otlp)}
    return obj


def agents_truth(engine: AgentsEngine, t: float) -> dict[str, Any]:
    """Every session, turn, item, subagent and published trace as served at `t`, plus the tallies above."""
    root, sub = _Tally(), _Tally()
    sessions = []
    traces: dict[str, Any] = {}
    for session in engine.order:
        if session.created > t:
            continue
        obj = ser.session_dict(session, t)
        obj["turns"] = []
        for turn in session.turns[: session.visible_turns(t)]:
            root.add(turn, t)
            entry = _turn(turn, t, engine.seed)
            obj["turns"].append(entry)
            if entry["trace"] is not None:
                traces[turn.id] = entry["trace"]
        obj["subagents"] = []
        for subagent in session.visible_subagents(t):
            visible = [x for x in subagent.turns if x.created <= t]
            for turn in visible:
                sub.add(turn, t)
            obj["subagents"].append({**ser.subagent_dict(subagent, t),
                                     "turns": [_turn(x, t, engine.seed) for x in visible]})  # fmt: skip
        sessions.append(obj)
    stats = {
        "sessions": len(sessions),
        "turns": {"root": root.turns, "subagent": sub.turns},
        "terminal_turns": {"root": dict(root.terminal), "subagent": dict(sub.terminal)},
        "failed_turns_by_code": {"root": dict(root.codes), "subagent": dict(sub.codes)},
        "usage": {"root": root.usage_dict(), "subagent": sub.usage_dict()},
        "items": {"root": _plain(root.items), "subagent": _plain(sub.items)},
        "tool_calls": {"root": _plain(root.tools), "subagent": _plain(sub.tools)},
        "traces": traces,
    }
    return {"now": int(t), "agents": list(engine.agents), "sessions": sessions, "stats": stats}


def _plain(table: dict[str, Counter[str]]) -> dict[str, dict[str, int]]:
    return {k: dict(v) for k, v in sorted(table.items())}
