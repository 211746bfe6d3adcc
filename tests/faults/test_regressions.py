"""Regression tests for product bugs the fault suite found, reproduced at unit scale with injected fakes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from stepscope.models import RunRef, RunStep
from stepscope.poller import Poller, PollSchedule
from stepscope.store import SqliteStore
from stepscope.testing import eventually
from tests.unit._fakes import Counters, FakeSource, RecordingBatches, make_run, make_step

pytestmark = [pytest.mark.anyio, pytest.mark.slow]
REF = RunRef("thread_a", "run_1")


@dataclass
class GatedSource(FakeSource):
    """A `FakeSource` whose step listings after the first `free` wait for `gate`, like a slow API answer."""

    gate: asyncio.Event = field(default_factory=asyncio.Event)
    free: int = 1
    listings: int = 0

    async def list_steps(self, ref: RunRef, *, after: str | None = None, limit: int = 100) -> AsyncIterator[RunStep]:
        self.listings += 1
        if self.listings > self.free:
            await self.gate.wait()
        async for step in super().list_steps(ref, after=after, limit=limit):
            yield step


async def test_ack_during_a_listing_does_not_emit_committed_steps_again() -> None:
    """Steps acknowledged while a listing with the old cursor is in flight are not emitted (and counted) twice."""
    store = SqliteStore(":memory:")
    store.open()
    source, sink, health = GatedSource(), RecordingBatches(), Counters()
    run = make_run()
    source.put_run(run)
    source.put_step(make_step("step_1", run, created_at=1001))
    source.put_step(make_step("step_2", run, created_at=1002))
    poller = Poller(source, store, sink, health, schedule=PollSchedule(fast=0.01, slow=0.03, final_sweeps=2))
    await poller.start()
    try:
        poller.track(REF)
        await eventually(lambda: sink.step_ids() == ["step_1", "step_2"])
        await eventually(lambda: source.listings >= 2)  # the next listing, made after=None, is held
        poller.steps_acknowledged(REF, ["step_1", "step_2"], ok=True)
        assert store.active_runs()[0].cursor == "step_2"
        source.gate.set()
        await eventually(lambda: source.listings >= 4)
        assert sink.step_ids() == ["step_1", "step_2"]
    finally:
        await poller.shutdown(timeout_s=1.0)
        store.close()
