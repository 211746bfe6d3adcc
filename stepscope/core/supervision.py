"""Knowing that stepscope still works: the event loop's heartbeat and each loop's last progress, for `/healthz`.

`Progress` keeps, for each supervised loop (discovery, delivery, polling), when it last made progress and how long
it may go without: `beat(name)` records progress, `stalled()` names the loops past their allowance. A loop that is
not registered is not supervised. `Heartbeat` is a component whose task beats every `every_s` seconds: when the
event loop is blocked or starved, its beats stop, and `alive()` says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Protocol

HEARTBEAT_S = 1.0
"""How often the heartbeat task beats."""
MISSED_BEATS = 10
"""Beats that may be missed before the loop counts as stuck."""


class Beats(Protocol):
    """Where a loop says it made progress (`Progress`). Must not block or raise."""

    def beat(self, name: str) -> None: ...


class Progress:
    """When each supervised loop last made progress. `monotonic` is the clock; times are its seconds."""

    def __init__(self, *, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._monotonic = monotonic
        self._allowed: dict[str, float] = {}
        self._last: dict[str, float] = {}

    def supervise(self, name: str, allowed_s: float) -> None:
        """Watch loop `name`: it counts as stalled once it made no progress for `allowed_s` seconds (from now)."""
        self._allowed[name] = allowed_s
        self._last[name] = self._monotonic()

    def beat(self, name: str) -> None:
        """Loop `name` made progress now. Never raises; unknown names are ignored."""
        if name in self._allowed:
            self._last[name] = self._monotonic()

    def stalled(self) -> list[str]:
        """The supervised loops past their allowance, in registration order."""
        now = self._monotonic()
        return [name for name, allowed in self._allowed.items() if now - self._last[name] > allowed]


class Heartbeat:
    """A component beating every `every_s` seconds on the event loop; `alive()` is False once it missed
    `MISSED_BEATS` beats (the loop is blocked) or before it started."""

    name = "heartbeat"

    def __init__(self, *, every_s: float = HEARTBEAT_S, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._every = every_s
        self._monotonic = monotonic
        self._last: float | None = None
        self._task: asyncio.Task[None] | None = None

    def alive(self) -> bool:
        return self._last is not None and self._monotonic() - self._last < MISSED_BEATS * self._every

    async def start(self) -> None:
        if self._task is None:
            self._last = self._monotonic()
            self._task = asyncio.create_task(self._beat(), name="stepscope-heartbeat")

    async def stop(self, budget_s: float = 0.1) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _beat(self) -> None:
        while True:
            self._last = self._monotonic()
            await asyncio.sleep(self._every)
