"""What every protocol's discovery shares: its settings, its neighbours, and one supervised periodic loop.

A discovery finds units of work and hands them to the poller. `PeriodicDiscovery` is the loop: a pass (`run_once`,
the protocol's) at start, then every `interval_s`, or at once when `wake()` is called; a wake that arrives during a
pass starts the next pass as soon as it ends. A pass that raises is logged once per episode with its reason,
counted (`discovery_failed`), and retried after a backoff that doubles up to `MAX_BACKOFF_S`; the loop never ends
on its own, so a broken answer can delay discovery but never silently stop it. Each finished pass records
`last_pass` (wall clock) and tells `progress`, which `/healthz` reads.

The neighbours are tiny protocols: `Tracker` (the poller: where new units go), `RegistrationStore` (the few store
methods discoveries use), `ApiOutcomes` (where API outcomes go). `shard_of` is the stable shard of a container id,
the same on every replica, restart and Python process.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

from stepscope.contract.vocabulary import DropReason
from stepscope.core.records import Drops, UnitRef
from stepscope.core.supervision import Beats
from stepscope.errors import SourceError

log = logging.getLogger("stepscope.discovery")

DISCOVERY_CONCURRENCY = 8
"""Listings in flight at once during one pass."""
DISCOVERY_BUDGET = 16 * DISCOVERY_CONCURRENCY
"""Listings per pass at most: with 8 in flight, a pass lasts about 16 listing round trips whatever is watched."""
MAX_BACKOFF_S = 60.0
"""Longest wait after passes that raised, doubling from the interval."""
PASS_DEADLINE_S = 300.0
"""A pass still going after this long is abandoned (counted as `task_failed`); the next one starts over."""


def shard_of(container_id: str, count: int) -> int:
    """Stable shard of a container (thread, session, conversation): the same on every replica and restart."""
    digest = hashlib.sha256(container_id.encode()).digest()
    return int.from_bytes(digest[:8], "big") % count


class Tracker(Protocol):
    """The poller as discovery sees it: where new units go, and which it tracks already. `track` of an id tracked
    under another container returns False, counting and logging the collision (`unit_id_collision`)."""

    def track(self, ref: UnitRef) -> bool: ...

    def is_tracked(self, unit_id: str) -> bool: ...

    def busy_containers(self) -> set[str]: ...

    def poll_soon(self, unit_id: str) -> None: ...

    def untrack(self, unit_id: str) -> None: ...

    def state_of(self, unit_id: str) -> object | None:
        """The reader's state of a tracked unit (None when untracked), for a discovery that hands it what a
        listing showed."""
        ...


class RegistrationStore(Protocol):
    """The checkpoint store as discovery uses it, off the event loop (`AsyncStore`): registrations, and which units
    it knows. Raises `StoreError`."""

    async def watched(self) -> list[tuple[str, str | None]]: ...

    async def watch(self, container_id: str, unit_id: str | None, now: float) -> None: ...

    async def unwatch(self, container_id: str, unit_id: str | None) -> None: ...

    async def known_runs(self, unit_ids: Iterable[str]) -> set[str]: ...

    async def known_units(self, unit_ids: Iterable[str]) -> dict[str, str]: ...

    async def prune(self, finished_before: float) -> int: ...


class ApiOutcomes(Protocol):
    """Where discovery reports the outcome of its API requests (`health.ApiHealth`, which the poller shares)."""

    def ok(self) -> None: ...

    def failed(self, exc: SourceError) -> None: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class DiscoverySettings:
    """How one discovery paces itself: the lookback horizon, the pass interval, the replica's shard, and the most
    listings one pass may make."""

    lookback_s: float = 3600.0
    interval_s: float = 2.0
    shard_index: int = 0
    shard_count: int = 1
    pass_budget: int = DISCOVERY_BUDGET


@dataclass(frozen=True, slots=True, kw_only=True)
class DiscoverySeams:
    """A discovery's neighbours: the store, the poller, where API outcomes, drops and progress go, and the clocks."""

    store: RegistrationStore
    tracker: Tracker
    health: ApiOutcomes
    drops: Drops
    beats: Beats | None = None
    wall: Callable[[], float] = time.time
    monotonic: Callable[[], float] = time.monotonic


class PeriodicDiscovery(abc.ABC):
    """The loop every protocol's discovery runs; subclasses implement `run_once()` (one pass, returning how many
    units it started tracking). A component: `start()` returns at once, `stop()` is idempotent."""

    name = "discovery"

    def __init__(self, settings: DiscoverySettings, seams: DiscoverySeams) -> None:
        self.settings = settings
        self.seams = seams
        self._store = seams.store
        self._tracker = seams.tracker
        self._api = seams.health
        self._drops = seams.drops
        self._wall = seams.wall
        self._monotonic = seams.monotonic
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.last_pass: float | None = None

    def owns(self, container_id: str) -> bool:
        """Whether this replica's shard owns the container."""
        s = self.settings
        return s.shard_count == 1 or shard_of(container_id, s.shard_count) == s.shard_index

    async def known(self, ref: UnitRef) -> bool:
        """Whether the store knows the unit; an id it knows under another container is a collision (two units the
        server gave one id), counted as `unit_id_collision` and logged, and is treated as known: one is followed."""
        container = (await self._store.known_units([ref.unit_id])).get(ref.unit_id)
        if container is None:
            return False
        if container != ref.container_id:
            self._drops.dropped(DropReason.UNIT_ID_COLLISION)
            log.warning("%s in %s has the id of a unit already seen in %s: only the first is followed",
                        ref.unit_id, ref.container_id, container)  # fmt: skip
        return True

    def wake(self) -> None:
        """Start the next pass now (or right after the current one)."""
        self._wake.set()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    @property
    def running(self) -> bool:
        """True while the loop runs (False before start, after stop or if it was cancelled)."""
        return self._task is not None and not self._task.done()

    @property
    def allowed_s(self) -> float:
        """How long the loop may go without finishing a pass before it counts as stalled."""
        return self.settings.interval_s + PASS_DEADLINE_S + MAX_BACKOFF_S

    @abc.abstractmethod
    async def run_once(self) -> int:
        """One pass; returns how many units it started tracking. May raise: the loop counts it and backs off."""

    async def start(self) -> None:
        if self._task is None and not self._stopping.is_set():
            self._task = asyncio.create_task(self._loop(), name=f"stepscope-{self.name}")

    async def stop(self, budget_s: float = 1.0) -> None:
        self._stopping.set()
        self._wake.set()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _loop(self) -> None:
        failures = 0
        interval = self.settings.interval_s
        while not self._stopping.is_set():
            self._wake.clear()  # before the pass: a wake that comes during it starts the next one at once
            wait = interval
            try:
                await asyncio.wait_for(self.run_once(), timeout=PASS_DEADLINE_S)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a stage boundary: a pass that breaks is retried, never the end of discovery
                failures += 1
                wait = min(MAX_BACKOFF_S, interval * 2**failures)
                self._drops.dropped(DropReason.TASK_FAILED)
                if failures == 1:
                    log.error("%s pass failed (%s: %s); retrying with backoff", self.name, type(exc).__name__, exc,
                              exc_info=not isinstance(exc, RecursionError | MemoryError))  # fmt: skip
            else:
                if failures:
                    log.info("%s passes succeed again after %d failure(s)", self.name, failures)
                failures = 0
                self.last_pass = self._wall()
                if self.seams.beats is not None:
                    self.seams.beats.beat(self.name)
            # After a failure only a stop ends the backoff: wakes (webhooks, registrations) must not hammer the API.
            event = self._stopping if failures else self._wake
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), timeout=wait)
