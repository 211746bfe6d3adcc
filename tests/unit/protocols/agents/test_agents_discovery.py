"""SessionDiscovery against the simulated Agents API over real HTTP: sessions inside the lookback are followed,
each turn is tracked once, new turns on old sessions are found (also after a restart), agents filter the listing,
and a webhook's session event makes a session followed and listed at once."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

import httpx
import pytest

from stepscope.client import BearerAuth
from stepscope.core.health import state_of
from stepscope.core.records import UnitRef
from stepscope.core.store import SqliteStore
from stepscope.errors import SourceError
from stepscope.protocols.agents import AgentsClient
from stepscope.protocols.agents.discovery import SessionDiscovery
from stepscope.simulator import ManualClock, Simulator, SimulatorServer, scenario_named
from stepscope.simulator.agents import TurnKnobs
from stepscope.simulator.agents.engine import AgentsEngine
from stepscope.simulator.agents.state import SimSession
from stepscope.testing import eventually
from tests.kit.fakes import make_discovery

pytestmark = pytest.mark.anyio
LOOKBACK = 3600.0
KNOBS = TurnKnobs(kinds=("web_search_call",), seconds=1.0, outcome="completed")


@dataclass
class Tracker:
    """Records tracked turns and, like the poller, marks them known in the store; `finish()` ends their tracking."""

    store: SqliteStore
    refs: list[UnitRef] = field(default_factory=list)
    active: set[str] = field(default_factory=set)
    failures: list[str] = field(default_factory=list)

    def track(self, ref: UnitRef) -> bool:
        if self.is_tracked(ref.unit_id):
            return False
        self.refs.append(ref)
        self.active.add(ref.unit_id)
        self.store.add_run(ref, 0.0)
        return True

    def finish(self) -> None:
        self.active.clear()

    def is_tracked(self, run_id: str) -> bool:
        return run_id in self.active

    def busy_containers(self) -> set[str]:
        return set()

    def poll_soon(self, unit_id: str) -> None:
        pass

    def untrack(self, unit_id: str) -> None:
        self.active.discard(unit_id)

    def state_of(self, unit_id: str) -> object | None:
        return None

    def ok(self) -> None:
        pass

    def failed(self, exc: SourceError) -> None:
        self.failures.append(state_of(exc))


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def sim(clock: ManualClock) -> Simulator:
    return Simulator(scenario_named("quiet", threads=1), clock=clock, seed=11, protocol="agents")


@pytest.fixture
def engine(sim: Simulator) -> AgentsEngine:
    assert sim.agents is not None
    return sim.agents.engine


@pytest.fixture
def server(sim: Simulator) -> Iterator[SimulatorServer]:
    with SimulatorServer(sim) as running:
        yield running


@pytest.fixture
async def client(server: SimulatorServer) -> AsyncIterator[AgentsClient]:
    async with httpx.AsyncClient(timeout=10) as http:
        yield AgentsClient(http, base_url=server.url, auth=BearerAuth("sk-sim"))


@pytest.fixture
def store() -> Iterator[SqliteStore]:
    s = SqliteStore(":memory:")
    s.open()
    yield s
    s.close()


def _turns(engine: AgentsEngine, clock: ManualClock, session: SimSession, count: int) -> list[str]:
    """`count` consecutive finished turns on `session` from now; the clock ends past them."""
    t, ids = clock.now(), []
    for _ in range(count):
        turn = engine.create_turn(session, t, knobs=KNOBS)
        ids.append(turn.id)
        t = turn.end + 1
    clock.advance(t - clock.now() + 1)
    return ids


def _discovery(client: AgentsClient, store: SqliteStore, tracker: Tracker, clock: ManualClock,
               **kw: object) -> SessionDiscovery:  # fmt: skip
    return make_discovery(SessionDiscovery, client, store, tracker, lookback_s=LOOKBACK, wall=clock.time,
                          health=tracker, monotonic=clock.monotonic, **kw)  # type: ignore[arg-type]  # fmt: skip


async def test_every_turn_inside_the_lookback_is_tracked_once(
    engine: AgentsEngine, clock: ManualClock, client: AgentsClient, store: SqliteStore
) -> None:
    """Turns of sessions created inside the lookback are tracked once each, oldest first; an older session's are not."""
    old = engine.create_session(clock.now())
    _turns(engine, clock, old, 2)
    clock.advance(2 * LOOKBACK)
    recent = [engine.create_session(clock.now()) for _ in range(3)]
    expected = [turn for session in recent for turn in _turns(engine, clock, session, 3)]
    tracker = Tracker(store)
    discovery = _discovery(client, store, tracker, clock)

    assert await discovery.run_once() == 9
    tracker.finish()
    assert await discovery.run_once() == 0
    assert sorted(r.unit_id for r in tracker.refs) == sorted(expected)
    assert {r.container_id for r in tracker.refs} == {s.id for s in recent}
    assert sorted(discovery.watched()) == sorted(s.id for s in recent)
    assert tracker.failures == []


async def test_new_turns_on_an_old_session_are_found_until_it_goes_idle(
    engine: AgentsEngine, clock: ManualClock, client: AgentsClient, store: SqliteStore
) -> None:
    """A followed session keeps its new turns found after its creation falls behind the lookback, also after a
    restart, and is no longer followed once idle for the whole lookback."""
    clock.advance(2 * LOOKBACK)  # the scenario's own session out of the way
    session = engine.create_session(clock.now())
    first = _turns(engine, clock, session, 1)
    tracker = Tracker(store)
    assert await _discovery(client, store, tracker, clock).run_once() == 1
    clock.advance(LOOKBACK - 60)
    second = _turns(engine, clock, session, 1)
    clock.advance(120)  # the session's creation is now behind the horizon; its last turn is not
    third = _turns(engine, clock, session, 1)

    restarted = _discovery(client, store, tracker, clock)  # a new process: the followed set comes from the store
    assert await restarted.run_once() == 2
    assert [r.unit_id for r in tracker.refs] == first + second + third
    assert restarted.watched() == [session.id]
    clock.advance(LOOKBACK + 10)
    await restarted.run_once()
    assert restarted.watched() == [session.id], "its last turn is still tracked"
    tracker.finish()
    await restarted.run_once()
    assert restarted.watched() == []
    assert store.watched() == []


async def test_agents_restrict_the_sessions_followed(
    engine: AgentsEngine, clock: ManualClock, client: AgentsClient, store: SqliteStore
) -> None:
    """With agents given, only sessions of those root agents are followed and their turns tracked."""
    clock.advance(2 * LOOKBACK)
    mine, other = engine.agents[0], engine.agents[1]
    wanted = engine.create_session(clock.now(), agent=mine)
    unwanted = engine.create_session(clock.now(), agent=other)
    expected = _turns(engine, clock, wanted, 2)
    _turns(engine, clock, unwanted, 2)
    tracker = Tracker(store)
    discovery = _discovery(client, store, tracker, clock, agents=[mine["id"]])

    assert await discovery.run_once() == 2
    assert [r.unit_id for r in tracker.refs] == expected
    assert discovery.watched() == [wanted.id]


async def test_a_session_event_follows_an_old_session_and_wakes_the_loop(
    engine: AgentsEngine, clock: ManualClock, client: AgentsClient, store: SqliteStore
) -> None:
    """A webhook's event for a session created before the lookback makes the running loop list it at once; the
    pass records the followed session in the store, off the event loop."""
    session = engine.create_session(clock.now())
    _turns(engine, clock, session, 1)
    clock.advance(2 * LOOKBACK)
    tracker = Tracker(store)
    discovery = _discovery(client, store, tracker, clock, interval_s=3600.0)  # only a wake-up runs a second pass
    await discovery.start()
    try:
        await eventually(lambda: discovery.last_pass is not None, what="the first pass")
        assert discovery.watched() == []
        new = _turns(engine, clock, session, 1)
        discovery.session_event(session.id, "agent.session.idle")
        await eventually(lambda: len(tracker.refs) == 1, what="the announced session's new turn")
        assert [r.unit_id for r in tracker.refs] == new
        await eventually(lambda: store.watched() == [(session.id, None)], what="the followed session recorded")
    finally:
        await discovery.stop()
        await discovery.stop()


async def test_the_followed_bound_refuses_and_counts(
    engine: AgentsEngine, clock: ManualClock, client: AgentsClient, store: SqliteStore
) -> None:
    """Past max_followed a new session is not followed and is counted as sessions_full."""
    clock.advance(2 * LOOKBACK)
    sessions = [engine.create_session(clock.now()) for _ in range(3)]
    for session in sessions:
        _turns(engine, clock, session, 1)
    drops: list[tuple[str, int]] = []
    discovery = _discovery(client, store, Tracker(store), clock, max_followed=2,
                           on_drop=lambda reason, n: drops.append((reason, n)))  # fmt: skip
    await discovery.run_once()
    assert len(discovery.watched()) == 2
    assert drops == [("sessions_full", 1)]
