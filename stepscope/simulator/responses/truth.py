"""What really happened on the simulated Responses API, for tests to compare a bridge's counters and spans with.

`responses_truth(engine, t)` returns

```
{"now": int, "agents": [{type, name, version, model}] (azure),
 "conversations": [<conversation as served> + {"items": [<item as listed>, oldest first]}],
 "responses": [<response as served at t> + {"agent_reference", "input_items", "sim_created_at", "sim_ended_at",
                                            "source", "deleted", "stuck"}],
 "stats": {"responses", "conversations", "background", "stuck_queued", "by_status": {status: n},
           "terminal": {"completed", "failed", "cancelled", "incomplete"}, "failed_by_code": {code: n},
           "incomplete_by_reason": {reason: n}, "by_model": {model: n}, "by_agent": {"name:version": n},
           "usage": {"input_tokens", "cached_tokens", "output_tokens", "reasoning_tokens", "total_tokens"},
           "items": {type: {status: n}}, "tool_calls": {type: {tool name: n}}}}
```

Every response created by `t` is listed, stored or not, deleted or not (`deleted`, and `store` as served, tell).
`usage`, `items` and `tool_calls` cover terminal responses only, whose values are final (usage exists on completed
and incomplete ones). Tool calls are the output items other than `message`, `reasoning` and `*_output` items,
named by their `name` field where they have one and by their type otherwise. `sim_created_at` and
`sim_ended_at` are the exact (sub-second) instants; `sim_ended_at` is null until the response is terminal.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from stepscope.simulator.responses import serializers as ser
from stepscope.simulator.responses.engine import ResponsesEngine
from stepscope.simulator.responses.state import RESPONSE_STATUSES, SimResponse

_USAGE_KEYS = ("input_tokens", "cached_tokens", "output_tokens", "reasoning_tokens")
_NOT_TOOLS = frozenset({"message", "reasoning"})


def is_tool_call(item_type: str) -> bool:
    return item_type not in _NOT_TOOLS and not item_type.endswith("_output")


class _Tally:
    def __init__(self) -> None:
        self.status: Counter[str] = Counter(dict.fromkeys(RESPONSE_STATUSES, 0))
        self.codes: Counter[str] = Counter()
        self.reasons: Counter[str] = Counter()
        self.models: Counter[str] = Counter()
        self.agents: Counter[str] = Counter()
        self.usage: Counter[str] = Counter(dict.fromkeys(_USAGE_KEYS, 0))
        self.items: dict[str, Counter[str]] = {}
        self.tools: dict[str, Counter[str]] = {}
        self.background = 0
        self.stuck = 0

    def add(self, resp: SimResponse, t: float) -> None:
        status = resp.status_at(t)
        self.status[status] += 1
        self.models[resp.model] += 1
        self.background += resp.background
        self.stuck += resp.stuck()
        if resp.agent is not None:
            self.agents[f"{resp.agent['name']}:{resp.agent['version']}"] += 1
        if not resp.terminal_at(t):
            return
        if status == "failed" and resp.error is not None:
            self.codes[resp.error[0]] += 1
        if status == "incomplete" and resp.incomplete_reason is not None:
            self.reasons[resp.incomplete_reason] += 1
        if resp.usage is not None:
            self.usage.update(dict(zip(_USAGE_KEYS, resp.usage, strict=True)))
        for item in resp.output:
            self.items.setdefault(item.type, Counter())[item.status or "none"] += 1
            if is_tool_call(item.type):
                self.tools.setdefault(item.type, Counter())[item.tool_name()] += 1

    def stats(self) -> dict[str, Any]:
        terminal = {s: self.status[s] for s in ("completed", "failed", "cancelled", "incomplete")}
        usage = {**self.usage, "total_tokens": self.usage["input_tokens"] + self.usage["output_tokens"]}
        return {
            "responses": sum(self.status.values()), "background": self.background, "stuck_queued": self.stuck,
            "by_status": dict(self.status), "terminal": terminal, "failed_by_code": dict(self.codes),
            "incomplete_by_reason": dict(self.reasons), "by_model": dict(self.models), "by_agent": dict(self.agents),
            "usage": usage, "items": _plain(self.items), "tool_calls": _plain(self.tools),
        }  # fmt: skip


def responses_truth(engine: ResponsesEngine, t: float) -> dict[str, Any]:
    """Every response and conversation as served at `t`, plus the tallies above."""
    azure = engine.azure
    tally = _Tally()
    responses = []
    for resp in engine.order:
        if resp.created > t:
            continue
        tally.add(resp, t)
        obj = ser.response_dict(resp, t, azure=azure)
        obj["agent_reference"] = dict(resp.agent) if resp.agent is not None else None
        obj["input_items"] = [ser.stored_item_dict(i, resp, azure=azure) for i in resp.input_items]
        obj.update(sim_created_at=resp.created, sim_ended_at=resp.end if resp.terminal_at(t) else None,
                   source=resp.source, deleted=resp.deleted_at <= t, stuck=resp.stuck())  # fmt: skip
        responses.append(obj)
    conversations = []
    for conv in engine.conversation_order:
        if conv.created > t:
            continue
        items = [ser.stored_item_dict(entry, r, azure=azure) for entry, r in conv.items_at(t)]
        conversations.append({**ser.conversation_dict(conv), "items": items})
    stats = tally.stats()
    stats["conversations"] = len(conversations)
    agents = [dict(a) for a in engine.agents]
    return {"now": int(t), "agents": agents, "conversations": conversations, "responses": responses, "stats": stats}


def _plain(table: dict[str, Counter[str]]) -> dict[str, dict[str, int]]:
    return {k: dict(v) for k, v in sorted(table.items())}
