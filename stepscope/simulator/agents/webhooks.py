"""Session webhook events of the simulated Agents API, delivered by the shared `stepscope.simulator.webhooks`.

`session_events(engine)` is the event source: the engine's session transitions that fell due, as
`{"object": "event", "type", "created_at", "data": {"id": session id, ...}}` bodies (`agent.session.in_progress`,
`agent.session.action_required` with `data.required_action`, `agent.session.idle`, `agent.session.failed`).
`agents_delivery` builds the delivery task for an engine.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Any

from stepscope.simulator.agents.engine import AgentsEngine, SessionEvent
from stepscope.simulator.webhooks import WebhookDelivery, WebhookTarget, sign, signing_key

__all__ = ["WebhookDelivery", "WebhookTarget", "agents_delivery", "event_body", "session_events", "sign",
           "signing_key"]  # fmt: skip


def event_body(event: SessionEvent) -> dict[str, Any]:
    """The webhook event object (all but its `id`) for a due session event."""
    at, _, kind, session_id, action = event
    data: dict[str, Any] = {"id": session_id}
    if kind == "agent.session.action_required":
        data["required_action"] = {"type": action}
    else:
        data.update(environment_type="none", environment_id=None)
    return {"object": "event", "type": kind, "created_at": int(at), "data": data}


def session_events(engine: AgentsEngine) -> Callable[[], list[dict[str, Any]]]:
    """The event source of `engine`: the session events due at the clock's now."""

    def due() -> list[dict[str, Any]]:
        return [event_body(event) for event in engine.due_events(engine.clock.now())]

    return due


def agents_delivery(
    engine: AgentsEngine, target: WebhookTarget, *, wall: Callable[[], float] = time.time
) -> WebhookDelivery:
    """The delivery of `engine`'s session events to `target`; ids are drawn from the engine's seed."""
    return WebhookDelivery(session_events(engine), target, rng=random.Random(f"{engine.seed}/agents/webhooks"),
                           subject="session_id", wall=wall)  # fmt: skip
