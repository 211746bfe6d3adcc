"""Seeded run plans: what a run will do, decided once when it is created.

A `RunPlan` fixes every step's id, kind, tool calls, duration, usage and the run's outcome. Time does not appear
here except as durations; `state.py` turns a plan plus client events (submissions, cancels) into a timeline.
Each run draws from its own `random.Random`, so one run's plan never depends on how many other runs exist.
"""

from __future__ import annotations

import json
import random
import string
from dataclasses import dataclass, field
from typing import Any

from stepscope.simulator.scenario import AZURE_TOOL_KINDS, Scenario

_ALNUM = string.ascii_letters + string.digits
_FUNCTIONS = ("get_weather", "lookup_order", "search_catalog", "create_ticket", "get_stock_price")
_ERRORS = (
    ("server_error", "Sorry, something went wrong."),
    ("rate_limit_exceeded", "Rate limit reached for requests. Please try again later."),
)


def new_id(rng: random.Random, prefix: str) -> str:
    """`prefix_` followed by 24 alphanumerics, as the real service does (`step_DQfPq3JPu8hRKW0ctAraWC9s`)."""
    return prefix + "_" + "".join(rng.choices(_ALNUM, k=24))


@dataclass(slots=True)
class StepPlan:
    """One planned step. `needs_action` steps hold function calls the client must answer.

    `submit_delay` is the workload's own answer time (None: wait for a client, or never, so the run expires).
    `outputs` are the workload's outputs by call id. `omit_usage` models Azure leaving `usage` out. `text` is a
    `message_creation` step's answer in the chunks it streams in (written when the run is created, from the thread's
    messages: see `messages.answer_chunks`).
    """

    id: str
    kind: str
    duration: float
    calls: list[dict[str, Any]] = field(default_factory=list)
    message_id: str | None = None
    needs_action: bool = False
    submit_delay: float | None = None
    outputs: dict[str, str] = field(default_factory=dict)
    usage: tuple[int, int] = (0, 0)
    omit_usage: bool = False
    text: tuple[str, ...] = ()


@dataclass(slots=True)
class RunPlan:
    """A run's plan. `outcome` is completed, failed or incomplete; cancel and expiry come from the timeline."""

    queue_delay: float
    steps: list[StepPlan]
    outcome: str = "completed"
    error: tuple[str, str] | None = None
    incomplete_reason: str | None = None
    cancel_after: float | None = None
    requeue_delay: float = 0.2


def tool_call(rng: random.Random, kind: str) -> dict[str, Any]:
    """A tool-call object of `kind` as it appears in `step_details.tool_calls` (function output still null)."""
    call_id = new_id(rng, "call")
    if kind == "function":
        name = rng.choice(_FUNCTIONS)
        args = json.dumps({"query": f"q{rng.randrange(1000)}"})
        return {"id": call_id, "type": "function", "function": {"name": name, "arguments": args, "output": None}}
    if kind == "code_interpreter":
        a, b = rng.randrange(100), rng.randrange(100)
        body = {"input": f"print({a} + {b})", "outputs": [{"type": "logs", "logs": str(a + b)}]}
        return {"id": call_id, "type": "code_interpreter", "code_interpreter": body}
    if kind == "file_search":
        results: list[dict[str, Any]] = [
            {"file_id": new_id(rng, "file"), "file_name": f"doc{i}.pdf", "score": round(rng.uniform(0.3, 1.0), 3)}
            for i in range(rng.randint(1, 3))
        ]
        search: dict[str, Any] = {
            "ranking_options": {"ranker": "default_2024_08_21", "score_threshold": 0.0},
            "results": results,
        }
        return {"id": call_id, "type": "file_search", "file_search": search}
    if kind == "mcp":
        body = {"name": "fetch", "arguments": "{}", "output": "ok", "server_label": "docs"}
        return {"id": call_id, "type": "mcp", "mcp": body}
    if kind == "connected_agent":
        body = {"name": "researcher", "arguments": "{}", "output": "done"}
        return {"id": call_id, "type": "connected_agent", "connected_agent": body}
    if kind in ("azure_function", "openapi"):
        return {"id": call_id, "type": kind, kind: {"name": f"{kind}_op", "arguments": "{}", "output": "ok"}}
    # bing_grounding, azure_ai_search and the other Record<string> tools.
    return {"id": call_id, "type": kind, kind: {"requesturl": "https://example.invalid/q", "response": "ok"}}


def _step(rng: random.Random, kind: str, scenario: Scenario, duration: float | None) -> StepPlan:
    seconds = duration if duration is not None else rng.uniform(*scenario.step_seconds)
    usage = (rng.randint(*scenario.prompt_tokens), rng.randint(*scenario.completion_tokens))
    step = StepPlan(id=new_id(rng, "step"), kind="tool_calls", duration=seconds, usage=usage)
    if kind == "message_creation":
        step.kind = "message_creation"
        step.message_id = new_id(rng, "msg")
        return step
    step.calls = [tool_call(rng, kind) for _ in range(rng.choice((1, 1, 1, 2)))]
    if kind == "function":
        step.needs_action = True
        step.outputs = {c["id"]: json.dumps({"result": rng.randrange(10_000)}) for c in step.calls}
    return step


def workload_plan(rng: random.Random, scenario: Scenario, *, azure: bool) -> RunPlan:
    """A seeded plan for a run the workload creates: it answers its own tool calls unless it is to expire."""
    kinds = [k for k, _ in scenario.tool_mix]
    weights = [w for _, w in scenario.tool_mix]
    if azure and scenario.azure_tool_weight > 0:
        kinds += list(AZURE_TOOL_KINDS)
        weights += [scenario.azure_tool_weight / len(AZURE_TOOL_KINDS)] * len(AZURE_TOOL_KINDS)
    count = rng.randint(*scenario.steps)
    steps = [_step(rng, rng.choices(kinds, weights)[0], scenario, None) for _ in range(count - 1)]
    steps.append(_step(rng, "message_creation", scenario, None))
    plan = RunPlan(queue_delay=rng.uniform(*scenario.queue_seconds), steps=steps)
    roll = rng.random()
    edges = [scenario.failure_rate, scenario.cancel_rate, scenario.expire_rate, scenario.incomplete_rate]
    outcome = "completed"
    for name, edge in zip(("failed", "cancelled", "expired", "incomplete"), edges, strict=True):
        if roll < edge:
            outcome = name
            break
        roll -= edge
    for step in steps:
        step.submit_delay = rng.uniform(*scenario.submit_delay_s)
        step.omit_usage = azure and rng.random() < 0.2
    if outcome == "failed":
        plan.outcome = "failed"
        plan.error = rng.choice(_ERRORS)
    elif outcome == "incomplete":
        plan.outcome = "incomplete"
        plan.incomplete_reason = rng.choice(("max_completion_tokens", "max_prompt_tokens"))
    elif outcome == "cancelled":
        total = plan.queue_delay + sum(s.duration + (s.submit_delay or 0) for s in steps)
        plan.cancel_after = rng.uniform(0.0, total)
    elif outcome == "expired":
        # The application never answers: the run waits in requires_action until expires_at.
        steps[0] = _step(rng, "function", scenario, None)
        steps[0].submit_delay = None
    return plan


def client_plan(
    rng: random.Random, scenario: Scenario, tools: list[dict[str, Any]], metadata: dict[str, str]
) -> RunPlan:
    """The plan of a run an API client created. Its function calls wait for the client's `submit_tool_outputs`.

    Test knobs in the run's metadata: `sim_steps` (total steps, default 2 or 3), `sim_step_seconds` (fixed
    duration), `sim_outcome` (completed, failed or incomplete).
    """
    duration = _float(metadata.get("sim_step_seconds"))
    total = _int(metadata.get("sim_steps"))
    tool_types = [t.get("type") for t in tools if isinstance(t, dict)]
    kinds: list[str] = []
    if "function" in tool_types:
        kinds.append("function")
    kinds += [k for k in ("code_interpreter", "file_search") if k in tool_types]
    if total is not None:
        filler = [k for k in kinds if k != "function"] or ["message_creation"]
        lead = kinds[:1] if kinds else []
        kinds = lead + [filler[i % len(filler)] for i in range(max(total - 1 - len(lead), 0))]
        kinds = kinds[: max(total - 1, 0)]
    steps = [_step(rng, kind, scenario, duration) for kind in kinds]
    steps.append(_step(rng, "message_creation", scenario, duration))
    for step in steps:
        if step.needs_action:
            step.outputs = {}
        if duration is not None:
            step.duration = duration
    plan = RunPlan(queue_delay=duration if duration is not None else rng.uniform(*scenario.queue_seconds), steps=steps)
    outcome = metadata.get("sim_outcome", "completed")
    if outcome == "failed":
        plan.outcome, plan.error = "failed", _ERRORS[0]
    elif outcome == "incomplete":
        plan.outcome, plan.incomplete_reason = "incomplete", "max_completion_tokens"
    return plan


def _int(text: str | None) -> int | None:
    try:
        return max(1, min(int(text), 10_000)) if text is not None else None
    except ValueError:
        return None


def _float(text: str | None) -> float | None:
    try:
        return max(0.0, float(text)) if text is not None else None
    except ValueError:
        return None
