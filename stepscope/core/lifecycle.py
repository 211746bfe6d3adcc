"""One lifecycle for every long-lived component: started in order, stopped in reverse, inside one budget.

A `Component` has two methods: `start()` returns quickly (it launches tasks or threads, it does not wait for work),
and `stop(budget_s)` stops intake, flushes what it can within `budget_s` seconds and releases what it holds; `stop`
is idempotent and safe without `start`. `Lifecycle(components)` starts them in list order; when one fails, the
ones already started are stopped in reverse, within `ROLLBACK_BUDGET_S`, before the error propagates, so a
half-started process leaves nothing running. A start given a `stopping` predicate (a signal arrived) starts no
component once it holds and returns early (`interrupted`), leaving those started to `stop`. `stop(budget_s)` stops
every started component in reverse order, each within what is left of the budget (at least `MIN_STAGE_S`, so a slow
early stop never leaves a later one nothing), and never raises: a stop that raises is logged and the others still
stop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import Protocol

log = logging.getLogger("stepscope.lifecycle")

ROLLBACK_BUDGET_S = 5.0
"""Seconds a failed start may spend stopping what it had started: a start-up error should surface promptly."""
MIN_STAGE_S = 0.05
"""Each component's stop gets at least this long, even when an earlier one used up the budget."""


class Component(Protocol):
    """A long-lived part of stepscope. `start` must return quickly; `stop` must be idempotent, safe without
    `start`, and return within about `budget_s` seconds."""

    async def start(self) -> None: ...

    async def stop(self, budget_s: float) -> None: ...


def name_of(component: Component) -> str:
    """A component's name for log lines: its `name` attribute when it has one, else its class name."""
    name = getattr(component, "name", None)
    return name if isinstance(name, str) else type(component).__name__


class Lifecycle:
    """Starts `components` in order and stops them in reverse. `monotonic` is the clock the budget is kept with."""

    def __init__(self, components: Sequence[Component], *, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._components = list(components)
        self._monotonic = monotonic
        self._started: list[Component] = []
        self._stopped = False
        self._interrupted = False

    @property
    def started(self) -> bool:
        """Every component started, and no stop yet."""
        return len(self._started) == len(self._components) and not self._stopped

    @property
    def interrupted(self) -> bool:
        """The last `start` returned early because `stopping()` held: not every component started."""
        return self._interrupted

    async def start(self, stopping: Callable[[], bool] = lambda: False) -> None:
        """Start every component in order; on a failure stop those started (in reverse), then re-raise. Once
        `stopping()` holds, start no more and return (`interrupted`)."""
        for component in self._components:
            if stopping():
                self._interrupted = True
                return
            try:
                await component.start()
            except BaseException:
                await self.stop(ROLLBACK_BUDGET_S)
                raise
            self._started.append(component)

    async def stop(self, budget_s: float) -> None:
        """Stop the started components in reverse order within `budget_s` seconds overall. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        deadline = self._monotonic() + budget_s
        for component in reversed(self._started):
            left = max(MIN_STAGE_S, deadline - self._monotonic())
            try:
                # The budget is enforced, not trusted: a stop that overruns is abandoned and the next one goes on.
                await asyncio.wait_for(component.stop(left), timeout=left + MIN_STAGE_S)
            except TimeoutError:
                log.warning("stopping %s took longer than its %.1fs; going on without it", name_of(component), left)
            except Exception:
                log.exception("stopping %s failed", name_of(component))
