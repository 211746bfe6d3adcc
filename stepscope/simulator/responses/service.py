"""`ResponsesService`: the simulated Responses API's state, endpoints and webhook delivery, as one lifecycle object."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Any

from stepscope.simulator.responses.engine import ResponsesEngine
from stepscope.simulator.responses.handlers import ResponsesHandlers
from stepscope.simulator.responses.truth import responses_truth
from stepscope.simulator.responses.workload import ResponsesWorkload, workload_for
from stepscope.simulator.scenario import Scenario, SimTime
from stepscope.simulator.webhooks import WebhookDelivery, WebhookTarget


class ResponsesService:
    """Engine, handlers and (with a `webhooks` target) delivery of `response.*` events for background responses.

    `workload` defaults to the scenario preset's (`workload_for`). Raises `ValueError` for an invalid target or
    workload. `start()` returns at once and `shutdown()` is idempotent and safe without `start()`.
    """

    def __init__(
        self,
        scenario: Scenario,
        *,
        clock: SimTime,
        seed: int,
        azure: bool,
        workload: ResponsesWorkload | None = None,
        webhooks: WebhookTarget | None = None,
        wall: Callable[[], float] = time.time,
    ) -> None:
        workload = workload or workload_for(scenario)
        problems = workload.validate() + (webhooks.validate() if webhooks is not None else [])
        if problems:
            raise ValueError("; ".join(problems))
        self.engine = ResponsesEngine(scenario, workload, clock=clock, seed=seed, azure=azure,
                                      record_events=webhooks is not None)  # fmt: skip
        self.handlers = ResponsesHandlers(self.engine)
        self.delivery: WebhookDelivery | None = None
        if webhooks is not None:
            engine = self.engine
            self.delivery = WebhookDelivery(lambda: engine.due_events(engine.clock.now()), webhooks,
                                            rng=random.Random(f"{seed}/responses/webhooks"), subject="response_id",
                                            wall=wall)  # fmt: skip

    async def start(self) -> None:
        if self.delivery is not None:
            await self.delivery.start()

    async def shutdown(self) -> None:
        if self.delivery is not None:
            await self.delivery.shutdown()

    def truth(self) -> dict[str, Any]:
        """`responses_truth` now, plus `"webhooks"`: the delivery counts and log (None without a target)."""
        truth = responses_truth(self.engine, self.engine.now())
        truth["webhooks"] = self.delivery.truth() if self.delivery is not None else None
        return truth
