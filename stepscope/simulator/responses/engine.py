"""The simulated Responses API's object store: responses, conversations, Foundry agents and webhook events.

`ResponsesEngine` creates responses (for clients and for the workload, `workload.py`), cancels and deletes them,
creates conversations and reports background responses that reached a terminal status as webhook events. The
workload is evaluated lazily: `now()` first creates every workload response due by then, at its scheduled time,
so what exists depends only on the seed and the clock, not on when or how often anyone looks.
"""

from __future__ import annotations

import random
from typing import Any

from stepscope.simulator.responses.items import hex_id, input_items
from stepscope.simulator.responses.params import CreateParams
from stepscope.simulator.responses.plan import KIND_OF_TOOL, ResponseKnobs, build_response
from stepscope.simulator.responses.state import INF, SimConversation, SimResponse
from stepscope.simulator.responses.workload import ResponsesWorkload, WorkloadDriver
from stepscope.simulator.scenario import Scenario, SimTime

_AGENT_NAMES = ("support-agent", "travel-planner", "data-analyst", "billing-bot", "research-helper", "code-reviewer")
DEFAULT_MODEL = "gpt-4.1"


class ResponsesEngine:
    """State and workload. Not thread-safe: one event loop owns it (the ASGI app's).

    `azure` adds Foundry's agents (`agents`: `agent_reference` objects, one per scenario assistant) and item
    types. `record_events` keeps background responses in view until they end, for webhook delivery.
    """

    def __init__(
        self, scenario: Scenario, workload: ResponsesWorkload, *, clock: SimTime, seed: int, azure: bool,
        record_events: bool = False,
    ) -> None:  # fmt: skip
        self.scenario = scenario
        self.knobs = workload
        self.clock = clock
        self.seed = seed
        self.azure = azure
        self.record_events = record_events
        self.responses: dict[str, SimResponse] = {}
        self.order: list[SimResponse] = []  # creation order
        self.conversations: dict[str, SimConversation] = {}
        self.conversation_order: list[SimConversation] = []
        self._watch: dict[str, SimResponse] = {}  # background responses not yet reported as webhook events
        self._client_rng = random.Random(f"{seed}/responses/client")
        self._seq = 0
        rng = random.Random(f"{seed}/responses/agents")
        self.agents: list[dict[str, Any]] = []
        if azure:
            for i in range(scenario.assistants):
                version = str(rng.randint(1, 4))
                name = _AGENT_NAMES[i % len(_AGENT_NAMES)] + ("" if i < len(_AGENT_NAMES) else f"-{i}")
                self.agents.append({"type": "agent_reference", "name": name, "version": version,
                                    "model": workload.models[i % len(workload.models)]})  # fmt: skip
        self.driver = WorkloadDriver(self, scenario, workload, seed=seed, start=clock.now())

    # --- time -------------------------------------------------------------------------------------------------

    def now(self) -> float:
        """Current simulated time, with the workload brought up to it."""
        t = self.clock.now()
        self.driver.advance(t)
        return t

    # --- responses --------------------------------------------------------------------------------------------

    def agent_model(self, agent: dict[str, Any] | None) -> str | None:
        """The model of the Foundry agent `agent` names (None: no such agent known, or no agent)."""
        if agent is None:
            return None
        match = next((a for a in self.agents if a["name"] == agent["name"]), None)
        return match["model"] if match is not None else None

    def agent_ref(self, agent: dict[str, Any] | None) -> dict[str, Any] | None:
        """The `agent_reference` a response carries: the name, and the version asked for or the agent's."""
        if agent is None:
            return None
        match = next((a for a in self.agents if a["name"] == agent["name"]), None)
        version = agent.get("version") or (match["version"] if match is not None else "1")
        return {"type": "agent_reference", "name": agent["name"], "version": version}

    def create_response(
        self, t: float, params: CreateParams, *, knobs: ResponseKnobs | None = None,
        rng: random.Random | None = None, kinds: list[str] | None = None, source: str = "client",
    ) -> SimResponse:  # fmt: skip
        """A response created at `t` as `params` ask (ids already checked by the caller); its future is fixed.

        `kinds` are the tool calls to make; None draws up to two from the kinds `params.tools` allow.
        """
        self.driver.advance(t)  # workload responses due before `t` come first (no-op inside the workload)
        rng = rng or random.Random(f"{self.seed}/responses/client/{self._seq + 1}")
        if self.order and t < self.order[-1].created:
            raise ValueError("responses are created in time order")
        if kinds is None:
            allowed = [KIND_OF_TOOL[tool["type"]] for tool in params.tools if tool.get("type") in KIND_OF_TOOL]
            if not self.azure:
                allowed = [k for k in allowed if not k.startswith(("bing", "azure", "openapi", "a2a", "memory"))]
            kinds = [rng.choice(allowed) for _ in range(rng.randint(1, 2))] if allowed else []
        params.agent = self.agent_ref(params.agent)
        model = params.model or self.agent_model(params.agent) or DEFAULT_MODEL
        self._seq += 1
        resp = build_response(
            rng, self.scenario, params, response_id=hex_id(rng, "resp"), seq=self._seq, created=t, model=model,
            input_items=input_items(rng, params.input), kinds=kinds, stuck_rate=self.knobs.stuck_queued_rate,
            knobs=knobs,
        )  # fmt: skip
        resp.source = source
        self.responses[resp.id] = resp
        self.order.append(resp)
        if resp.conversation_id is not None:
            self.conversations[resp.conversation_id].add(resp)
        if self.record_events and resp.background and resp.end < INF:
            self._watch[resp.id] = resp
        return resp

    def cancel(self, resp: SimResponse, t: float) -> None:
        """Cancel a background response that is not terminal at `t` (the caller checked both)."""
        resp.cancel(t)
        if self.record_events:
            self._watch[resp.id] = resp

    def delete(self, resp: SimResponse, t: float) -> None:
        resp.deleted_at = t

    def stored(self, response_id: str, t: float) -> SimResponse | None:
        """The response a client can read at `t` (stored, created, not deleted), or None."""
        resp = self.responses.get(response_id)
        return resp if resp is not None and resp.exists_at(t) else None

    # --- conversations ----------------------------------------------------------------------------------------

    def create_conversation(self, t: float, *, items: list[dict[str, Any]] | None = None,
                            metadata: dict[str, str] | None = None,
                            rng: random.Random | None = None) -> SimConversation:  # fmt: skip
        rng = rng or self._client_rng
        conv = SimConversation(hex_id(rng, "conv"), t, dict(metadata or {}), input_items(rng, items or []))
        self.conversations[conv.id] = conv
        self.conversation_order.append(conv)
        return conv

    # --- webhooks ---------------------------------------------------------------------------------------------

    def due_events(self, t: float) -> list[dict[str, Any]]:
        """The webhook event bodies (all but `id`) of background responses that ended by `t`, in time order."""
        self.now()
        due = [r for r in self._watch.values() if r.end <= t]
        if not due:
            return []
        for r in due:
            del self._watch[r.id]
        due.sort(key=lambda r: (r.end, r.seq))
        return [{"object": "event", "created_at": int(r.end), "type": f"response.{r.status}", "data": {"id": r.id}}
                for r in due]  # fmt: skip

    # --- housekeeping -----------------------------------------------------------------------------------------

    def prune(self, t: float, max_responses: int) -> int:
        """Forget the oldest terminal responses while more than `max_responses` are stored; returns how many."""
        excess = len(self.order) - max_responses
        if excess <= 0:
            return 0
        doomed = {r.id for r in self.order[:excess] if r.terminal_at(t) and r.id not in self._watch}
        if doomed:
            self.order = [r for r in self.order if r.id not in doomed]
            for rid in doomed:
                del self.responses[rid]
            for conv in self.conversation_order:
                conv.responses = [r for r in conv.responses if r.id not in doomed]
        return len(doomed)
