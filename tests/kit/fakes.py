"""Injected fakes for poller, discovery, server and pipeline tests: an in-memory source, a run tracker, the status
service the HTTP server asks, a commit recorder, counters."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any, TypeVar

from stepscope.contract.vocabulary import DropReason
from stepscope.core.asyncstore import AsyncStore
from stepscope.core.discovery import DiscoverySeams, DiscoverySettings, PeriodicDiscovery, RegistrationStore, Tracker
from stepscope.core.health import ApiHealth, state_of
from stepscope.core.poller import Poller, PollSchedule, UnitStore
from stepscope.core.records import Commit, Drops, UnitRef
from stepscope.core.store import SqliteStore
from stepscope.errors import InvalidObject, LimitExceeded, NotFound, SourceError, StoreError
from stepscope.protocols.assistants.discovery import Discovery
from stepscope.protocols.assistants.factory import thread_fields
from stepscope.protocols.assistants.reader import RunState, StepReader
from stepscope.protocols.assistants.records import Assistant, Run, RunStep


@dataclass
class FakeSource:
    """Runs and steps held in memory; tests mutate them between polls. Raises `fail_with` once when set."""

    runs: dict[str, Run] = field(default_factory=dict)
    steps: dict[str, list[RunStep]] = field(default_factory=dict)
    calls: list[str] = field(default_factory=list)
    fail_with: SourceError | None = None
    missing_assistants: set[str] = field(default_factory=set)
    page_cap: int | None = None  # step listings end after this many steps with LimitExceeded("page_cap")
    invalid_runs: set[str] = field(default_factory=set)

    def put_run(self, run: Run) -> None:
        self.runs[run.id] = run
        self.steps.setdefault(run.id, [])

    def put_step(self, step: RunStep) -> None:
        steps = self.steps.setdefault(step.run_id, [])
        for i, existing in enumerate(steps):
            if existing.id == step.id:
                steps[i] = step
                return
        steps.append(step)

    def set_run_status(self, run_id: str, status: str, **kw: object) -> None:
        self.runs[run_id] = replace(self.runs[run_id], status=status, **kw)  # type: ignore[arg-type]

    def _maybe_fail(self) -> None:
        if self.fail_with is not None:
            exc, self.fail_with = self.fail_with, None
            raise exc

    async def list_runs(self, thread_id: str, *, limit: int = 20) -> AsyncIterator[Run]:
        self.calls.append(f"list_runs {thread_id}")
        self._maybe_fail()
        for run in sorted(self.runs.values(), key=lambda r: (r.created_at, r.id), reverse=True):
            if run.thread_id == thread_id:
                yield run

    async def get_run(self, ref: UnitRef) -> Run:
        self.calls.append(f"get_run {ref.unit_id}")
        self._maybe_fail()
        if ref.unit_id in self.invalid_runs:
            raise InvalidObject("run", "expires_at out of range", object_id=ref.unit_id)
        return self.runs[ref.unit_id]

    async def list_steps(self, ref: UnitRef, *, after: str | None = None, limit: int = 100) -> AsyncIterator[RunStep]:
        self.calls.append(f"list_steps {ref.unit_id} after={after}")
        self._maybe_fail()
        steps = self.steps.get(ref.unit_id, [])
        ids = [s.id for s in steps]
        start = ids.index(after) + 1 if after in ids else 0
        for n, step in enumerate(steps[start:]):
            if self.page_cap is not None and n == self.page_cap:
                raise LimitExceeded("listing still had more pages at the cap", reason="page_cap")
            yield step

    async def get_step(self, ref: UnitRef, step_id: str) -> RunStep:
        self.calls.append(f"get_step {step_id}")
        self._maybe_fail()
        return next(step for step in self.steps[ref.unit_id] if step.id == step_id)

    async def get_assistant(self, assistant_id: str) -> Assistant:
        self.calls.append(f"get_assistant {assistant_id}")
        if assistant_id in self.missing_assistants:
            raise NotFound(f"no assistant {assistant_id}", status_code=404)
        return Assistant(id=assistant_id, name="Helper", model="gpt-4o")


@dataclass
class RecordingTracker:
    """Discovery's `Tracker` and `ApiOutcomes` at once: records the runs it is given (accepting each), the units it
    was asked to poll soon and the API states reported, as `health.state_of` names them; `busy` is the set of
    containers it reports busy."""

    refs: list[UnitRef] = field(default_factory=list)
    states: list[str] = field(default_factory=list)
    busy: set[str] = field(default_factory=set)

    def track(self, ref: UnitRef) -> bool:
        self.refs.append(ref)
        return True

    polled: list[str] = field(default_factory=list)

    def is_tracked(self, run_id: str) -> bool:
        return any(r.unit_id == run_id for r in self.refs)

    def busy_containers(self) -> set[str]:
        return self.busy

    def poll_soon(self, unit_id: str) -> None:
        self.polled.append(unit_id)

    def untrack(self, unit_id: str) -> None:
        self.refs = [r for r in self.refs if r.unit_id != unit_id]

    def state_of(self, unit_id: str) -> object | None:
        return None  # a recorder holds no reader states: discovery hands it nothing

    def ok(self) -> None:
        self.states.append("ok")

    def failed(self, exc: SourceError) -> None:
        self.states.append(state_of(exc))


class DiscoveryService:
    """The sidecar as the HTTP surface sees it (`SidecarControl`) and the Assistants `/v1/watch` registrations, backed
    by a real Discovery and store; `fail_store = True` makes registrations fail as a store that cannot be written
    does."""

    def __init__(self, discovery: Discovery, *, fail_store: bool = False) -> None:
        self.discovery = discovery
        self.fail_store = fail_store
        self.calls = 0

    def alive(self) -> bool:
        return True

    def ready(self) -> bool:
        return True

    def status(self) -> dict[str, Any]:
        return {"watched_threads": len(self.discovery.watched())}

    async def watch(self, fields: Mapping[str, str]) -> bool:
        """Count a registration that got past validation, then register it (or fail as a broken store)."""
        ids = thread_fields(fields)
        self.calls += 1
        if self.fail_store:
            raise StoreError("checkpoint store write failed: disk I/O error")
        return await self.discovery.watch(*ids)

    async def unwatch(self, fields: Mapping[str, str]) -> None:
        ids = thread_fields(fields)
        self.calls += 1
        await self.discovery.unwatch(*ids)


@dataclass
class RecordingCommits:
    """A reader's `Committer`: keeps what it was given. Set `fail = True` to refuse commits (a store error)."""

    commits: list[Commit[Run, RunStep, str]] = field(default_factory=list)
    fail: bool = False

    async def commit(self, commit: Commit[Run, RunStep, str]) -> bool:
        if self.fail:
            return False
        self.commits.append(commit)
        return True

    @property
    def steps(self) -> list[tuple[Run, RunStep, str | None]]:
        return [(c.unit, step, c.cursor) for c in self.commits for step in c.records]

    @property
    def runs(self) -> list[tuple[Run, str | None]]:
        return [(c.unit, c.finish) for c in self.commits if c.finished]

    def step_ids(self) -> list[str]:
        return [step.id for _, step, _ in self.steps]

    def finished_runs(self) -> list[str]:
        return [run.id for run, _ in self.runs]


@dataclass
class Counters:
    """The health sink of the poller, reader and pipeline: drops by reason and export lags, kept as given."""

    counts: dict[str, int] = field(default_factory=dict)
    lags: list[float] = field(default_factory=list)

    def dropped(self, reason: DropReason | str, n: int = 1) -> None:
        self.counts[reason] = self.counts.get(reason, 0) + n

    def export_failed(self, n: int = 1) -> None:
        self.dropped("export_failed", n)

    def observe_export_lag(self, seconds: float) -> None:
        self.lags.append(seconds)


def make_poller(
    source: FakeSource,
    store: UnitStore | SqliteStore,
    commits: RecordingCommits,
    health: Counters,
    *,
    schedule: PollSchedule,
    api: ApiHealth | None = None,
    **kw: Any,
) -> Poller[RunState]:
    """A poller over a `StepReader` of `source`, the way the composition root wires one."""
    reader = StepReader(source, commits, health, schedule=schedule)
    units = AsyncStore(store) if isinstance(store, SqliteStore) else store
    return Poller(reader, units, health, api or ApiHealth(), slow=schedule.slow, **kw)


class CallbackDrops:
    """A `Drops` that hands every count to `callback(reason, n)`."""

    def __init__(self, callback: Callable[[str, int], None]) -> None:
        self._callback = callback

    def dropped(self, reason: DropReason, n: int = 1) -> None:
        self._callback(reason, n)


_D = TypeVar("_D", bound=PeriodicDiscovery)
_SETTINGS = frozenset(f.name for f in fields(DiscoverySettings))
_SEAMS = frozenset({"health", "beats", "wall", "monotonic"})


def make_discovery(
    kind: Callable[..., _D],
    source: Any,
    store: RegistrationStore | SqliteStore,
    tracker: Tracker,
    *,
    on_drop: Callable[[str, int], None] | None = None,
    drops: Drops | None = None,
    **kw: Any,
) -> _D:
    """A discovery of class `kind` over `source`, `store` and `tracker`: keyword arguments naming a
    `DiscoverySettings` field or a seam (`health`, `beats`, `wall`, `monotonic`) go there, the rest to the class;
    `drops` (or `on_drop(reason, n)`) receives the drops; a `SqliteStore` is used through an `AsyncStore`.
    Without `health`, the tracker takes the API outcomes if it can."""
    settings = DiscoverySettings(**{k: kw.pop(k) for k in list(kw) if k in _SETTINGS})
    seams: dict[str, Any] = {k: kw.pop(k) for k in list(kw) if k in _SEAMS}
    seams.setdefault("health", tracker if hasattr(tracker, "failed") else ApiHealth())
    seams.setdefault("wall", time.time)
    if drops is None:
        drops = CallbackDrops(on_drop) if on_drop is not None else Counters()
    registrations = AsyncStore(store) if isinstance(store, SqliteStore) else store
    return kind(source, settings, DiscoverySeams(store=registrations, tracker=tracker, drops=drops, **seams), **kw)
