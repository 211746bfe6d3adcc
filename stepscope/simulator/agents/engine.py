"""The simulated Agents API's object store and workload.

`AgentsEngine` holds agents and sessions, and plays the applications that use them: at
`scenario.runs_per_second` (Poisson, simulated time) it starts a root turn, on an idle workload session or, for a
share of turns (and whenever every session is busy), on a new session. Sessions take one turn at a time. The
workload is evaluated lazily, like the Assistants engine's: `advance(t)` creates every turn due up to `t` at its
scheduled time, so the result depends only on the seed and the times read. Scenario knobs map as: `assistants`
agents, `threads` initial sessions, `steps` segments per turn, `step_seconds`, `queue_seconds`,
`submit_delay_s` (the application's function-call answer time), the outcome rates and `total_runs` (root turns).

Session transitions (in_progress, action_required, idle, failed) are recorded as due events for webhook
delivery when `record_events` is on.
"""

from __future__ import annotations

import heapq
import random
from typing import Any

from stepscope.simulator.agents.plan import TurnKnobs, build_root_turn
from stepscope.simulator.agents.state import SimSession, SimTurn
from stepscope.simulator.plan import new_id
from stepscope.simulator.scenario import Scenario, SimTime

_NAMES = ("Support Agent", "Data Analyst", "Research Helper", "Travel Planner", "Code Reviewer", "Billing Bot")
_TEAMS = ("payments", "search", "support")
NEW_SESSION_SHARE = 0.2
TRACE_PUBLISH_DELAY_S = (0.5, 3.0)
SessionEvent = tuple[float, int, str, str, str]  # (time, sequence, type, session id, required action type)


class AgentsEngine:
    """State and workload. Not thread-safe: one event loop owns it (the ASGI app's)."""

    def __init__(self, scenario: Scenario, *, clock: SimTime, seed: int, record_events: bool = False) -> None:
        self.scenario = scenario
        self.clock = clock
        self.seed = seed
        self.record_events = record_events
        self.sessions: dict[str, SimSession] = {}
        self.order: list[SimSession] = []  # creation order, which is `created` order
        self.events: list[SessionEvent] = []  # a heap of due webhook events
        self._event_seq = 0
        self._rng = random.Random(f"{seed}/agents/workload")
        self._client_rng = random.Random(f"{seed}/agents/client")
        self._turns = 0
        start = clock.now()
        self.agents = [self._new_agent(self._rng, start, i) for i in range(scenario.assistants)]
        self.workload_sessions: list[SimSession] = []
        for i in range(scenario.threads):
            # Staggered into the past so that listing newest-first has an order from the start.
            created = start - (scenario.threads - i)
            session = self._new_session(self._rng, self._rng.choice(self.agents), created)
            self.workload_sessions.append(session)
        rate = scenario.runs_per_second
        self._next_due = start + self._rng.expovariate(rate) if rate > 0 else float("inf")

    # --- time -------------------------------------------------------------------------------------------------

    def now(self) -> float:
        """Current simulated time, with the workload brought up to it."""
        t = self.clock.now()
        if t >= self._next_due:
            self.advance(t)
        return t

    def advance(self, t: float) -> None:
        """Create every workload turn scheduled at or before `t`, each at its own scheduled time."""
        limit = self.scenario.total_runs
        while self._next_due <= t:
            if limit is not None and self._turns >= limit:
                self._next_due = float("inf")
                return
            self._spawn(self._next_due)
            self._next_due += self._rng.expovariate(self.scenario.runs_per_second)

    def _spawn(self, t: float) -> None:
        rng = self._rng
        session = None
        if rng.random() >= NEW_SESSION_SHARE:
            session = self._idle_session(rng, t)
        if session is None:
            session = self._new_session(rng, rng.choice(self.agents), t)
            self.workload_sessions.append(session)
        self.create_turn(session, t, rng=random.Random(f"{self.seed}/agents/turn/{self._turns + 1}"))

    def _idle_session(self, rng: random.Random, t: float) -> SimSession | None:
        pool = self.workload_sessions
        if not pool:
            return None
        for _ in range(8):
            session = rng.choice(pool)
            if session.busy_until() <= t:
                return session
        return next((s for s in rng.sample(pool, len(pool)) if s.busy_until() <= t), None)

    # --- objects ----------------------------------------------------------------------------------------------

    def _new_agent(self, rng: random.Random, t: float, i: int) -> dict[str, Any]:
        del t
        return {
            "id": new_id(rng, "agent"),
            "name": _NAMES[i % len(_NAMES)],
            "model": self.scenario.models[i % len(self.scenario.models)],
            "instructions": "You are a helpful agent.",
        }

    def _new_session(self, rng: random.Random, agent: dict[str, Any], t: float) -> SimSession:
        metadata = {"source": "workload", "team": rng.choice(_TEAMS)}
        session = SimSession(id=new_id(rng, "sess"), agent=agent, created=t, metadata=metadata)
        self.sessions[session.id] = session
        self.order.append(session)
        return session

    def create_session(self, t: float, *, agent: dict[str, Any] | None = None,
                       metadata: dict[str, str] | None = None) -> SimSession:  # fmt: skip
        """A session created by a client at `t` (tests): no workload turns land on it."""
        rng = self._client_rng
        session = SimSession(id=new_id(rng, "sess"), agent=agent or self.agents[0], created=t,
                             metadata=dict(metadata or {}))  # fmt: skip
        if self.order and t < self.order[-1].created:
            raise ValueError("sessions are created in time order")
        self.sessions[session.id] = session
        self.order.append(session)
        return session

    def create_turn(
        self, session: SimSession, t: float, *, knobs: TurnKnobs | None = None, rng: random.Random | None = None
    ) -> SimTurn:
        """A root turn on `session` created at `t`, which must be idle then. Returns the turn (its future fixed)."""
        if session.busy_until() > t or t < session.created:
            raise ValueError(f"session {session.id} is busy or not created at {t}")
        self._turns += 1
        rng = rng or random.Random(f"{self.seed}/agents/client-turn/{self._turns}")
        agent = session.agent
        turn, fails = build_root_turn(rng, self.scenario, turn_id=new_id(rng, "turn"), session_id=session.id,
                                      agent_id=agent["id"], model=agent["model"], created=t, knobs=knobs)  # fmt: skip
        turn.publish_at = turn.end + rng.uniform(*TRACE_PUBLISH_DELAY_S)  # every root turn ends: cut or finished
        if fails:
            session.failed_at, session.error = turn.end, turn.error[1] if turn.error else "failed"
        session.add_turn(turn)
        if self.record_events:
            self._record(session, turn, fails)
        return turn

    def _record(self, session: SimSession, turn: SimTurn, fails: bool) -> None:
        events = [(turn.created, "agent.session.in_progress", "")]
        for wait in turn.waits:
            events.append((wait.start, "agent.session.action_required", "function_call"))
            if wait.end < turn.end:
                events.append((wait.end, "agent.session.in_progress", ""))
        events.append((turn.end, "agent.session.failed" if fails else "agent.session.idle", ""))
        for at, kind, action in events:
            self._event_seq += 1
            heapq.heappush(self.events, (at, self._event_seq, kind, session.id, action))

    def due_events(self, t: float) -> list[SessionEvent]:
        """Pop the recorded session events due at or before `t`, in time order."""
        self.now()
        out: list[SessionEvent] = []
        while self.events and self.events[0][0] <= t:
            out.append(heapq.heappop(self.events))
        return out

    # --- housekeeping ------------------------------------------------------------------------------------------

    def prune(self, t: float, max_turns: int) -> int:
        """Forget the oldest idle sessions while more than `max_turns` root turns are stored; returns how many."""
        total = sum(len(s.turns) for s in self.order)
        doomed: set[str] = set()
        for session in self.order:
            if total <= max_turns:
                break
            if session.busy_until() <= t or session.failed_at is not None:
                doomed.add(session.id)
                total -= len(session.turns)
        if doomed:
            self.order = [s for s in self.order if s.id not in doomed]
            self.workload_sessions = [s for s in self.workload_sessions if s.id not in doomed]
            for sid in doomed:
                del self.sessions[sid]
        return len(doomed)
