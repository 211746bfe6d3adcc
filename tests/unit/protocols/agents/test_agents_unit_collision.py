"""The same turn id in two Agents sessions: counted as `unit_id_collision`, logged once, and the first one followed,
whether the first is still tracked or already finished when the second is listed.

`SessionDiscovery` lists an in-memory `Sessions` source and hands turns to a real `Poller` (never started, so
nothing is polled: what it tracks stays as discovery left it) over an in-memory store.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from stepscope.core.health import ApiHealth
from stepscope.core.poller import Poller
from stepscope.core.records import UnitRef
from stepscope.core.store import RunProgress, SqliteStore
from stepscope.protocols.agents.discovery import SessionDiscovery
from stepscope.protocols.agents.records import AgentSession, Subagent, Turn
from tests.kit.fakes import Counters, make_discovery

pytestmark = pytest.mark.anyio

NOW = 1_800_000_000
SAME = "turn_0000000000000000000000same"


@dataclass
class Sessions:
    """A `SessionSource` in memory: sessions newest first, each with its root turns in order."""

    turns: dict[str, list[Turn]] = field(default_factory=dict)

    def add(self, session_id: str, *turn_ids: str) -> None:
        listed = self.turns.setdefault(session_id, [])
        listed += [Turn(id=t, session_id=session_id, agent_id="agent_1", status="in_progress", created_at=NOW - 10)
                   for t in turn_ids]  # fmt: skip

    async def get_session(self, session_id: str) -> AgentSession:
        return _session(session_id)

    async def list_sessions(self, *, agent_id: str | None = None) -> AsyncIterator[AgentSession]:
        for session_id in reversed(self.turns):
            yield _session(session_id)

    async def list_turns(self, session_id: str, *, after: str | None = None) -> AsyncIterator[Turn]:
        turns = self.turns[session_id]
        ids = [t.id for t in turns]
        for turn in turns[ids.index(after) + 1 if after in ids else 0 :]:
            yield turn

    async def list_subagents(self, session_id: str) -> AsyncIterator[Subagent]:
        none: tuple[Subagent, ...] = ()
        for subagent in none:
            yield subagent

    async def list_subagent_turns(
        self, session_id: str, subagent_id: str, *, after: str | None = None
    ) -> AsyncIterator[Turn]:
        none: tuple[Turn, ...] = ()
        for turn in none:
            yield turn


def _session(session_id: str) -> AgentSession:
    return AgentSession(id=session_id, status="in_progress", created_at=NOW - 60, agent_id="agent_1",
                        last_active_at=NOW)  # fmt: skip


class Waiting:
    """A `UnitReader` whose every unit keeps its container busy: `Poller.busy_containers()` names where each tracked
    unit belongs. Never polled (the poller is not started)."""

    def begin(self, ref: UnitRef, cursor: str | None, committed: set[str]) -> UnitRef:
        return ref

    def status(self, state: UnitRef) -> str:
        return "in_progress"

    def busy(self, state: UnitRef) -> bool:
        return True

    async def poll(self, state: UnitRef) -> float | None:
        raise AssertionError("the poller is not started")


def _wire(source: Sessions, store: SqliteStore) -> tuple[SessionDiscovery, Poller[UnitRef], Counters]:
    drops = Counters()
    poller: Poller[UnitRef] = Poller(Waiting(), _NoUnitStore(), drops, ApiHealth())
    discovery = make_discovery(SessionDiscovery, source, store, poller, drops=drops, lookback_s=3600.0,
                               wall=lambda: float(NOW), health=ApiHealth())  # fmt: skip
    return discovery, poller, drops


class _NoUnitStore:
    """The poller's store, never reached: the poller is not started."""

    async def active_runs(self) -> list[RunProgress]:
        return []

    async def add_run(self, ref: UnitRef, now: float) -> None:
        raise AssertionError("not polled")

    async def forget_run(self, ref: UnitRef) -> None:
        raise AssertionError("not polled")


def _collisions(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if SAME in r.getMessage() and r.levelno == logging.WARNING]


async def test_a_turn_id_seen_again_in_another_session_while_the_first_is_tracked(
    store: SqliteStore, caplog: pytest.LogCaptureFixture
) -> None:
    """A turn id listed in a second session while the first session's turn of that id is still tracked is counted
    once as `unit_id_collision` and logged once naming both sessions; only the first is followed, and later passes
    count and log nothing more."""
    source = Sessions()
    source.add("sess_first", SAME)
    discovery, poller, drops = _wire(source, store)
    caplog.set_level(logging.WARNING)

    assert await discovery.run_once() == 1
    source.add("sess_second", "turn_other", SAME)
    found = await discovery.run_once()
    for _ in range(3):
        await discovery.run_once()

    print(f"same turn id in two sessions: {drops.counts.get('unit_id_collision', 0)} collision(s) counted, "
          f"{len(_collisions(caplog))} line(s) logged, tracked in {sorted(poller.busy_containers())}")  # fmt: skip
    assert found == 1  # turn_other only
    assert drops.counts.get("unit_id_collision") == 1, drops.counts
    (line,) = _collisions(caplog)
    assert "sess_first" in line and "sess_second" in line
    assert poller.tracked_count == 2 and poller.busy_containers() == {"sess_first", "sess_second"}
    assert poller.is_tracked(SAME) and poller.state_of(SAME) == UnitRef("sess_first", SAME)


async def test_a_turn_id_seen_again_after_the_first_finished(
    store: SqliteStore, caplog: pytest.LogCaptureFixture
) -> None:
    """A turn id listed in a second session after the first session's turn of that id was committed and finished is
    counted once as `unit_id_collision`, logged once, and not tracked."""
    store.finish_run(UnitRef("sess_first", SAME), float(NOW))
    source = Sessions()
    source.add("sess_second", SAME)
    discovery, poller, drops = _wire(source, store)
    caplog.set_level(logging.WARNING)

    assert await discovery.run_once() == 0
    await discovery.run_once()

    assert drops.counts.get("unit_id_collision") == 1, drops.counts
    (line,) = _collisions(caplog)
    assert "sess_first" in line and "sess_second" in line
    assert poller.tracked_count == 0


async def test_the_same_turn_id_in_one_session_is_no_collision(
    store: SqliteStore, caplog: pytest.LogCaptureFixture
) -> None:
    """A session's turn listed again on a later pass (after a cursor reset) is the same unit: nothing is counted."""
    source = Sessions()
    source.add("sess_first", SAME)
    discovery, poller, drops = _wire(source, store)
    caplog.set_level(logging.WARNING)

    await discovery.run_once()
    discovery._followed["sess_first"].cursor = None  # as after a refused cursor: the session is listed from the start
    await discovery.run_once()

    assert "unit_id_collision" not in drops.counts
    assert _collisions(caplog) == []
    assert poller.tracked_count == 1
