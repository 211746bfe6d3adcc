"""One lifecycle for every component: started in order, stopped in reverse, a half start rolled back, the stop
budget kept whatever a component does."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import pytest

from stepscope.core.lifecycle import MIN_STAGE_S, Lifecycle
from stepscope.testing import FakeClock

pytestmark = pytest.mark.anyio


@dataclass
class Journal:
    entries: list[str] = field(default_factory=list)


@dataclass
class Part:
    """A component that writes what happens to it in `journal`; it can fail to start, fail to stop, or stop slowly
    (`stop_s` of the injected clock, then `hang` real seconds)."""

    name: str
    journal: Journal
    clock: FakeClock | None = None
    fail_start: bool = False
    fail_stop: bool = False
    stop_s: float = 0.0
    hang: float = 0.0
    budgets: list[float] = field(default_factory=list)

    async def start(self) -> None:
        if self.fail_start:
            raise RuntimeError(f"{self.name} cannot start")
        self.journal.entries.append(f"start {self.name}")

    async def stop(self, budget_s: float) -> None:
        self.budgets.append(budget_s)
        self.journal.entries.append(f"stop {self.name}")
        if self.clock is not None:
            self.clock.advance(self.stop_s)
        if self.hang:
            await asyncio.sleep(self.hang)
        if self.fail_stop:
            raise RuntimeError(f"{self.name} cannot stop")


async def test_started_in_order_stopped_in_reverse_once() -> None:
    """Components start in list order and stop in reverse; a second stop does nothing."""
    journal = Journal()
    life = Lifecycle([Part("store", journal), Part("poller", journal), Part("server", journal)])
    await life.start()
    assert life.started
    await life.stop(5.0)
    await life.stop(5.0)
    assert journal.entries == [
        "start store",
        "start poller",
        "start server",
        "stop server",
        "stop poller",
        "stop store",
    ]
    assert not life.started


async def test_a_half_start_is_rolled_back_and_the_error_raised() -> None:
    """When a component fails to start, those already started stop in reverse and the error reaches the caller;
    the failed one and those after it are never stopped."""
    journal = Journal()
    life = Lifecycle([Part("a", journal), Part("b", journal), Part("c", journal, fail_start=True), Part("d", journal)])
    with pytest.raises(RuntimeError, match="c cannot start"):
        await life.start()
    assert journal.entries == ["start a", "start b", "stop b", "stop a"]
    assert not life.started


async def test_a_stop_requested_during_start_starts_nothing_more() -> None:
    """Once `stopping()` holds, no further component starts and `start` returns without raising; `stop` then stops
    the ones started, in reverse."""
    journal, requested = Journal(), []

    @dataclass
    class Signalled(Part):
        async def start(self) -> None:
            await super().start()
            requested.append(True)  # a signal arrives while this component starts

    life = Lifecycle([Part("store", journal), Signalled("check", journal), Part("poller", journal)])
    await life.start(lambda: bool(requested))
    assert life.interrupted
    assert not life.started
    await life.stop(5.0)
    assert journal.entries == ["start store", "start check", "stop check", "stop store"]


async def test_the_budget_is_shared_and_each_stop_gets_what_is_left() -> None:
    """Each stop is offered what is left of the overall budget on the injected clock, never less than the minimum,
    so a slow early stop cannot leave a later one nothing."""
    clock, journal = FakeClock(), Journal()
    late = Part("late", journal, clock=clock, stop_s=3.0)
    early = Part("early", journal, clock=clock, stop_s=10.0)
    first = Part("first", journal, clock=clock)
    life = Lifecycle([first, early, late], monotonic=clock.monotonic)
    await life.start()
    await life.stop(8.0)
    assert late.budgets == [8.0]
    assert early.budgets == [5.0]
    assert first.budgets == [MIN_STAGE_S]


async def test_a_stop_that_overruns_or_raises_never_keeps_the_others_running(caplog: pytest.LogCaptureFixture) -> None:
    """A stop that overruns its share is abandoned and one that raises is logged: the others still stop, and stop
    itself never raises."""
    journal = Journal()
    hanging = Part("hanging", journal, hang=30.0)
    broken = Part("broken", journal, fail_stop=True)
    life = Lifecycle([Part("store", journal), broken, hanging])
    await life.start()
    await life.stop(0.2)
    assert journal.entries[-3:] == ["stop hanging", "stop broken", "stop store"]
    messages = [r.getMessage() for r in caplog.records]
    assert any("stopping hanging took longer" in m for m in messages)
    assert any("stopping broken failed" in m for m in messages)
