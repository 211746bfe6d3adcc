"""One lifecycle for every long-lived component: started in order, stopped in reverse, inside one deadline.

Each component enters as a `Stage`: a name, an async `start` that returns quickly, and an async `stop(budget_s)`
that flushes within the seconds it is given. `Lifecycle.start()` starts the stages in order; if one fails, the ones
already started are stopped (in reverse) before the error propagates, so a half-started process leaves nothing
running. `Lifecycle.stop(budget_s)` stops every started stage in reverse order, each within what is left of the
budget, and is idempotent; a stage whose stop raises is logged and the others still stop.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

log = logging.getLogger("stepscope.core.lifecycle")


async def _nothing(budget_s: float = 0.0) -> None:
    return None


@dataclass(frozen=True, slots=True)
class Stage:
    """A component's place in the lifecycle. `stop` gets the seconds left of the shutdown budget."""

    name: str
    start: Callable[[], Awaitable[None]] = _nothing
    stop: Callable[[float], Awaitable[None]] = _nothing


class Lifecycle:
    def __init__(self, stages: list[Stage], *, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._stages = stages
        self._monotonic = monotonic
        self._started: list[Stage] = []
        self._stopped = False

    @property
    def started(self) -> bool:
        """Every stage started, and no stop yet."""
        return len(self._started) == len(self._stages) and not self._stopped

    async def start(self) -> None:
        """Start every stage in order; on a failure stop those started, then re-raise."""
        for stage in self._stages:
            try:
                await stage.start()
            except BaseException:
                await self.stop(budget_s=5.0)
                raise
            self._started.append(stage)

    async def stop(self, budget_s: float) -> None:
        """Stop the started stages in reverse order within `budget_s` seconds overall. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        deadline = self._monotonic() + budget_s
        for stage in reversed(self._started):
            try:
                await stage.stop(max(0.0, deadline - self._monotonic()))
            except Exception:
                log.exception("stopping %s failed", stage.name)
