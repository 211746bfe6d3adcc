"""Discovery: which runs to watch.

Three combinable sources: configured thread ids, threads and runs registered through `/v1/watch` (kept in the
store), and, for every watched thread, its runs listed newest first until a known run or the lookback horizon.
A thread has at most one active run at a time, so older runs than a known one are known or finished already, and
a thread whose run is still being tracked is skipped: it cannot have started another. That keeps discovery cheap
enough to run every second on idle threads, which is what bounds the delay before a new run's first poll.
With sharding (`INDEX/COUNT`) a replica owns only the threads whose stable hash falls in its shard.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Callable, Iterable
from typing import Protocol

from stepscope.errors import AuthError, InvalidObject, NotFound, RateLimited, SourceError, StoreError
from stepscope.models import RunRef
from stepscope.store import SqliteStore
from stepscope.types import StepSource

log = logging.getLogger("stepscope.discovery")

DISCOVERY_CONCURRENCY = 8


def shard_of(thread_id: str, count: int) -> int:
    """Stable shard of a thread: the same on every replica, every restart and every Python process."""
    digest = hashlib.sha256(thread_id.encode()).digest()
    return int.from_bytes(digest[:8], "big") % count


class RunTracker(Protocol):
    """The poller as discovery sees it: where new runs go, and where API health is reported."""

    def track(self, ref: RunRef) -> bool: ...

    def is_tracked(self, run_id: str) -> bool: ...

    def busy_threads(self) -> set[str]: ...

    def api_ok(self) -> None: ...

    def api_failed(self, state: str, exc: SourceError) -> None: ...


class Discovery:
    """Finds runs on watched threads every `interval` seconds. `start()` returns at once."""

    def __init__(
        self,
        source: StepSource,
        store: SqliteStore,
        tracker: RunTracker,
        *,
        threads: Iterable[str] = (),
        lookback_s: float = 3600.0,
        interval_s: float = 5.0,
        shard_index: int = 0,
        shard_count: int = 1,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._source = source
        self._store = store
        self._tracker = tracker
        self._configured = list(dict.fromkeys(threads))
        self._lookback = lookback_s
        self._interval = interval_s
        self._shard = (shard_index, shard_count)
        self._wall = wall
        self._missing: set[str] = set()
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.last_pass: float | None = None

    def owns(self, thread_id: str) -> bool:
        index, count = self._shard
        return count == 1 or shard_of(thread_id, count) == index

    def threads(self) -> list[str]:
        """Threads this replica watches: configured and registered ones in its shard."""
        registered = [t for t, run in self._store.watched() if run is None]
        return [t for t in dict.fromkeys(self._configured + registered) if self.owns(t) and t not in self._missing]

    # --- registration (from the HTTP server) --------------------------------------------------------------------

    def watch(self, thread_id: str, run_id: str | None) -> bool:
        """Register a thread (and optionally one run); False when another shard owns the thread."""
        if not self.owns(thread_id):
            return False
        self._store.watch(thread_id, run_id, self._wall())
        self._missing.discard(thread_id)
        if run_id is not None:
            self._tracker.track(RunRef(thread_id, run_id))
        self._wake.set()
        return True

    def unwatch(self, thread_id: str, run_id: str | None) -> None:
        self._store.unwatch(thread_id, run_id)

    # --- lifecycle ----------------------------------------------------------------------------------------------

    async def start(self) -> None:
        if self._task is None:
            for thread_id, run_id in self._store.watched():
                if run_id is not None and self.owns(thread_id):
                    self._tracker.track(RunRef(thread_id, run_id))
            self._task = asyncio.create_task(self._loop(), name="stepscope-discovery")

    async def shutdown(self) -> None:
        self._stopping.set()
        self._wake.set()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _loop(self) -> None:
        while not self._stopping.is_set():
            await self.run_once()
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self._interval)

    async def run_once(self) -> int:
        """One discovery pass over every watched thread; returns how many runs started being tracked."""
        try:
            self._store.prune(self._wall() - 2 * self._lookback)
            threads = self.threads()
        except StoreError:
            log.exception("checkpoint store error during discovery")
            return 0
        busy = self._tracker.busy_threads()
        idle = [t for t in threads if t not in busy]
        # A few listings in flight at once: one at a time, 10,000 threads took minutes per pass.
        gate = asyncio.Semaphore(DISCOVERY_CONCURRENCY)

        async def discover(thread_id: str) -> int:
            async with gate:
                return 0 if self._stopping.is_set() else await self._discover_thread(thread_id)

        found = sum(await asyncio.gather(*(discover(t) for t in idle)))
        self.last_pass = self._wall()
        return found

    async def _discover_thread(self, thread_id: str) -> int:
        horizon = self._wall() - self._lookback
        new: list[RunRef] = []
        try:
            async for run in self._source.list_runs(thread_id):
                if run.created_at < horizon or self._tracker.is_tracked(run.id):
                    break
                if self._store.known_runs([run.id]):
                    break
                new.append(run.ref)
        except NotFound:
            log.warning("thread %s not found; no longer watching it", thread_id)
            self._missing.add(thread_id)
            self._store.unwatch(thread_id, None)
            return 0
        except AuthError as exc:
            self._tracker.api_failed("auth_failed", exc)
            return 0
        except RateLimited as exc:
            self._tracker.api_failed("rate_limited", exc)
        except SourceError as exc:
            self._tracker.api_failed("unavailable", exc)
        except InvalidObject as exc:
            log.debug("listing runs of %s failed: %s", thread_id, exc)  # counted by the source
        else:
            self._tracker.api_ok()
        # Oldest first, so a backfill exports history in order.
        return sum(1 for ref in reversed(new) if self._tracker.track(ref))
