"""Seeded turns for the simulated Agents API: what a turn does, fixed when it is created.

`build_root_turn` draws from the turn's own `random.Random`, so one turn never depends on how many others exist.
A root turn is the user's input message, then segments (each a reasoning item and one of: function_call, which
makes the turn `waiting` until the application's function_call_output arrives; mcp_call; web_search_call;
command_execution; computer_use_call; a subagent, i.e. create_subagent_call, the subagent's own turn,
wait_for_subagents_call, agent_message and close_subagent_call; a commentary message; or an item type the SDK
does not know), then the final answer. Outcomes follow the scenario's rates: failed (a `SessionTurnError` code,
no final answer), incomplete (failed with `max_output_tokens`, the final answer incomplete), cancelled at a random
moment, and expired (a function call nobody answers; the application cancels the turn after `expires_after_s`).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from typing import Any

from stepscope.simulator.agents.state import SimItem, SimSubagent, SimTurn, Wait
from stepscope.simulator.plan import new_id
from stepscope.simulator.scenario import Scenario

UNKNOWN_ITEM_TYPE = "context_compaction"  # deliberately absent from the SDK's AgentSessionItem union
SEGMENT_KINDS = (
    "function_call", "mcp_call", "web_search_call", "command_execution", "computer_use_call", "subagent",
    "message", "unknown",
)  # fmt: skip
_MIX = (0.25, 0.12, 0.12, 0.12, 0.06, 0.08, 0.2, 0.05)
TURN_ERRORS = (
    ("server_error", "The model service encountered an unexpected error."),
    ("rate_limit_exceeded", "The request exceeds the available rate limit."),
    ("sandbox_error", "The request could not complete in its execution environment."),
    ("request_timeout", "The request timed out before the model service responded."),
)
_INCOMPLETE = ("max_output_tokens", "The model reached its output token limit before finishing the response.")
_FUNCTIONS = ("get_weather", "lookup_order", "search_catalog", "create_ticket")
_MCP_TOOLS = ("search_docs", "fetch_page", "list_issues")
_COMMANDS = ("pytest -q", "ls -la", "python analyze.py", "git status")
_SUBAGENTS = ("researcher", "coder", "reviewer")
_TOOL_FAILURE_RATE = 0.1
_SESSION_FAILURE_SHARE = 0.3  # failed turns that also fail their session


@dataclass(frozen=True, slots=True)
class TurnKnobs:
    """Test controls for one turn; None fields are drawn from the scenario.

    `kinds` fixes the segment kinds in order; `seconds` fixes every duration (queue, segment, wait); `outcome`
    is completed, failed, incomplete, cancelled or expired; `legacy_user_message` gives the input message no id;
    `fail_session` makes a failed turn fail its session too.
    """

    kinds: tuple[str, ...] | None = None
    seconds: float | None = None
    outcome: str | None = None
    legacy_user_message: bool = False
    fail_session: bool = False


def _text(kind: str, text: str) -> list[dict[str, Any]]:
    return [{"type": kind, "text": text}]


class _Builder:
    """Appends items, usage and transitions to one turn, moving its cursor `t` forward."""

    def __init__(self, rng: random.Random, scenario: Scenario, turn: SimTurn, t: float, seconds: float | None):
        self.rng = rng
        self.scenario = scenario
        self.turn = turn
        self.t = t
        self.seconds = seconds
        self.stalled = False  # a function call nobody answers: nothing happens after it

    def duration(self, span: tuple[float, float]) -> float:
        return self.seconds if self.seconds is not None else self.rng.uniform(*span)

    def item(self, type_: str, prefix: str, span: tuple[float, float], status: str | None, fields: dict[str, Any],
             *, after: dict[str, Any] | None = None, no_id: bool = False) -> SimItem:  # fmt: skip
        """Append an item existing from `span[0]`, done at `span[1]`; `after` holds the fields known once done."""
        item_id = None if no_id else new_id(self.rng, prefix)
        item = SimItem(type_, item_id, self.turn.id, added=span[0], done=span[1], status=status, fields=fields,
                       done_fields=after)  # fmt: skip
        self.turn.items.append(item)
        return item

    def usage(self, at: float) -> None:
        rng, sc = self.rng, self.scenario
        prompt, completion = rng.randint(*sc.prompt_tokens), rng.randint(*sc.completion_tokens)
        cached = int(prompt * rng.uniform(0.0, 0.8))
        reasoning = int(completion * rng.uniform(0.1, 0.6))
        self.turn.usage_events.append((at, prompt, cached, completion, reasoning))

    def reasoning(self, share: float, status: str = "completed") -> None:
        done = self.t + self.duration(self.scenario.step_seconds) * share
        summary = _text("summary_text", f"Considering step {len(self.turn.items)}.")
        self.item("reasoning", "rs", (self.t, done), status, {"summary": summary})
        self.usage(done)
        self.t = done

    def message(self, phase: str, status: str = "completed") -> None:
        done = self.t + self.duration(self.scenario.step_seconds) * 0.5
        fields = {"role": "assistant", "phase": phase, "content": _text("output_text", f"{phase} text")}
        self.item("message", "msg", (self.t, done), status, fields)
        self.usage(done)
        self.t = done

    def segment(self, kind: str) -> None:
        self.reasoning(0.4)
        if kind == "function_call":
            self.function_call(never=False)
        elif kind == "subagent":
            self.subagent()
        elif kind == "message":
            self.message("commentary")
        else:
            self.tool(kind)

    def function_call(self, *, never: bool) -> None:
        rng, turn = self.rng, self.turn
        call_id, name = new_id(rng, "call"), rng.choice(_FUNCTIONS)
        args = json.dumps({"query": f"q{rng.randrange(1000)}"})
        asked = self.t + 0.05
        fields: dict[str, Any] = {"call_id": call_id, "name": name, "arguments": args}
        self.item("function_call", "fc", (self.t, asked), "completed", fields)
        answered = float("inf") if never else asked + self.duration(self.scenario.submit_delay_s)
        turn.trans.append((asked, "waiting"))
        turn.waits.append(Wait(asked, answered, call_id, name, args))
        if never:
            self.stalled = True
            return
        turn.trans.append((answered, "in_progress"))
        fields = {"call_id": call_id, "output": None, "error": None}
        if rng.random() < _TOOL_FAILURE_RATE:
            self.item("function_call_output", "fco", (answered, answered), "failed", {**fields, "error": "timeout"})
        else:
            output = json.dumps({"result": rng.randrange(10_000)})
            self.item("function_call_output", "fco", (answered, answered), "completed", {**fields, "output": output})
        self.t = answered

    def tool(self, kind: str) -> None:
        rng = self.rng
        done = self.t + self.duration(self.scenario.step_seconds) * 0.6
        failed = rng.random() < _TOOL_FAILURE_RATE
        status = "failed" if failed else "completed"
        if kind == "mcp_call":
            fields: dict[str, Any] = {"server_label": "docs", "name": rng.choice(_MCP_TOOLS), "arguments": "{}",
                                      "output": None, "error": None}  # fmt: skip
            after: dict[str, Any] = {"error": "upstream returned 502"} if failed else {"output": "ok"}
            self.item(kind, "mcp", (self.t, done), status, fields, after=after)
        elif kind == "web_search_call":
            action = {"type": "search", "query": f"query {rng.randrange(100)}", "queries": None}
            self.item(kind, "ws", (self.t, done), "completed", {"action": action})
        elif kind == "command_execution":
            fields = {"command": rng.choice(_COMMANDS), "cwd": "/workspace", "duration_ms": None, "exit_code": None,
                      "output": None}  # fmt: skip
            after = {"duration_ms": int((done - self.t) * 1000), "exit_code": 1 if failed else 0, "output": "done\n"}
            self.item(kind, "cmd", (self.t, done), status, fields, after=after)
        elif kind == "computer_use_call":
            self.item(kind, "cu", (self.t, done), "completed", {"title": "Open the dashboard", "output": None})
        else:  # an item type a tolerant client must skip
            fields = {"encrypted_content": "gAAAA" + new_id(rng, "x"), "summary_tokens": rng.randrange(50, 500)}
            self.item(UNKNOWN_ITEM_TYPE, "cmp", (self.t, done), "completed", fields)
        self.t = done

    def subagent(self) -> None:
        rng, turn = self.rng, self.turn
        root = turn.agent_id
        sub = SimSubagent(new_id(rng, "sub"), turn.session_id, root, name=rng.choice(_SUBAGENTS),
                          instructions="Investigate.", opened=self.t)  # fmt: skip
        created = self.t + 0.2
        fields: dict[str, Any] = {"agent_id": sub.id, "content": _text("output_text", "Investigate."),
                                  "model": turn.model, "reasoning_effort": "low"}  # fmt: skip
        self.item("create_subagent_call", "csc", (self.t, created), "completed", fields)
        sub_turn = SimTurn(new_id(rng, "turn"), turn.session_id, root, turn.model, created, subagent_id=sub.id)
        sub_turn.trans = [(created, "in_progress")]
        sub_turn.started = created
        inner = _Builder(rng, self.scenario, sub_turn, created, self.seconds)
        inner.reasoning(0.4)
        inner.tool(rng.choice(("web_search_call", "command_execution")))
        inner.message("final_answer")
        sub_turn.end = inner.t
        sub_turn.trans.append((inner.t, "completed"))
        sub_turn.seal()
        sub.turns.append(sub_turn)
        waited = {"sender_agent_id": root, "recipient_agent_ids": [sub.id]}
        self.item("wait_for_subagents_call", "wsc", (created, inner.t), "completed", waited)
        reply = {"sender_agent_id": sub.id, "recipient_agent_id": root, "content": _text("output_text", "Found it.")}
        self.item("agent_message", "amsg", (inner.t, inner.t), None, reply)
        sub.closed = inner.t + 0.1
        close = {"sender_agent_id": root, "recipient_agent_id": sub.id}
        self.item("close_subagent_call", "clsc", (inner.t, sub.closed), "completed", close)
        turn.subagents.append(sub)
        self.t = sub.closed


def _outcome(rng: random.Random, scenario: Scenario) -> str:
    roll = rng.random()
    rates = (scenario.failure_rate, scenario.cancel_rate, scenario.expire_rate, scenario.incomplete_rate)
    for name, rate in zip(("failed", "cancelled", "expired", "incomplete"), rates, strict=True):
        if roll < rate:
            return name
        roll -= rate
    return "completed"


def build_root_turn(
    rng: random.Random, scenario: Scenario, *, turn_id: str, session_id: str, agent_id: str, model: str,
    created: float, knobs: TurnKnobs | None = None,
) -> tuple[SimTurn, bool]:  # fmt: skip
    """A root turn created at `created`, and whether its failure also fails the session."""
    knobs = knobs or TurnKnobs()
    turn = SimTurn(turn_id, session_id, agent_id, model, created)
    b = _Builder(rng, scenario, turn, created, knobs.seconds)
    outcome = knobs.outcome or _outcome(rng, scenario)
    user = {"role": "user", "phase": None, "content": _text("input_text", "Please help.")}
    b.item("message", "msg", (created, created), "completed", user, no_id=knobs.legacy_user_message)
    turn.started = b.t = created + b.duration(scenario.queue_seconds)
    turn.trans.append((b.t, "in_progress"))
    kinds = list(knobs.kinds) if knobs.kinds is not None else _draw_kinds(rng, scenario)
    if outcome == "expired":
        b.reasoning(0.4)
        b.function_call(never=True)
    for kind in kinds:
        if b.stalled:
            break
        b.segment(kind)
    session_fails = False
    if outcome == "failed" and not b.stalled:
        b.reasoning(0.5, status="incomplete")
        turn.status, turn.error = "failed", rng.choice(TURN_ERRORS)
        session_fails = rng.random() < _SESSION_FAILURE_SHARE or knobs.fail_session
    elif outcome == "incomplete" and not b.stalled:
        b.message("final_answer", status="incomplete")
        turn.status, turn.error = "failed", _INCOMPLETE
    elif not b.stalled:
        b.message("final_answer")
    turn.end = b.t
    turn.trans.append((b.t, turn.status))
    if outcome == "expired":
        cut(turn, created + scenario.expires_after_s)
    elif outcome == "cancelled":
        cut(turn, created + rng.uniform(0.0, turn.end - created))
    turn.seal()
    return turn, session_fails


def _draw_kinds(rng: random.Random, scenario: Scenario) -> list[str]:
    return rng.choices(SEGMENT_KINDS, _MIX, k=rng.randint(*scenario.steps) - 1)


def cut(turn: SimTurn, at: float) -> None:
    """Cancel `turn` at `at`: later transitions, items, usage and subagents vanish; open items end incomplete."""
    turn.trans = [tr for tr in turn.trans if tr[0] <= at and tr[1] not in ("completed", "failed", "cancelled")]
    turn.trans.append((at, "cancelled"))
    if turn.started is not None and turn.started > at:
        turn.started = None
    turn.items = [item for item in turn.items if item.added <= at]
    for item in turn.items:
        if item.done > at:
            item.done, item.done_fields = at, {}
            if item.status is not None:
                item.status = "incomplete"
    turn.usage_events = [e for e in turn.usage_events if e[0] <= at]
    turn.waits = [w for w in turn.waits if w.start <= at]
    for wait in turn.waits:
        wait.end = min(wait.end, at)
    turn.subagents = [s for s in turn.subagents if s.opened <= at]
    for sub in turn.subagents:
        sub.closed = at if sub.closed is None or sub.closed > at else sub.closed
        sub.turns = [st for st in sub.turns if st.created <= at]
        for sub_turn in sub.turns:
            if sub_turn.end > at:
                cut(sub_turn, at)
                sub_turn.seal()
    turn.status, turn.error, turn.end = "cancelled", None, at
