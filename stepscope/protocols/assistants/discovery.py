"""Discovery: which runs to watch.

Four combinable sources: configured thread ids, threads and runs registered through `/v1/watch` (kept in the
store), the project's threads listed newest first down to the lookback horizon (with a `ThreadSource`: Azure
Foundry Agents, when no thread is configured), and, for every watched thread, its runs listed newest first until a
known run or the lookback horizon. Listed threads are remembered until they fall behind the horizon, so each pass
lists only the threads created since the last one; like configured threads they are listed every pass, so a run
on any of them is found within one interval. A run on a thread older than the lookback is found only when the
thread is configured, registered or seen by the proxy.
A thread has at most one active run at a time, so older runs than a known one are known or finished already, and
a thread whose run is still being tracked is skipped: it cannot have started another. That keeps discovery cheap
enough to run every second on idle threads, which is what bounds the delay before a new run's first poll.
A run a listing found is handed to its reader state with the object the listing carried (no read before its
first poll), and followed: the reader learns of its end from one listing of the thread, whose newer runs come
back here (`_adopt`) and are tracked the same way, so on a thread running one run after another neither a pass's
listing nor a run read is spent between them. Runs tracked otherwise (the proxy, `/v1/watch` with a run id, a
restart) are read by id, and their thread is listed once they end.
With sharding (`INDEX/COUNT`) a replica owns only the threads whose stable hash falls in its shard.

Bounded against a flood of registrations:
- at most `max_registered` registrations (threads and runs); past it `watch()` raises `RegistrationFull`;
- one pass lists at most `pass_budget` threads, least recently listed first, so every thread gets its turn
  (round-robin) and a pass never takes minutes;
- a registered thread with no run inside the lookback is listed less and less often (doubling up to
  `EMPTY_BACKOFF_MAX_S`) and dropped once it stayed empty for the lookback window; a thread answering 404 is
  dropped at once. Drops are counted (`not_found`, `watch_expired`) and logged once per pass, not per thread.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import AsyncIterator, Iterable, Sequence
from collections.abc import Set as AbstractSet

from stepscope.contract.vocabulary import DropReason
from stepscope.core.discovery import DISCOVERY_CONCURRENCY, DiscoverySeams, DiscoverySettings, PeriodicDiscovery
from stepscope.core.records import UnitRef
from stepscope.errors import InvalidObject, NotFound, SourceError, StoreError, UnknownRoute
from stepscope.protocols.assistants.reader import RunState
from stepscope.protocols.assistants.records import Run, StepSource
from stepscope.protocols.assistants.threads import ThreadSource
from stepscope.protocols.base import RegistrationFull

log = logging.getLogger("stepscope.discovery")

DEFAULT_MAX_REGISTERED = 1000
EMPTY_BACKOFF_MAX_S = 60.0
"""Slowest re-listing of a registered thread without runs: 1,000 such threads cost about 17 requests/s at most."""
MIN_EMPTY_TTL_S = 60.0
"""A lookback of 0 must not expire every registered thread on its first listing."""

_EMPTY, _RUNS, _MISSING, _FAILED = "empty", "runs", "missing", "failed"


class Discovery(PeriodicDiscovery):
    """Finds runs on watched threads every `settings.interval_s` seconds (see the module docstring); a
    `PeriodicDiscovery`. Registrations past `max_registered` are refused and counted (`watch_limit`)."""

    def __init__(
        self,
        source: StepSource,
        settings: DiscoverySettings,
        seams: DiscoverySeams,
        *,
        threads: Iterable[str] = (),
        max_registered: int = DEFAULT_MAX_REGISTERED,
        thread_source: ThreadSource | None = None,
    ) -> None:
        super().__init__(settings, seams)
        self._source = source
        self._thread_source = thread_source
        self._listed: dict[str, int] = {}  # thread id -> created_at, threads listed inside the lookback
        self._configured = list(dict.fromkeys(threads))
        self._configured_set = set(self._configured)
        self._max_registered = max_registered
        self._budget = max(1, settings.pass_budget)
        self._missing: set[str] = set()  # configured threads that answered 404 (registered ones are unwatched)
        self._registered: set[tuple[str, str]] = set()  # (thread_id, run_id or ""), loaded at start, then each pass
        self._full_logged = False
        # Per-thread scheduling, pruned to the watched threads every pass.
        self._listed_at: dict[str, float] = {}  # monotonic time of the last listing
        self._unreadable_threads: set[str] = set()  # threads whose unreadable listing was logged (once an episode)
        self._not_before: dict[str, float] = {}  # monotonic time before which an empty thread is not listed
        self._backoff: dict[str, float] = {}  # current re-listing delay of an empty thread
        self._empty_since: dict[str, float] = {}  # wall time of the first listing in a row without a recent run
        self._active: set[str] = set()  # threads whose last listing had a run inside the lookback
        self._watching: frozenset[str] = frozenset()  # the threads of the last pass: where `_adopt` tracks runs

    def watched(self) -> list[str]:
        """Threads this replica watches: configured, listed and registered ones in its shard."""
        return self._threads([(t, r or None) for t, r in self._registered])

    def idle_reason(self) -> str | None:
        """None while a thread is watched or the project's threads are listed; else how to give it threads, after
        which configured threads were dropped for answering 404, when some were."""
        if self._thread_source is not None or self.watched():
            return None
        how = (
            "set STEPSCOPE_THREADS=thread_a,thread_b, or register threads with POST /v1/watch "
            '{"thread_id": ...}: runs are found on watched threads only'
        )
        gone = sorted(self._missing)
        if not gone:
            return how
        more = f" and {len(gone) - 3} more" if len(gone) > 3 else ""
        return f"the configured thread(s) {', '.join(gone[:3])}{more} answered 404 (not found); {how}"

    def _threads(self, rows: list[tuple[str, str | None]]) -> list[str]:
        registered = [t for t, run in rows if run is None]
        every = dict.fromkeys(self._configured + list(self._listed) + registered)
        return [t for t in every if self.owns(t) and t not in self._missing]

    def _pinned(self, thread_id: str) -> bool:
        """Configured or listed: listed every pass, never backed off or expired for being empty."""
        return thread_id in self._configured_set or thread_id in self._listed

    async def _list_threads(self) -> None:
        """Add the threads created since the last listing (down to the horizon) and forget those behind it.

        Newest first, stopping at the first thread already known: an older one was listed before. A listing that
        fails part-way adds nothing, so the next one starts again from the newest and misses no thread.
        """
        if self._thread_source is None:
            return
        horizon = self._wall() - self.settings.lookback_s
        for thread_id in [t for t, created in self._listed.items() if created < horizon]:
            del self._listed[thread_id]
        found: dict[str, int] = {}
        try:
            async for thread in self._thread_source.list_threads():
                if thread.created_at < horizon or thread.id in self._listed:
                    break
                found[thread.id] = thread.created_at
        except SourceError as exc:  # the API health says which state it means
            self._api.failed(exc)
            return
        self._listed.update(found)

    @property
    def registered_count(self) -> int:
        """Registrations (threads and runs) held now, as counted against `max_registered`."""
        return len(self._registered)

    # --- registration (from the HTTP server) --------------------------------------------------------------------

    async def watch(self, thread_id: str, run_id: str | None) -> bool:
        """Register a thread (and optionally one run); False when another shard owns the thread.

        Raises `RegistrationFull` for a new registration past `max_registered` (re-registering is always
        accepted), and `StoreError` when the store cannot record it. Registering again does not reset an empty
        thread's backoff or expiry: registering the run id is the prompt way to have a run tracked.
        """
        if not self.owns(thread_id):
            return False
        key = (thread_id, run_id or "")
        registered = self._registered
        new = key not in registered
        if new and len(registered) >= self._max_registered:
            self._drops.dropped(DropReason.WATCH_LIMIT, 1)
            if not self._full_logged:
                log.warning(
                    "refusing /v1/watch registrations: %d held, the maximum (STEPSCOPE_MAX_WATCHED); "
                    "registered threads without runs expire after the lookback",
                    self._max_registered,
                )
                self._full_logged = True
            raise RegistrationFull(self._max_registered)
        await self._store.watch(thread_id, run_id, self._wall())
        registered.add(key)
        if new and len(registered) < self._max_registered:
            self._full_logged = False
        self._missing.discard(thread_id)
        if run_id is not None:
            self._tracker.track(UnitRef(thread_id, run_id))
        elif new:
            self.wake()  # list the new thread now rather than after the interval
        return True

    async def unwatch(self, thread_id: str, run_id: str | None) -> None:
        """Drop a registration; a run named in it is no longer tracked either."""
        await self._store.unwatch(thread_id, run_id)
        self._registered.discard((thread_id, run_id or ""))
        if run_id is not None:
            self._tracker.untrack(run_id)

    # --- lifecycle ----------------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Load the registrations, track the runs registered before a restart, then start the loop. A store that
        cannot be read raises `StoreError`."""
        if not self.stopping:
            rows = await self._store.watched()
            self._registered = {(t, r or "") for t, r in rows}
            for thread_id, run_id in rows:
                if run_id is not None and self.owns(thread_id):
                    self._tracker.track(UnitRef(thread_id, run_id))
        await super().start()

    async def run_once(self) -> int:
        """One discovery pass over the due threads (at most `pass_budget`); returns how many runs it started
        tracking."""
        try:
            await self._store.prune(self._wall() - 2 * self.settings.lookback_s)
            rows = await self._store.watched()
        except StoreError:  # logged once per episode by the store
            return 0
        # The store is the truth: the poller deletes the registration of a run it dropped.
        self._registered = {(t, r or "") for t, r in rows}
        await self._list_threads()
        threads = self._threads(rows)
        self._watching = frozenset(threads)
        self._prune_schedule(self._watching)
        busy = self._tracker.busy_containers()
        now = self._monotonic()
        due = [t for t in threads if t not in busy and self._not_before.get(t, -math.inf) <= now]
        batch = self._pick(due)
        # A few listings in flight at once: one at a time, 10,000 threads took minutes per pass.
        gate = asyncio.Semaphore(DISCOVERY_CONCURRENCY)

        async def discover(thread_id: str) -> tuple[int, str]:
            async with gate:
                return (0, _FAILED) if self.stopping else await self._discover_thread(thread_id)

        results = await asyncio.gather(*(discover(t) for t in batch))
        await self._settle(dict(zip(batch, (outcome for _, outcome in results), strict=True)))
        self.last_pass = self._wall()
        return sum(found for found, _ in results)

    def _pick(self, due: list[str]) -> list[str]:
        """At most `budget` of the due threads, least recently listed (never listed: first) first.

        Half the budget goes first to configured threads and threads whose last listing had a recent run, so a
        flood of registrations cannot delay their new runs; the rest, and whatever they leave, goes round-robin to
        all. The threads left over are first in line next pass, so none waits more than ceil(due / budget) passes.
        """
        due = sorted(due, key=lambda t: self._listed_at.get(t, -math.inf))
        if len(due) <= self._budget:
            return due
        preferred = [t for t in due if self._pinned(t) or t in self._active][: self._budget // 2]
        chosen = set(preferred)
        rest = [t for t in due if t not in chosen][: self._budget - len(preferred)]
        return preferred + rest

    def _prune_schedule(self, watched: AbstractSet[str]) -> None:
        for table in (self._listed_at, self._not_before, self._backoff, self._empty_since):
            for thread_id in [t for t in table if t not in watched]:
                del table[thread_id]
        self._active &= watched

    async def _settle(self, outcomes: dict[str, str]) -> None:
        """Back off, expire or drop threads after a pass; count and log the drops once for the whole pass."""
        now, wall = self._monotonic(), self._wall()
        ttl = max(self.settings.lookback_s, MIN_EMPTY_TTL_S)
        missing = expired = 0
        for thread_id, outcome in outcomes.items():
            configured = thread_id in self._configured_set
            if outcome == _RUNS:
                self._active.add(thread_id)
                for table in (self._not_before, self._backoff, self._empty_since):
                    table.pop(thread_id, None)
                continue
            if outcome == _FAILED:
                continue  # the API's state is reported to the tracker; the thread is tried again next time
            self._active.discard(thread_id)
            if outcome == _MISSING:
                self._listed.pop(thread_id, None)  # a listed thread deleted since: nothing to report
                if configured and thread_id not in self._missing:
                    log.warning("configured thread %s not found; no longer watching it", thread_id)
                    self._missing.add(thread_id)
                if await self._drop_registered(thread_id):
                    missing += 1
            elif not self._pinned(thread_id):  # empty: back off, and drop once empty for the whole lookback
                since = self._empty_since.setdefault(thread_id, wall)
                if wall - since >= ttl and await self._drop_registered(thread_id):
                    expired += 1
                    continue
                delay = min(max(2 * self._backoff.get(thread_id, 0.0), self.settings.interval_s), EMPTY_BACKOFF_MAX_S)
                self._backoff[thread_id] = delay
                self._not_before[thread_id] = now + delay
        if missing:
            self._drops.dropped(DropReason.NOT_FOUND, missing)
        if expired:
            self._drops.dropped(DropReason.WATCH_EXPIRED, expired)
        if missing or expired:
            log.warning(
                "stopped watching %d registered thread(s): %d not found, %d without a run for %.0f s",
                missing + expired, missing, expired, ttl,
            )  # fmt: skip

    async def _drop_registered(self, thread_id: str) -> bool:
        """Forget a registered thread; False when it was not registered (configured only) or the store failed."""
        key = (thread_id, "")
        if key not in self._registered:
            return False
        try:
            await self._store.unwatch(thread_id, None)
        except StoreError:  # logged once per episode by the store; dropped on a later pass
            return False
        self._registered.discard(key)
        for table in (self._not_before, self._backoff, self._empty_since):
            table.pop(thread_id, None)
        return True

    async def backfill(self, thread_ids: Iterable[str]) -> int:
        """Discovery's one-shot mode (`stepscope backfill`): list each thread down to the lookback horizon and track
        every finished run the store does not know; runs still going are left to `serve`. Returns how many were
        tracked. Raises the `SourceError` or `InvalidObject` of a thread that cannot be listed."""
        horizon = self._wall() - self.settings.lookback_s
        found = 0
        for thread_id in thread_ids:
            async for run in self._recent_runs(thread_id, horizon):
                if (
                    run.is_terminal
                    and not self._tracker.is_tracked(run.id)
                    and not await self._store.known_runs([run.id])
                    and self._tracker.track(run.ref)
                ):
                    found += 1
                    self._hand_over(run, follow=False)  # ended already: nothing starts after it unseen
        return found

    async def _recent_runs(self, thread_id: str, horizon: float) -> AsyncIterator[Run]:
        """A thread's runs, newest first, down to `horizon`."""
        async for run in self._source.list_runs(thread_id):
            if run.created_at < horizon:
                return
            yield run

    async def _discover_thread(self, thread_id: str) -> tuple[int, str]:
        """List one thread's recent runs and track the new ones: (runs tracked, outcome)."""
        horizon = self._wall() - self.settings.lookback_s
        new: list[Run] = []
        recent = False
        self._listed_at[thread_id] = self._monotonic()
        try:
            async for run in self._recent_runs(thread_id, horizon):
                recent = True
                if self._tracker.is_tracked(run.id) or await self._store.known_runs([run.id]):
                    break
                new.append(run)
        except UnknownRoute as exc:  # the base URL is wrong, not the thread: it stays watched
            self._api.failed(exc)
            return 0, _FAILED
        except NotFound:
            return 0, _MISSING
        except SourceError as exc:
            if exc.status_code is not None and 200 <= exc.status_code < 300:
                # The server answered, but not readably: this thread's trouble, not the API's (counted by the source).
                self._unreadable(thread_id, exc)
            else:
                self._api.failed(exc)  # the API health says which state it means
            return 0, _FAILED
        except InvalidObject as exc:
            log.debug("listing runs of %s failed: %s", thread_id, exc)  # counted by the source
            return 0, _FAILED
        except StoreError:  # logged once per episode by the store; listed again next pass
            return 0, _FAILED
        self._api.ok()
        self._unreadable_threads.discard(thread_id)
        return self._track(new), _RUNS if recent else _EMPTY

    def _unreadable(self, thread_id: str, exc: SourceError) -> None:
        """Say once per episode that a thread's runs listing cannot be read; it is listed again each pass."""
        if thread_id not in self._unreadable_threads:
            self._unreadable_threads.add(thread_id)
            log.warning("the runs of %s cannot be read (%s); listing it again each pass", thread_id, exc)

    def _track(self, new: Sequence[Run]) -> int:
        """Track runs a listing found (newest first) oldest first, so a backfill exports history in order, each with
        its listed object and followed; returns how many were tracked."""
        found = 0
        for run in reversed(new):
            if self._tracker.track(run.ref):
                found += 1
                self._hand_over(run, follow=True)
        return found

    def _hand_over(self, run: Run, *, follow: bool) -> None:
        """Give a just tracked run's reader state the object the listing carried and, with `follow`, `_adopt` for
        the runs its thread starts after it. Nothing may be awaited between `track()` and this: the poller polls a
        new unit on its next round."""
        state = self._tracker.state_of(run.id)
        if isinstance(state, RunState):
            state.take_listed(run, self._adopt if follow else None)

    async def _adopt(self, thread_id: str, runs: Sequence[Run]) -> None:
        """A `Follow`: the runs a followed run's listing showed after it (newest first) are tracked like a pass's
        findings, down to the first one tracked or known. Never raises: on a store error, or for a thread no
        longer watched, they are left to the next pass."""
        if self.stopping or thread_id not in self._watching:
            return
        new: list[Run] = []
        try:
            for run in runs:
                if self._tracker.is_tracked(run.id) or await self._store.known_runs([run.id]):
                    break
                new.append(run)
        except StoreError:  # logged once per episode by the store
            return
        self._track(new)
