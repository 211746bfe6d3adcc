"""Scenario knobs and presets for the simulator's seeded workload, plus its clocks.

A `Scenario` is a frozen description of the traffic the simulated application produces: how often runs start,
on how many threads, with which models, how many steps of which kind, how long they take and how they end.
The same scenario and seed always yield the same threads, runs, steps and ids.

Time is simulated: every duration here is in *simulated* seconds. `SimClock(speed=10)` makes ten simulated
seconds pass per wall-clock second, so a demo shows minutes of activity in seconds. Tests inject `ManualClock`.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

STEP_KINDS = ("message_creation", "function", "code_interpreter", "file_search")
AZURE_TOOL_KINDS = ("bing_grounding", "azure_ai_search", "openapi", "mcp", "connected_agent", "azure_function")


class SimTime(Protocol):
    """The simulator's clock: simulated Unix seconds, and a wall-clock monotonic reading for rate windows."""

    def now(self) -> float: ...

    def monotonic(self) -> float: ...


class SimClock:
    """A virtual clock: `now = t0 + (monotonic() - m0) * speed`. Timestamps on the wire are `int(now())`."""

    __slots__ = ("_m0", "_mono", "_t0", "speed")

    def __init__(
        self,
        speed: float = 1.0,
        *,
        start: float | None = None,
        wall: Callable[[], float] = time.time,
        mono: Callable[[], float] = time.monotonic,
    ) -> None:
        if speed <= 0:
            raise ValueError("speed must be > 0")
        self.speed = speed
        self._mono = mono
        self._t0 = wall() if start is None else start
        self._m0 = mono()

    def now(self) -> float:
        return self._t0 + (self._mono() - self._m0) * self.speed

    def monotonic(self) -> float:
        return self._mono()


class ManualClock:
    """A clock that moves only when told: `advance(seconds)` moves both simulated and monotonic time.

    The one fake clock of the code base: `now()` serves the simulator (`SimTime`), `time()` the bridge
    (`stepscope.core.records.Clock`, whose test double `stepscope.testing.FakeClock` is this class), so a test can drive
    the simulated server and the bridge from one timeline.
    """

    __slots__ = ("_mono", "_now")

    def __init__(self, start: float = 1_767_225_600.0) -> None:
        self._now = start
        self._mono = 0.0

    def now(self) -> float:
        return self._now

    def time(self) -> float:
        return self._now

    def monotonic(self) -> float:
        return self._mono

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("a clock never goes back")
        self._now += seconds
        self._mono += seconds


@dataclass(frozen=True, slots=True)
class Scenario:
    """Workload knobs. Ranges are `(low, high)` inclusive; rates are probabilities per run.

    `runs_per_second` is in simulated time (Poisson arrivals); 0 means no workload, only what clients create.
    `tool_mix` weights the kinds of the steps before a run's final `message_creation` step; `azure_tool_weight`
    adds Azure's extra tool-call types (flavor azure only). `expire_rate` runs wait on a function call that the
    workload never answers, so they expire at `expires_at`; `expires_after_s` is the run lifetime (600 in the real
    service). `submit_delay_s` is how long the workload (playing the application) takes to submit tool outputs.
    """

    name: str = "steady"
    seed: int = 0
    runs_per_second: float = 0.5
    threads: int = 20
    assistants: int = 3
    models: tuple[str, ...] = ("gpt-4o", "gpt-4o-mini", "gpt-4.1")
    steps: tuple[int, int] = (2, 6)
    step_seconds: tuple[float, float] = (0.5, 6.0)
    queue_seconds: tuple[float, float] = (0.1, 1.5)
    submit_delay_s: tuple[float, float] = (0.5, 4.0)
    tool_mix: tuple[tuple[str, float], ...] = (
        ("message_creation", 0.3),
        ("function", 0.25),
        ("code_interpreter", 0.25),
        ("file_search", 0.2),
    )
    azure_tool_weight: float = 0.3
    failure_rate: float = 0.03
    cancel_rate: float = 0.02
    expire_rate: float = 0.0
    incomplete_rate: float = 0.02
    prompt_tokens: tuple[int, int] = (150, 2500)
    completion_tokens: tuple[int, int] = (10, 600)
    expires_after_s: float = 600.0
    total_runs: int | None = None  # the workload stops after creating this many runs (None: never)

    def validate(self) -> list[str]:
        """Every problem as `field: reason`; empty when the scenario is usable."""
        problems: list[str] = []
        if self.runs_per_second < 0:
            problems.append("runs_per_second: must be >= 0")
        if self.total_runs is not None and self.total_runs < 0:
            problems.append("total_runs: must be >= 0")
        if self.threads < 1:
            problems.append("threads: must be >= 1")
        if self.assistants < 1:
            problems.append("assistants: must be >= 1")
        if not self.models:
            problems.append("models: must not be empty")
        for name in ("steps", "step_seconds", "queue_seconds", "submit_delay_s", "prompt_tokens", "completion_tokens"):
            low, high = getattr(self, name)
            if low < 0 or high < low:
                problems.append(f"{name}: need 0 <= low <= high")
        if self.steps[0] < 1:
            problems.append("steps: a run has at least one step")
        for name in ("failure_rate", "cancel_rate", "expire_rate", "incomplete_rate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                problems.append(f"{name}: must be within 0..1")
        if self.failure_rate + self.cancel_rate + self.expire_rate + self.incomplete_rate > 1.0:
            problems.append("failure_rate+cancel_rate+expire_rate+incomplete_rate: must not exceed 1")
        unknown = [kind for kind, _ in self.tool_mix if kind not in STEP_KINDS]
        if unknown:
            problems.append(f"tool_mix: unknown kinds {unknown}")
        if self.expires_after_s <= 0:
            problems.append("expires_after_s: must be > 0")
        return problems

    def replace(self, **changes: Any) -> Scenario:
        """A copy with `changes` applied (None values are ignored, so CLI overrides pass straight through)."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})


SCENARIOS: dict[str, Scenario] = {
    "steady": Scenario(),
    "lively": Scenario(
        name="lively",
        runs_per_second=1.5,
        threads=60,
        steps=(2, 8),
        failure_rate=0.08,
        cancel_rate=0.04,
        expire_rate=0.03,
        incomplete_rate=0.04,
        expires_after_s=120.0,
    ),
    "faulty": Scenario(
        name="faulty",
        runs_per_second=1.0,
        failure_rate=0.45,
        cancel_rate=0.05,
        expire_rate=0.05,
        incomplete_rate=0.05,
        expires_after_s=90.0,
    ),
    "quiet": Scenario(name="quiet", runs_per_second=0.0),
}


def scenario_named(name: str, **overrides: Any) -> Scenario:
    """The preset `name` with `overrides` applied; `KeyError` names the known presets."""
    try:
        base = SCENARIOS[name]
    except KeyError:
        raise KeyError(f"unknown scenario {name!r}; known: {', '.join(sorted(SCENARIOS))}") from None
    return base.replace(**overrides)
