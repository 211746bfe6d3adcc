"""What discovery (of runs or of sessions) needs of its neighbours, and which replica owns which container.

`RunTracker` is the poller as discovery sees it (where new units go); `ApiOutcomes` where API outcomes go;
`RegistrationStore` the few store methods discovery uses (registrations, and which units the store knows);
`shard_of` the stable shard of a thread or session id, the same on every replica and every restart.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Protocol

from stepscope.core.records import UnitRef
from stepscope.errors import SourceError


def shard_of(thread_id: str, count: int) -> int:
    """Stable shard of a thread: the same on every replica, every restart and every Python process."""
    digest = hashlib.sha256(thread_id.encode()).digest()
    return int.from_bytes(digest[:8], "big") % count


class RegistrationStore(Protocol):
    """The checkpoint store as discovery uses it: registrations, and which runs it knows. Raises `StoreError`."""

    def watched(self) -> list[tuple[str, str | None]]: ...

    def watch(self, thread_id: str, run_id: str | None, now: float) -> None: ...

    def unwatch(self, thread_id: str, run_id: str | None) -> None: ...

    def known_runs(self, run_ids: Iterable[str]) -> set[str]: ...

    def prune(self, finished_before: float) -> int: ...


class ApiOutcomes(Protocol):
    """Where discovery reports the outcome of its API requests (`health.ApiHealth`, which the poller shares)."""

    def ok(self) -> None: ...

    def failed(self, exc: SourceError) -> None: ...


class RunTracker(Protocol):
    """The poller as discovery sees it: where new units go, and which it tracks already."""

    def track(self, ref: UnitRef) -> bool: ...

    def is_tracked(self, run_id: str) -> bool: ...

    def busy_threads(self) -> set[str]: ...
