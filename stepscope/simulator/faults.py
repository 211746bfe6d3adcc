"""Fault injection: what can go wrong between stepscope and the Assistants API, reproducibly.

`FaultConfig` is frozen data: a default `FaultSpec` for every endpoint, per-endpoint overrides that replace it,
and a global request budget (N requests per window; past it, 429 with `retry-after`). `FaultInjector` draws from
a seeded RNG, so the same config, seed and request sequence give the same faults.

Fault kinds, checked in this order per request: `auth_fail` (401), budget (429), `latency_ms` +- `jitter_ms`,
`rate_limit_rate` (starts a burst of `rate_limit_burst` 429s with `retry-after: retry_after_s`), `error_rate`
(a 5xx from `error_statuses`), `drop_rate` (connection closed without a response), then on a successful answer
`truncate_rate` (body cut in half), `malformed_rate` (not JSON) and `drift_rate` (per object: unknown fields,
unknown enum values such as step type `activities` or tool-call types `bing_grounding`/`mcp`, missing optional
fields such as `usage` and `metadata`).
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

ENDPOINTS = frozenset(
    {
        "create_assistant", "get_assistant", "list_assistants", "create_thread", "get_thread", "list_threads",
        "create_thread_and_run",
        "create_run", "list_runs", "get_run", "modify_run", "cancel_run", "submit_tool_outputs", "list_steps",
        "get_step", "create_message", "list_messages", "get_message",
    }
)  # fmt: skip
# The Agents API side's endpoints (stepscope/simulator/agents/app.py); faults name them like the ones above.
AGENTS_ENDPOINTS = frozenset(
    {
        "list_agent_sessions", "get_agent_session", "list_agent_session_items", "list_agent_traces",
        "list_agent_turns", "get_agent_turn", "list_agent_turn_items", "list_agent_subagents", "get_agent_subagent",
        "list_agent_subagent_turns", "get_agent_subagent_turn", "list_agent_subagent_turn_items",
        "list_agent_subagent_items",
    }
)  # fmt: skip
# The Responses API side's endpoints (stepscope/simulator/responses/app.py); the list ones exist on azure only.
RESPONSES_ENDPOINTS = frozenset(
    {
        "create_response", "get_response", "delete_response", "cancel_response", "list_input_items",
        "list_responses", "create_conversation", "get_conversation", "list_conversations",
        "list_conversation_items", "get_conversation_item",
    }
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class FaultSpec:
    """Faults for one endpoint (or all). Rates are probabilities per request (drift: per object)."""

    latency_ms: float = 0.0
    jitter_ms: float = 0.0
    error_rate: float = 0.0
    error_statuses: tuple[int, ...] = (500, 502, 503)
    rate_limit_rate: float = 0.0
    rate_limit_burst: int = 1
    retry_after_s: int = 1
    drop_rate: float = 0.0
    truncate_rate: float = 0.0
    malformed_rate: float = 0.0
    drift_rate: float = 0.0
    auth_fail: bool = False

    @property
    def active(self) -> bool:
        return self != _NONE


_NONE = FaultSpec()
_SPEC_FIELDS = {f.name for f in dataclasses.fields(FaultSpec)}


@dataclass(frozen=True, slots=True)
class FaultConfig:
    """Global and per-endpoint faults plus the request budget (`request_budget` None: unlimited)."""

    default: FaultSpec = field(default_factory=FaultSpec)
    endpoints: Mapping[str, FaultSpec] = field(default_factory=dict)
    request_budget: int | None = None
    budget_window_s: float = 1.0

    def for_endpoint(self, name: str) -> FaultSpec:
        return self.endpoints.get(name, self.default)

    def validate(self) -> list[str]:
        known = ENDPOINTS | AGENTS_ENDPOINTS | RESPONSES_ENDPOINTS
        problems = [f"endpoints.{name}: unknown endpoint" for name in self.endpoints if name not in known]
        for where, spec in [("default", self.default), *((f"endpoints.{k}", v) for k, v in self.endpoints.items())]:
            for name in ("error_rate", "rate_limit_rate", "drop_rate", "truncate_rate", "malformed_rate", "drift_rate"):
                if not 0.0 <= getattr(spec, name) <= 1.0:
                    problems.append(f"{where}.{name}: must be within 0..1")
            if spec.latency_ms < 0 or spec.jitter_ms < 0:
                problems.append(f"{where}.latency_ms: must be >= 0")
            if spec.retry_after_s < 1 or spec.rate_limit_burst < 1:
                problems.append(f"{where}.retry_after_s: retry_after_s and rate_limit_burst must be >= 1")
        if self.request_budget is not None and self.request_budget < 1:
            problems.append("request_budget: must be >= 1")
        if self.budget_window_s <= 0:
            problems.append("budget_window_s: must be > 0")
        return problems

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FaultConfig:
        """Build from JSON-like data: `{"default": {...}, "endpoints": {"list_steps": {...}}, "request_budget": 50}`.

        Raises `ValueError` naming unknown keys or invalid values.
        """
        unknown = set(data) - {"default", "endpoints", "request_budget", "budget_window_s"}
        if unknown:
            raise ValueError(f"unknown fault keys: {sorted(unknown)}")
        config = cls(
            default=spec_from_dict(data.get("default") or {}),
            endpoints={k: spec_from_dict(v) for k, v in (data.get("endpoints") or {}).items()},
            request_budget=data.get("request_budget"),
            budget_window_s=float(data.get("budget_window_s", 1.0)),
        )
        problems = config.validate()
        if problems:
            raise ValueError("; ".join(problems))
        return config

    def to_dict(self) -> dict[str, Any]:
        return {
            "default": dataclasses.asdict(self.default),
            "endpoints": {k: dataclasses.asdict(v) for k, v in self.endpoints.items()},
            "request_budget": self.request_budget,
            "budget_window_s": self.budget_window_s,
        }


def spec_from_dict(data: Mapping[str, Any]) -> FaultSpec:
    unknown = set(data) - _SPEC_FIELDS
    if unknown:
        raise ValueError(f"unknown fault settings: {sorted(unknown)}")
    values = dict(data)
    if "error_statuses" in values:
        values["error_statuses"] = tuple(int(s) for s in values["error_statuses"])
    return FaultSpec(**values)


class FaultInjector:
    """Draws faults for requests from a seeded RNG and keeps the request budget's window."""

    __slots__ = ("_burst", "_rng", "_used", "_window_start", "config")

    def __init__(self, config: FaultConfig | None = None, *, seed: int = 0) -> None:
        self.config = config or FaultConfig()
        self._rng = random.Random(f"{seed}/faults")
        self._burst: dict[str, int] = {}
        self._window_start = 0.0
        self._used = 0

    def replace(self, config: FaultConfig) -> None:
        self.config = config
        self._burst.clear()
        self._used = 0

    def budget(self, mono: float) -> tuple[bool, int, int, float]:
        """Count one request: (allowed, limit, remaining, seconds until the window resets)."""
        cfg = self.config
        limit = cfg.request_budget
        window = cfg.budget_window_s
        if mono - self._window_start >= window:
            self._window_start, self._used = mono, 0
        reset = max(self._window_start + window - mono, 0.0)
        if limit is None:
            return True, 10_000, 9_999, reset
        if self._used >= limit:
            return False, limit, 0, reset
        self._used += 1
        return True, limit, limit - self._used, reset

    def chance(self, rate: float) -> bool:
        return rate > 0 and self._rng.random() < rate

    def latency_s(self, spec: FaultSpec) -> float:
        if spec.latency_ms <= 0 and spec.jitter_ms <= 0:
            return 0.0
        return max(spec.latency_ms + self._rng.uniform(-spec.jitter_ms, spec.jitter_ms), 0.0) / 1000

    def rate_limited(self, endpoint: str, spec: FaultSpec) -> bool:
        """True while a 429 burst lasts for `endpoint`; a new burst starts with probability `rate_limit_rate`."""
        left = self._burst.get(endpoint, 0)
        if left > 0:
            self._burst[endpoint] = left - 1
            return True
        if self.chance(spec.rate_limit_rate):
            self._burst[endpoint] = spec.rate_limit_burst - 1
            return True
        return False

    def error_status(self, spec: FaultSpec) -> int:
        return self._rng.choice(spec.error_statuses)

    def drift(self, obj: dict[str, Any]) -> dict[str, Any]:
        """A drifted copy of one API object: one or more schema changes a tolerant client must survive."""
        rng = self._rng
        out = dict(obj)
        out["x_sim_drift"] = {"note": "field unknown to the client", "n": rng.randrange(100)}
        choice = rng.randrange(4)
        if out.get("object") == "thread.run.step":
            if choice == 0:
                out["type"] = "activities"
                out["step_details"] = {"type": "activities", "activities": [{"id": "act_1", "type": "mcp_list_tools"}]}
            elif choice == 1:
                kind = rng.choice(("bing_grounding", "mcp"))
                call = {"id": "call_drift", "type": kind, kind: {"name": "x", "arguments": "{}", "output": "ok"}}
                out["type"] = "tool_calls"
                out["step_details"] = {"type": "tool_calls", "tool_calls": [call]}
            elif choice == 2:
                out.pop("usage", None)
                out.pop("metadata", None)
        elif choice == 0:
            out.pop("metadata", None)
            out.pop("usage", None)
        return out
