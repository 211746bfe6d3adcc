"""The Responses workload: the applications that create responses on the simulated server, from the scenario.

At `scenario.runs_per_second` (Poisson, simulated time) an application creates a response: a share in the
background, a share in a conversation (an idle one of `scenario.threads` workload conversations, or a new one),
on azure a share through a Foundry agent (`agent_reference`), a share without tools; the others use 1 to
`steps[1] - 1` tool calls drawn from the tool mix. A response that ends with a `function_call` is answered
`submit_delay_s` later by a follow-up response (`previous_response_id`, or the same conversation) whose input is
the `function_call_output`. `total_runs` bounds the responses started this way (follow-ups do not count).

`ResponsesWorkload` holds the knobs the Assistants scenario has no field for; `workload_for(scenario)` gives the
preset's (the `faulty` preset leaves 2% of background responses stuck in `queued`, the others none).
"""

from __future__ import annotations

import dataclasses
import heapq
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING

from stepscope.simulator.responses.params import CreateParams
from stepscope.simulator.responses.plan import draw_kinds, function_output, tools_for
from stepscope.simulator.responses.state import SimConversation, SimResponse
from stepscope.simulator.scenario import Scenario

if TYPE_CHECKING:
    from stepscope.simulator.responses.engine import ResponsesEngine

_QUESTIONS = (
    "Where is my order?", "Summarise the attached handbook.", "What is the weather in Lisbon tomorrow?",
    "Compare the two pricing plans for a team of twelve.", "Draft a reply to the customer about the refund.",
)  # fmt: skip
_TEAMS = ("payments", "search", "support")


@dataclass(frozen=True, slots=True)
class ResponsesWorkload:
    """Shares of workload responses (probabilities per response) and the models they use.

    `stuck_queued_rate` is the share of background responses (workload and client ones) that never leave
    `queued`, as the real service sometimes leaves them.
    """

    background_share: float = 0.3
    conversation_share: float = 0.35
    new_conversation_share: float = 0.2
    agent_share: float = 0.6
    plain_share: float = 0.3
    stuck_queued_rate: float = 0.0
    models: tuple[str, ...] = ("gpt-5", "gpt-5-mini", "gpt-4.1", "o4-mini")

    def validate(self) -> list[str]:
        """Every problem as `field: reason`; empty when usable."""
        problems = [f"{f.name}: must be within 0..1" for f in dataclasses.fields(self)
                    if f.name != "models" and not 0.0 <= getattr(self, f.name) <= 1.0]  # fmt: skip
        if not self.models:
            problems.append("models: must not be empty")
        return problems

    def replace(self, **changes: object) -> ResponsesWorkload:
        """A copy with `changes` applied (None values are ignored)."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})  # type: ignore[arg-type]


WORKLOADS = {"faulty": ResponsesWorkload(stuck_queued_rate=0.02)}


def workload_for(scenario: Scenario) -> ResponsesWorkload:
    """The Responses knobs of the scenario's preset (the defaults for presets without their own)."""
    return WORKLOADS.get(scenario.name, ResponsesWorkload())


class WorkloadDriver:
    """Creates the workload's responses and conversations in the engine, lazily, in simulated-time order."""

    def __init__(
        self, engine: ResponsesEngine, scenario: Scenario, knobs: ResponsesWorkload, *, seed: int, start: float
    ) -> None:
        self.engine = engine
        self.scenario = scenario
        self.knobs = knobs
        self.seed = seed
        self._rng = random.Random(f"{seed}/responses/workload")
        self._spawned = 0
        self._advancing = False
        self._followups: list[tuple[float, int, str]] = []  # heap of (time, response seq, parent id)
        self._reserved: dict[str, float] = {}  # conversation id -> when its pending follow-up starts
        self.conversations: list[SimConversation] = []
        for i in range(scenario.threads):
            # Staggered into the past so that listing newest-first has an order from the start.
            conv = engine.create_conversation(start - (scenario.threads - i), metadata={"source": "workload"},
                                              rng=self._rng)  # fmt: skip
            self.conversations.append(conv)
        rate = scenario.runs_per_second
        self._next_due = start + self._rng.expovariate(rate) if rate > 0 else float("inf")

    def advance(self, t: float) -> None:
        """Create every workload response due at or before `t`, each at its own time."""
        if self._advancing:
            return
        self._advancing = True
        try:
            while True:
                followup = self._followups[0][0] if self._followups else float("inf")
                if min(self._next_due, followup) > t:
                    return
                if followup <= self._next_due:
                    at, _, parent = heapq.heappop(self._followups)
                    self._follow_up(at, parent)
                    continue
                limit = self.scenario.total_runs
                if limit is not None and self._spawned >= limit:
                    self._next_due = float("inf")
                    continue
                self._spawn(self._next_due)
                self._next_due += self._rng.expovariate(self.scenario.runs_per_second)
        finally:
            self._advancing = False

    def _conversation(self, rng: random.Random, t: float) -> SimConversation:
        if rng.random() >= self.knobs.new_conversation_share:
            idle = [c for c in self.conversations if c.busy_until() <= t and self._reserved.get(c.id, 0.0) <= t]
            if idle:
                return rng.choice(idle)
        conv = self.engine.create_conversation(t, metadata={"source": "workload"}, rng=rng)
        self.conversations.append(conv)
        return conv

    def _spawn(self, t: float) -> None:
        self._spawned += 1
        rng = random.Random(f"{self.seed}/responses/workload/{self._spawned}")
        knobs, engine = self.knobs, self.engine
        background = rng.random() < knobs.background_share
        in_conversation = rng.random() < knobs.conversation_share
        agent = rng.choice(engine.agents) if engine.agents and rng.random() < knobs.agent_share else None
        model = agent["model"] if agent is not None else rng.choice(knobs.models)
        plain = rng.random() < knobs.plain_share
        steps = self.scenario.steps
        n = 0 if plain else rng.randint(max(steps[0] - 1, 1), max(steps[1] - 1, 1))
        kinds = draw_kinds(rng, self.scenario, azure=engine.azure, n=n)
        conversation = self._conversation(rng, t).id if in_conversation else None
        params = CreateParams(
            model=None if agent is not None else model, input=rng.choice(_QUESTIONS), tools=tools_for(kinds),
            background=background, conversation_id=conversation, agent=agent and {"name": agent["name"]},
            metadata={"source": "workload", "team": rng.choice(_TEAMS)}, instructions="You are a helpful assistant.",
        )  # fmt: skip
        self._schedule(engine.create_response(t, params, rng=rng, kinds=kinds, source="workload"), rng)

    def _schedule(self, resp: SimResponse, rng: random.Random) -> None:
        """Queue the application's answer to a response that ended asking for a function call."""
        last = resp.output[-1] if resp.output else None
        if resp.status != "completed" or last is None or last.type != "function_call":
            return
        at = resp.end + rng.uniform(*self.scenario.submit_delay_s)
        if resp.conversation_id is not None:
            self._reserved[resp.conversation_id] = at
        heapq.heappush(self._followups, (at, resp.seq, resp.id))

    def _follow_up(self, t: float, parent_id: str) -> None:
        parent = self.engine.responses.get(parent_id)
        if parent is None or parent.status != "completed" or parent.deleted_at <= t:
            return  # cancelled, pruned or deleted meanwhile: the application gives up
        rng = random.Random(f"{self.seed}/responses/followup/{parent_id}")
        call_id = str(parent.output[-1].fields["call_id"])
        steps = self.scenario.steps
        kinds = [k for k in draw_kinds(rng, self.scenario, azure=self.engine.azure, n=rng.randint(0, steps[0]))
                 if k != "function_call"]  # fmt: skip
        params = CreateParams(
            model=parent.model if parent.agent is None else None, input=[function_output(rng, call_id)],
            tools=list(parent.request.get("tools") or []), background=parent.background,
            conversation_id=parent.conversation_id,
            previous_response_id=parent.id if parent.conversation_id is None else None,
            agent=dict(parent.agent) if parent.agent is not None else None, metadata=dict(parent.metadata),
            instructions=parent.request.get("instructions"),
        )  # fmt: skip
        self._schedule(self.engine.create_response(t, params, rng=rng, kinds=kinds, source="workload"), rng)
