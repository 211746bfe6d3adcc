"""`Feed`: a bounded queue of observations applied in order by one task, for what the proxy and webhooks report.

What the proxy sees must never wait on stepscope: its sinks only `put` (never blocking, never raising; past
`queue_max` an observation is dropped and counted as `proxy_feed_full`, and polling or a listing finds the unit
later), and one task awaits `apply(observation)` for each, in order. `apply` may touch the store and the poller.
What it raises is a stage boundary: an unreadable object is counted as `proxy_unreadable` and logged, a store that
cannot be used as `proxy_feed_error` (the store logs it once per episode), anything else as `proxy_feed_error` with
its traceback; the feed goes on. A component: `start()` runs the task, `stop(budget_s)` applies what is queued
within its budget, then ends it; idempotent.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

from stepscope.contract.vocabulary import DropReason
from stepscope.core.records import Drops
from stepscope.errors import InvalidObject, StoreError

log = logging.getLogger("stepscope.proxy")

QUEUE_MAX = 10_000
"""Observations waiting at most (about 10 MB of small JSON objects)."""

E = TypeVar("E")


class Feed(Generic[E]):
    """See the module docstring. `name` names the component and its task."""

    def __init__(
        self, name: str, apply: Callable[[E], Awaitable[None]], *, drops: Drops, queue_max: int = QUEUE_MAX
    ) -> None:
        self.name = name
        self._apply = apply
        self._drops = drops
        self._queue: collections.deque[E] = collections.deque()
        self._queue_max = queue_max
        self._ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def put(self, observation: E) -> None:
        """Queue one observation; past the bound it is dropped and counted. Never blocks or raises."""
        if len(self._queue) >= self._queue_max:
            self._drops.dropped(DropReason.PROXY_FEED_FULL)
            return
        self._queue.append(observation)
        self._ready.set()

    @property
    def pending(self) -> int:
        """Observations queued, not applied yet."""
        return len(self._queue)

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._apply_forever(), name=f"stepscope-{self.name.replace(' ', '-')}")

    async def stop(self, budget_s: float = 1.0) -> None:
        """Apply what is queued (within `budget_s`), then stop. Idempotent."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._apply_all(), timeout=budget_s)

    async def _apply_forever(self) -> None:
        while True:
            await self._ready.wait()
            self._ready.clear()
            await self._apply_all()

    async def _apply_all(self) -> None:
        while self._queue:
            observation = self._queue.popleft()
            try:
                await self._apply(observation)
            except InvalidObject as exc:
                log.warning("proxy: %s", exc)
                self._drops.dropped(DropReason.PROXY_UNREADABLE)
            except StoreError:
                self._drops.dropped(DropReason.PROXY_FEED_ERROR)
            except Exception:  # a stage boundary: one bad observation never stops the feed
                log.exception("%s failed on an observation", self.name)
                self._drops.dropped(DropReason.PROXY_FEED_ERROR)
