"""The simulated OpenAI Responses API (and Foundry's new Agent Service, which serves it under
`/api/projects/{project}/openai/v1`): responses over JSON, SSE and WebSocket, background mode, conversations,
Foundry's listings, a seeded workload, faults, truth and signed `response.*` webhooks.

Enable it with `Simulator(protocol="responses", flavor="openai" | "azure", webhooks=WebhookTarget(url, secret))`;
docs/simulator-responses.md describes the endpoints, the workload, the truth and the CLI flags.
"""

from __future__ import annotations

from stepscope.simulator.responses.plan import ResponseKnobs
from stepscope.simulator.responses.service import ResponsesService
from stepscope.simulator.responses.workload import ResponsesWorkload, workload_for

__all__ = ["ResponseKnobs", "ResponsesService", "ResponsesWorkload", "workload_for"]
