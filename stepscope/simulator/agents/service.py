"""`AgentsService`: the simulated Agents API's state, endpoints and webhook delivery, as one lifecycle object."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from stepscope.simulator.agents.engine import AgentsEngine
from stepscope.simulator.agents.handlers import AgentsHandlers
from stepscope.simulator.agents.truth import agents_truth
from stepscope.simulator.agents.webhooks import agents_delivery
from stepscope.simulator.scenario import Scenario, SimTime
from stepscope.simulator.webhooks import WebhookDelivery, WebhookTarget


class AgentsService:
    """Engine, handlers and (with a `webhooks` target) delivery. Raises `ValueError` for an invalid target.

    `start()` returns at once and `shutdown()` is idempotent and safe without `start()`.
    """

    def __init__(
        self,
        scenario: Scenario,
        *,
        clock: SimTime,
        seed: int,
        webhooks: WebhookTarget | None = None,
        wall: Callable[[], float] = time.time,
    ) -> None:
        problems = webhooks.validate() if webhooks is not None else []
        if problems:
            raise ValueError("; ".join(problems))
        self.engine = AgentsEngine(scenario, clock=clock, seed=seed, record_events=webhooks is not None)
        self.handlers = AgentsHandlers(self.engine)
        self.delivery: WebhookDelivery | None = None
        if webhooks is not None:
            self.delivery = agents_delivery(self.engine, webhooks, wall=wall)

    async def start(self) -> None:
        if self.delivery is not None:
            await self.delivery.start()

    async def shutdown(self) -> None:
        if self.delivery is not None:
            await self.delivery.shutdown()

    def truth(self) -> dict[str, Any]:
        """`agents_truth` now, plus `"webhooks"`: the delivery counts and log (None without a target)."""
        truth = agents_truth(self.engine, self.engine.now())
        truth["webhooks"] = self.delivery.truth() if self.delivery is not None else None
        return truth
