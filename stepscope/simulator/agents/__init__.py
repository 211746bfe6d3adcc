"""The simulated OpenAI Agents API (beta, `OpenAI-Beta: agents=v1`): sessions, turns, items, subagents, published
OTLP traces and signed session webhooks, from the same seeded scenarios as the Assistants simulator.

Enable it with `Simulator(protocol="agents" | "both", webhooks=WebhookTarget(url, secret))`; docs/simulator-agents.md
describes the endpoints, the truth and the CLI flags.
"""

from __future__ import annotations

from stepscope.simulator.agents.plan import UNKNOWN_ITEM_TYPE, TurnKnobs
from stepscope.simulator.agents.service import AgentsService
from stepscope.simulator.agents.webhooks import WebhookTarget, sign

__all__ = ["UNKNOWN_ITEM_TYPE", "AgentsService", "TurnKnobs", "WebhookTarget", "sign"]
