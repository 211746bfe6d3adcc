"""The OTLP JSON trace the simulated service publishes for a finished root turn.

Shape: an OTLP/JSON `ExportTraceServiceRequest` (`{"resourceSpans": [...]}`), ids as lower-case hex, times as
decimal strings of Unix nanoseconds, span kinds and status codes as integers. The real service documents no span
names or attributes, so these are the simulator's own: a root span `turn` (SERVER, from the turn's creation to
its end, ERROR with the error code for a failed turn), a `response` span per model step (reasoning or assistant
message), one span per tool-call item named after its type and tool, and a `subagent {name}` span with the
subagent turn's spans under it. Ids come from a `random.Random` seeded by the simulator seed and the turn id,
so the same turn always publishes the same bytes.
"""

from __future__ import annotations

import random
from typing import Any

from stepscope.simulator.agents.state import TOOL_CALL_TYPES, SimItem, SimTurn

SCOPE = {"name": "openai.agents.sim", "version": "1"}
_KIND_INTERNAL, _KIND_SERVER = 1, 2
_STATUS = {"completed": 1, "failed": 2, "cancelled": 0}  # STATUS_CODE_OK, _ERROR, _UNSET


def _attr(key: str, value: str | int) -> dict[str, Any]:
    if isinstance(value, int):
        return {"key": key, "value": {"intValue": str(value)}}
    return {"key": key, "value": {"stringValue": value}}


def _ns(t: float) -> str:
    return str(round(t * 1e9))


class _Spans:
    def __init__(self, rng: random.Random, trace_id: str) -> None:
        self.rng = rng
        self.trace_id = trace_id
        self.spans: list[dict[str, Any]] = []

    def add(self, name: str, start: float, end: float, parent: str, attrs: list[dict[str, Any]], *,
            kind: int = _KIND_INTERNAL, status: tuple[int, str] = (0, "")) -> str:  # fmt: skip
        span_id = f"{self.rng.getrandbits(64):016x}"
        self.spans.append({
            "traceId": self.trace_id, "spanId": span_id, "parentSpanId": parent, "name": name, "kind": kind,
            "startTimeUnixNano": _ns(start), "endTimeUnixNano": _ns(max(end, start)), "attributes": attrs,
            "status": {"code": status[0], "message": status[1]} if status[1] else {"code": status[0]},
        })  # fmt: skip
        return span_id

    def items(self, turn: SimTurn, parent: str) -> None:
        """Spans for a turn's model steps and tool calls (a function call spans the wait for its output)."""
        outputs = {i.fields.get("call_id"): i for i in turn.items if i.type == "function_call_output"}
        for item in turn.items:
            if item.type == "reasoning" or (item.type == "message" and item.fields.get("role") == "assistant"):
                self.add("response", item.added, item.done, parent, [_attr("openai.item.id", item.id or "")])
            elif item.type in TOOL_CALL_TYPES:
                end = item.done
                output = outputs.get(item.fields.get("call_id")) if item.type == "function_call" else None
                if output is not None:
                    end = output.added
                failed = (output or item).status == "failed"
                self.add(_tool_name(item), item.added, end, parent,
                         [_attr("openai.item.id", item.id or ""), _attr("openai.item.type", item.type)],
                         status=(2, "tool call failed") if failed else (0, ""))  # fmt: skip


def _tool_name(item: SimItem) -> str:
    name = item.fields.get("name")
    return f"{item.type} {name}" if isinstance(name, str) else item.type


def build_trace(turn: SimTurn, seed: int) -> dict[str, Any]:
    """The published OTLP JSON of a terminal root turn."""
    rng = random.Random(f"{seed}/agents/trace/{turn.id}")
    spans = _Spans(rng, f"{rng.getrandbits(128):032x}")
    attrs = [_attr("openai.session.id", turn.session_id), _attr("openai.turn.id", turn.id),
             _attr("openai.turn.status", turn.status), _attr("gen_ai.request.model", turn.model)]  # fmt: skip
    usage = turn.usage_at(turn.end)
    if usage is not None:
        attrs += [_attr("gen_ai.usage.input_tokens", usage[0]), _attr("gen_ai.usage.output_tokens", usage[2])]
    status = (_STATUS[turn.status], turn.error[0] if turn.error else "")
    root = spans.add("turn", turn.created, turn.end, "", attrs, kind=_KIND_SERVER, status=status)
    spans.items(turn, root)
    for sub in turn.subagents:
        end = sub.closed if sub.closed is not None else turn.end
        sub_span = spans.add(f"subagent {sub.name}", sub.opened, end, root, [_attr("openai.subagent.id", sub.id)])
        for sub_turn in sub.turns:
            spans.items(sub_turn, sub_span)
    resource = [_attr("service.name", "openai-agents"), _attr("agent.type", "root"),
                _attr("openai.agent.id", turn.agent_id), _attr("openai.session.id", turn.session_id)]  # fmt: skip
    return {"resourceSpans": [{"resource": {"attributes": resource},
                               "scopeSpans": [{"scope": dict(SCOPE), "spans": spans.spans}]}]}  # fmt: skip


def span_ids(otlp: dict[str, Any]) -> list[str]:
    """Every span id in an OTLP JSON request, in document order."""
    return [span["spanId"] for rs in otlp["resourceSpans"] for ss in rs["scopeSpans"] for span in ss["spans"]]
