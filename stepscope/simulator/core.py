"""`Simulator`: one simulated Assistants v2 service (state, workload, faults) and its ASGI app.

```python
sim = Simulator(scenario_named("lively"), flavor="openai", clock=SimClock(speed=10))
transport = sim.transport()           # in-process httpx transport (drops become RemoteProtocolError)
with SimulatorServer(sim) as server:  # or over real HTTP on 127.0.0.1
    client = openai.OpenAI(base_url=server.url, api_key="sk-sim")
```
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, Protocol

import httpx

from stepscope.simulator.agents import AgentsService, WebhookTarget
from stepscope.simulator.agents.app import AgentsApp
from stepscope.simulator.api import DROP_HEADER, SimApp
from stepscope.simulator.engine import Engine
from stepscope.simulator.faults import FaultConfig, FaultInjector
from stepscope.simulator.handlers import Handlers
from stepscope.simulator.responses import ResponsesService, ResponsesWorkload
from stepscope.simulator.responses.app import ResponsesApp
from stepscope.simulator.responses.application import ResponsesApplication
from stepscope.simulator.scenario import Scenario, SimClock, SimTime

log = logging.getLogger(__name__)

FLAVORS = ("openai", "azure")
PROTOCOLS = ("assistants", "agents", "both", "responses")
AZURE_API_VERSIONS = ("2025-05-01", "v1", "2025-05-15-preview")


class SimApplication(Protocol):
    """The workload played from outside the simulator, over HTTP (`Simulator.application`). `start()` returns at
    once; `stop()` cancels what is in flight, is idempotent and safe without `start()`; neither raises."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


class Simulator:
    """Holds the simulated service. Not thread-safe: use it from the event loop that serves `app`.

    `flavor` is `openai` (paths under `/v1`) or `azure` (under `/api/projects/{project}`). `api_key` is accepted
    as Bearer token (and as `api-key` on Azure) together with `accepted_tokens`. `seed` defaults to the
    scenario's. `max_runs` bounds memory: housekeeping forgets the oldest terminal runs beyond it.

    `protocol` is `assistants` (the default), `agents` (only the Agents API, under `/v1/agents`) or `both`; the
    Agents API exists on the openai flavour only. `webhooks` (agents or both) delivers signed session events.
    `responses` serves only the Responses API (`/v1`, or Foundry's `/api/projects/{project}/openai/v1` on azure,
    which is then `base_path`), with `responses_workload` knobs (default: the scenario preset's); its `webhooks`
    deliver `response.*` events of background responses.

    `external_workload` moves the workload out of the simulator where the units it creates could be found only by
    seeing their requests pass (Responses on the openai flavour: OpenAI lists no responses): the in-simulator
    workload stays off, and `application(base_url)` returns an application that sends the same workload over HTTP,
    e.g. through a proxy. Elsewhere it changes nothing and `application` returns None.
    """

    def __init__(
        self,
        scenario: Scenario | None = None,
        faults: FaultConfig | None = None,
        *,
        flavor: str = "openai",
        api_key: str = "sk-sim",
        accepted_tokens: tuple[str, ...] = (),
        clock: SimTime | None = None,
        seed: int | None = None,
        project: str = "sim",
        max_runs: int = 200_000,
        housekeeping_s: float = 1.0,
        protocol: str = "assistants",
        webhooks: WebhookTarget | None = None,
        responses_workload: ResponsesWorkload | None = None,
        external_workload: bool = False,
    ) -> None:
        if flavor not in FLAVORS:
            raise ValueError(f"flavor must be one of {FLAVORS}, got {flavor!r}")
        if protocol not in PROTOCOLS or (protocol in ("agents", "both") and flavor != "openai"):
            raise ValueError(f"protocol must be one of {PROTOCOLS} (agents and both with flavor openai only)")
        if webhooks is not None and protocol == "assistants":
            raise ValueError("webhooks need protocol agents, both or responses")
        self.scenario = scenario or Scenario()
        problems = self.scenario.validate() + (faults.validate() if faults else [])
        if problems:
            raise ValueError("; ".join(problems))
        self.flavor = flavor
        self.api_key = api_key
        self.seed = self.scenario.seed if seed is None else seed
        self.clock: SimTime = clock or SimClock()
        self.max_runs = max_runs
        self.base_path = "/v1" if flavor == "openai" else f"/api/projects/{project}"
        if protocol == "responses" and flavor == "azure":
            self.base_path += "/openai/v1"
        # Agents or Responses only: the Assistants workload stays off (its engine still answers /_sim/truth).
        off = protocol in ("agents", "responses")
        assistants = self.scenario.replace(runs_per_second=0.0) if off else self.scenario
        self.engine = Engine(assistants, clock=self.clock, seed=self.seed, azure=flavor == "azure")
        self.injector = FaultInjector(faults, seed=self.seed)
        self.app = SimApp(
            Handlers(self.engine),
            self.injector,
            prefix=self.base_path,
            azure=flavor == "azure",
            accepted_keys=frozenset({api_key, *accepted_tokens}),
            lifespan=(self.start, self.shutdown),
        )
        self.protocol = protocol
        self.agents: AgentsService | None = None
        if protocol in ("agents", "both"):
            self.agents = AgentsService(self.scenario, clock=self.clock, seed=self.seed, webhooks=webhooks)
            self.app = AgentsApp(self.app, self.agents.handlers, serve_assistants=protocol == "both", truth=self.truth)
        self.responses: ResponsesService | None = None
        self.external_workload = external_workload and protocol == "responses" and flavor == "openai"
        if protocol == "responses":
            inside = self.scenario.replace(runs_per_second=0.0) if self.external_workload else self.scenario
            self.responses = ResponsesService(inside, clock=self.clock, seed=self.seed, azure=flavor == "azure",
                                              workload=responses_workload, webhooks=webhooks)  # fmt: skip
            self.app = ResponsesApp(self.app, self.responses.handlers, truth=self.truth)
        self._housekeeping_s = housekeeping_s
        self._task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"Simulator(scenario={self.scenario.name!r}, flavor={self.flavor!r}, seed={self.seed}, api_key='***')"

    @property
    def thread_ids(self) -> list[str]:
        """The threads the workload creates runs on; fixed by the seed and known before any run exists."""
        return list(self.engine.workload_threads)

    @property
    def assistants_threads(self) -> list[str]:
        """The threads the Assistants workload runs on, when it runs (the Assistants API lists no threads at
        OpenAI, so a client is told them); empty for the other protocols."""
        return self.thread_ids if self.protocol in ("assistants", "both") else []

    @property
    def faults(self) -> FaultConfig:
        return self.injector.config

    def set_faults(self, faults: FaultConfig | None) -> None:
        """Replace the fault configuration at runtime (None: no faults). Raises `ValueError` when invalid."""
        faults = faults or FaultConfig()
        problems = faults.validate()
        if problems:
            raise ValueError("; ".join(problems))
        self.injector.replace(faults)

    def truth(self) -> dict[str, Any]:
        """What really happened, as of now: `{"now", "threads", "workload_threads", "assistants", "runs", "messages",
        "stats"}`.

        `runs` holds every run object as the API serialises it, plus `"steps"`: its steps in creation order.
        `messages` maps each thread with messages to them, oldest first (pruned with their runs, see `max_runs`).
        With the Agents API served, `"agents"` holds its truth (stepscope/simulator/agents/truth.py); with the
        Responses API, `"responses"` (stepscope/simulator/responses/truth.py).
        """
        truth = self.engine.truth()
        if self.agents is not None:
            truth["agents"] = self.agents.truth()
        if self.responses is not None:
            truth["responses"] = self.responses.truth()
        return truth

    def application(self, base_url: str) -> SimApplication | None:
        """The workload as an application sending its requests to `base_url` (the API's base, with `base_path`,
        e.g. a proxy's `http://127.0.0.1:8090/v1`) with `api_key`, not started; None without `external_workload`,
        where the workload runs inside. Each call makes a new application."""
        if not self.external_workload or self.responses is None:
            return None
        return ResponsesApplication(base_url, self.api_key, self.scenario, knobs=self.responses.engine.knobs,
                                    clock=self.clock, seed=self.seed)  # fmt: skip

    def transport(self) -> httpx.AsyncBaseTransport:
        """An httpx transport that calls `app` in-process (base URL: `http://sim` + `base_path`)."""
        return SimTransport(self.app)

    async def start(self) -> None:
        """Start housekeeping (workload catch-up, pruning). Returns at once; idempotent."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._housekeeping(), name="sim-housekeeping")
        if self.agents is not None:
            await self.agents.start()
        if self.responses is not None:
            await self.responses.start()

    async def shutdown(self) -> None:
        """Stop housekeeping. Idempotent and safe without `start`."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.agents is not None:
            await self.agents.shutdown()
        if self.responses is not None:
            await self.responses.shutdown()

    async def _housekeeping(self) -> None:
        while True:
            await asyncio.sleep(self._housekeeping_s)
            t = self.engine.now()
            dropped = self.engine.prune(t, self.max_runs)
            if dropped:
                log.info("simulator forgot %d old terminal runs (max_runs=%d)", dropped, self.max_runs)
            if self.agents is not None and self.agents.engine.prune(t, self.max_runs):
                log.info("simulator forgot old idle agent sessions (max_runs=%d root turns)", self.max_runs)
            if self.responses is not None and self.responses.engine.prune(t, self.max_runs):
                log.info("simulator forgot old terminal responses (max_runs=%d)", self.max_runs)


class SimTransport(httpx.AsyncBaseTransport):
    """`httpx.ASGITransport` that turns the simulator's drop signal into a transport error, as a socket would."""

    def __init__(self, app: SimApp) -> None:
        self._inner = httpx.ASGITransport(app=app)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self._inner.handle_async_request(request)
        if DROP_HEADER.decode() in response.headers:
            await response.aclose()
            raise httpx.RemoteProtocolError("Server disconnected without sending a response.", request=request)
        return response

    async def aclose(self) -> None:
        await self._inner.aclose()
