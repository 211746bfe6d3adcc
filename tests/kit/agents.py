"""Client sessions on the simulated Agents API, built directly on its engine for the suites that read them."""

from __future__ import annotations

from stepscope.simulator import ManualClock, Simulator
from stepscope.simulator.agents import TurnKnobs
from stepscope.simulator.agents.state import SimSession

EVERY_KIND = ("function_call", "mcp_call", "web_search_call", "command_execution", "computer_use_call", "subagent",
              "message", "unknown")  # fmt: skip
"""Turn segment kinds that make a turn serve every item type, one of them unknown to the SDK."""


def finished_session(sim: Simulator, clock: ManualClock, count: int, knobs: TurnKnobs) -> SimSession:
    """A client session (metadata `team=manual`) with `count` consecutive turns shaped by `knobs`; the clock ends
    past their ends and their traces' publication."""
    assert sim.agents is not None
    engine = sim.agents.engine
    session = engine.create_session(clock.now(), metadata={"team": "manual"})
    t = clock.now()
    for _ in range(count):
        t = engine.create_turn(session, t, knobs=knobs).end + 0.01
    clock.advance(t - clock.now() + 10)
    return session
