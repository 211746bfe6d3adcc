"""The checkpoint store as the event loop uses it: every call runs on one thread of the store's own.

The event loop serves the proxy's relaying, `/healthz` and `/metrics`; a write waiting on a disk, a full
filesystem or a lock another process holds must never hold them up. `AsyncStore` wraps a `SqliteStore`: each
async method runs the store's method of the same name on a single worker thread (one thread keeps SQLite's
writes in order) and returns its result, raising what it raises (`StoreError`). A locked database fails fast
(`store.BUSY_TIMEOUT_S`) and the caller retries later. The delivery thread keeps using the `SqliteStore` directly,
so it is a component of its own: `start()` opens the store, `stop()` drains the thread and closes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

from stepscope.core.records import UnitRef
from stepscope.core.store import RunProgress, SqliteStore

_P = ParamSpec("_P")
_T = TypeVar("_T")


class AsyncStore:
    """`store`'s calls off the event loop; see the module docstring. Methods raise `StoreError`."""

    name = "store"

    def __init__(self, store: SqliteStore) -> None:
        self.sync = store
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="stepscope-store")
        self._closed = False

    async def _run(self, fn: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> _T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._thread, functools.partial(fn, *args, **kwargs))

    # --- component ----------------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the store (raises `StoreError` naming the path and the fix)."""
        await self._run(self.sync.open)

    async def stop(self, budget_s: float = 1.0) -> None:
        """Let the calls in flight finish (within `budget_s`), then close the store. Idempotent."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._run(lambda: None), timeout=max(0.05, budget_s))
        self._thread.shutdown(wait=False, cancel_futures=True)
        self.sync.close()

    # --- the store's calls ----------------------------------------------------------------------------------------

    async def active_runs(self) -> list[RunProgress]:
        return await self._run(self.sync.active_runs)

    async def known_runs(self, run_ids: Iterable[str]) -> set[str]:
        return await self._run(self.sync.known_runs, list(run_ids))

    async def known_units(self, run_ids: Iterable[str]) -> dict[str, str]:
        return await self._run(self.sync.known_units, list(run_ids))

    async def add_run(self, ref: UnitRef, now: float) -> None:
        await self._run(self.sync.add_run, ref, now)

    async def commit_steps(
        self, ref: UnitRef, step_ids: Sequence[str], cursor: str | None, now: float, spans: Sequence[bytes] = ()
    ) -> None:
        await self._run(self.sync.commit_steps, ref, step_ids, cursor, now, spans)

    async def finish_run(self, ref: UnitRef, now: float, spans: Sequence[bytes] = ()) -> None:
        await self._run(self.sync.finish_run, ref, now, spans)

    async def forget_run(self, ref: UnitRef) -> None:
        await self._run(self.sync.forget_run, ref)

    async def prune(self, finished_before: float) -> int:
        return await self._run(self.sync.prune, finished_before)

    async def watch(self, container_id: str, unit_id: str | None, now: float) -> None:
        await self._run(self.sync.watch, container_id, unit_id, now)

    async def unwatch(self, container_id: str, unit_id: str | None) -> None:
        await self._run(self.sync.unwatch, container_id, unit_id)

    async def watched(self) -> list[tuple[str, str | None]]:
        return await self._run(self.sync.watched)
