"""A simulated application of the Responses API: the workload's requests, sent over HTTP from outside the simulator.

OpenAI lists no responses, so a bridge finds them only in the answers it relays as a proxy (or from webhooks).
The in-simulator workload creates its responses inside the simulator, where no proxy sees them; this application
makes them the way a real one does instead: `POST {base_url}/responses` with httpx and the API key, so pointing
`base_url` at a proxy puts every response in its view.

At `scenario.runs_per_second` (Poisson, simulated time, so `--speed` applies) it starts an exchange:
- a create in one of three modes: in the background (`background: true`, then `GET /responses/{id}` every
  `POLL_S` simulated seconds until terminal; cancelled after `GIVE_UP_S`, as an application gives up on a stuck
  one), else streamed (`stream: true`, the SSE read to its end) or plain JSON (answered once terminal), in equal
  shares; `background_share`, `plain_share` (no tools) and `models` are the workload's (`ResponsesWorkload`);
- tools drawn from the workload's mix (function, file_search, web_search, code_interpreter, mcp, image
  generation), so streams carry tool-call items; a response that ends with a `function_call` is answered after
  `submit_delay_s` by a follow-up (`previous_response_id`, the `function_call_output` as input, same tools and
  mode), at most `MAX_ROUNDS` creates per exchange.
`total_runs` bounds the arrivals. At most `max_in_flight` exchanges run at once (each sends one request at a time);
an arrival past that is dropped and counted, with one warning per episode (it ends once half of them are free). A
failed request (a transport error, a non-2xx status, an unreadable body) ends its exchange and is counted; the first
failure of an episode is logged, and the first exchange that succeeds after it ends the episode. `stats` holds the
counts.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
from dataclasses import dataclass, field
from typing import Any

import httpx

from stepscope.simulator.responses.plan import draw_kinds, function_output, tools_for
from stepscope.simulator.responses.workload import ResponsesWorkload
from stepscope.simulator.scenario import Scenario, SimTime

log = logging.getLogger(__name__)

MAX_IN_FLIGHT = 32
"""Exchanges running at once, by default; the `lively` scenario at speed 10 keeps about ten going, 18 at peaks."""
STREAM_SHARE = 0.5
"""Share of foreground creates that stream; the others are answered as JSON."""
MAX_ROUNDS = 3
"""Creates per exchange at most: the first, and follow-ups answering function calls."""
POLL_S = 1.0
"""Simulated seconds between the reads of a background response."""
GIVE_UP_S = 300.0
"""Simulated seconds after which a background response still going is cancelled."""
TIMEOUT_S = 120.0
"""Wall seconds a request may take: a plain create is answered only once its response is terminal."""
_TICK_S = 0.25  # wall seconds between looks at a clock that does not say how fast it runs
_GOING = frozenset({"queued", "in_progress"})
_TERMINAL_EVENTS = frozenset({"response.completed", "response.failed", "response.incomplete"})
_QUESTIONS = (
    "Where is my order?", "Which plan suits a team of twelve?", "What is the weather in Lisbon tomorrow?",
    "Find the refund policy in the handbook.", "Chart last week's sign-ups.",
)  # fmt: skip


class _Unreadable(Exception):
    """An answer without the response it should carry."""


@dataclass(slots=True)
class ApplicationStats:
    """What the application did so far. `creates` counts `POST /responses` by mode (`plain`, `stream`,
    `background`), follow-ups included; `finished` exchanges got every response they created to a terminal status
    (`gave_up` cancelled one instead); `failed` exchanges ended on a failed request; `dropped` arrivals found
    `max_in_flight` exchanges running."""

    started: int = 0
    creates: dict[str, int] = field(default_factory=lambda: {"plain": 0, "stream": 0, "background": 0})
    follow_ups: int = 0
    polls: int = 0
    finished: int = 0
    gave_up: int = 0
    failed: int = 0
    dropped: int = 0


class ResponsesApplication:
    """Sends the workload's requests to `base_url` (the API's base, e.g. `http://127.0.0.1:8090/v1`) with `api_key`.

    `clock` is the simulator's: arrivals, polls and submit delays are simulated seconds, slept at its `speed` when
    it has one. `transport` replaces the network (tests). `start()` returns at once; `stop()` cancels what is in
    flight, closes the client, and is idempotent and safe without `start()`. Use it from one event loop.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str,
        scenario: Scenario,
        *,
        knobs: ResponsesWorkload,
        clock: SimTime,
        seed: int,
        max_in_flight: int = MAX_IN_FLIGHT,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be >= 1")
        self.base_url = base_url.rstrip("/")
        self._api_key = api_key
        self._scenario = scenario
        self._knobs = knobs
        self._clock = clock
        self._seed = seed
        self._max_in_flight = max_in_flight
        self._transport = transport
        self._rng = random.Random(f"{seed}/responses/application")
        self._client: httpx.AsyncClient | None = None
        self._arrivals: asyncio.Task[None] | None = None
        self._exchanges: set[asyncio.Task[None]] = set()
        self._failing = False
        self._dropping: int | None = None  # in a drop episode: the drops counted before it
        self._stopped = False
        self.stats = ApplicationStats()

    def __repr__(self) -> str:
        return f"ResponsesApplication(base_url={self.base_url!r}, api_key='***')"

    @property
    def in_flight(self) -> int:
        """Exchanges running now."""
        return len(self._exchanges)

    async def start(self) -> None:
        """Start sending. Returns at once; a second call, or one after `stop()`, does nothing."""
        if self._arrivals is not None or self._stopped:
            return
        self._client = httpx.AsyncClient(
            base_url=self.base_url,
            headers={"Authorization": f"Bearer {self._api_key}"},
            timeout=httpx.Timeout(TIMEOUT_S, connect=5.0),
            limits=httpx.Limits(max_connections=self._max_in_flight, max_keepalive_connections=self._max_in_flight),
            transport=self._transport,
        )
        self._arrivals = asyncio.get_running_loop().create_task(self._arrive(self._clock.now()), name="sim-application")
        log.info("simulated application sending responses to %s at %.2f per simulated second",
                 self.base_url, self._scenario.runs_per_second)  # fmt: skip

    async def stop(self) -> None:
        """Cancel the arrivals and every exchange in flight, then close the client. Idempotent."""
        self._stopped = True
        tasks = [t for t in (self._arrivals, *self._exchanges) if t is not None]
        self._exchanges.clear()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    # --- pacing -------------------------------------------------------------------------------------------------

    async def _until(self, t: float) -> None:
        """Sleep until simulated time `t`, looking at the clock at least every `_TICK_S` wall seconds."""
        speed = getattr(self._clock, "speed", None)
        while (left := t - self._clock.now()) > 0:
            wall = left / speed if isinstance(speed, int | float) and speed > 0 else left
            await asyncio.sleep(min(wall, _TICK_S))

    async def _arrive(self, due: float) -> None:
        """Launch exchanges at Poisson arrivals from simulated time `due` on."""
        rate, limit = self._scenario.runs_per_second, self._scenario.total_runs
        if rate <= 0:
            return
        while limit is None or self.stats.started + self.stats.dropped < limit:
            due += self._rng.expovariate(rate)
            await self._until(due)
            self._launch()

    def _launch(self) -> None:
        """Start an exchange, or drop the arrival when `max_in_flight` run. A drop episode ends once no more than
        half of them run, so that a load hovering at the bound logs once, not at every drop."""
        running = len(self._exchanges)
        if running >= self._max_in_flight:
            self.stats.dropped += 1
            if self._dropping is None:
                self._dropping = self.stats.dropped - 1
                log.warning("simulated application: %d exchanges in flight, dropping new arrivals (counted)",
                            running)  # fmt: skip
            return
        if self._dropping is not None and running <= self._max_in_flight // 2:
            log.info("simulated application: below its bound again after dropping %d arrivals",
                     self.stats.dropped - self._dropping)  # fmt: skip
            self._dropping = None
        self.stats.started += 1
        task = asyncio.get_running_loop().create_task(self._exchange(self.stats.started))
        self._exchanges.add(task)
        task.add_done_callback(self._exchanges.discard)

    # --- one exchange -------------------------------------------------------------------------------------------

    async def _exchange(self, n: int) -> None:
        """Create a response, answer its function calls in follow-ups, and count how the exchange ended."""
        rng = random.Random(f"{self._seed}/responses/application/{n}")
        knobs = self._knobs
        if rng.random() < knobs.background_share:
            mode = "background"
        else:
            mode = "stream" if rng.random() < STREAM_SHARE else "plain"
        plain = rng.random() < knobs.plain_share
        tools = [] if plain else tools_for(draw_kinds(rng, self._scenario, azure=False, n=rng.randint(1, 3)))
        body: dict[str, Any] = {
            "model": rng.choice(knobs.models), "input": rng.choice(_QUESTIONS), "tools": tools,
            "instructions": "You are a helpful assistant.", "metadata": {"source": "application"},
        }  # fmt: skip
        try:
            for round_ in range(MAX_ROUNDS):
                response = await self._create(mode, body)
                if response is None:
                    self.stats.gave_up += 1
                    break
                call_id = _pending_call(response)
                if call_id is None or round_ == MAX_ROUNDS - 1:
                    self.stats.finished += 1
                    break
                await self._until(self._clock.now() + rng.uniform(*self._scenario.submit_delay_s))
                body = {**body, "input": [function_output(rng, call_id)], "previous_response_id": response["id"]}
                self.stats.follow_ups += 1
        except Exception as exc:  # the exchange is the boundary: count, log once per episode, go on
            self._failed(exc)
            return
        if self._failing:
            self._failing = False
            log.info("simulated application: requests succeed again")

    async def _create(self, mode: str, body: dict[str, Any]) -> dict[str, Any] | None:
        """Create a response in `mode` and return its terminal copy (None: a background one given up on)."""
        assert self._client is not None
        self.stats.creates[mode] += 1
        if mode == "stream":
            return await self._stream(body)
        answer = await self._client.post("/responses", json={**body, "background": mode == "background"})
        response = _json(answer)
        if mode == "background":
            return await self._poll(response)
        return response

    async def _stream(self, body: dict[str, Any]) -> dict[str, Any]:
        """Read the create's SSE to its end; the response its terminal event carries."""
        assert self._client is not None
        final: dict[str, Any] | None = None
        async with self._client.stream("POST", "/responses", json={**body, "stream": True}) as answer:
            answer.raise_for_status()
            async for line in answer.aiter_lines():
                if not line.startswith("data:"):
                    continue
                event = json.loads(line.removeprefix("data:"))
                if isinstance(event, dict) and event.get("type") in _TERMINAL_EVENTS:
                    final = event.get("response")
        if not isinstance(final, dict):
            raise _Unreadable("the stream ended without a terminal event")
        return final

    async def _poll(self, response: dict[str, Any]) -> dict[str, Any] | None:
        """Read a background response until it is terminal; cancel it (and return None) past `GIVE_UP_S`."""
        assert self._client is not None
        give_up = self._clock.now() + GIVE_UP_S
        while response.get("status") in _GOING:
            path = f"/responses/{response['id']}"
            if self._clock.now() >= give_up:
                _json(await self._client.post(f"{path}/cancel"))
                return None
            await self._until(self._clock.now() + POLL_S)
            self.stats.polls += 1
            response = _json(await self._client.get(path))
        return response

    def _failed(self, exc: Exception) -> None:
        self.stats.failed += 1
        if not self._failing:
            self._failing = True
            log.warning("simulated application: a request to %s failed (%s); going on, counting failures until "
                        "one succeeds", self.base_url, _reason(exc))  # fmt: skip


def _json(answer: httpx.Response) -> dict[str, Any]:
    """The answer's JSON object; `httpx.HTTPStatusError` for a non-2xx status, `_Unreadable` for another body."""
    answer.raise_for_status()
    try:
        body = answer.json()
    except ValueError as exc:
        raise _Unreadable("the answer is not JSON") from exc
    if not isinstance(body, dict) or "id" not in body:
        raise _Unreadable("the answer is not a response")
    return body


def _pending_call(response: dict[str, Any]) -> str | None:
    """The `call_id` of the function call a completed response ends with, which the application must answer."""
    output = response.get("output") or []
    last = output[-1] if output else None
    if response.get("status") != "completed" or not isinstance(last, dict) or last.get("type") != "function_call":
        return None
    return str(last.get("call_id"))


def _reason(exc: Exception) -> str:
    if isinstance(exc, httpx.HTTPStatusError):
        return f"status {exc.response.status_code}"
    return str(exc) or type(exc).__name__
