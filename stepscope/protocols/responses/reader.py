"""The Responses protocol's `UnitReader`: one response, committed once, when it is terminal.

A unit is a response, `UnitRef(CONTAINER, response_id)`. What the proxy, the project listing or a webhook already
showed of a response is handed to its state (`observed`, `tool_timed`, `stream_ended`, through `ResponseIntake`),
so a response answered in full or streamed through the proxy, or listed terminal, is committed with no request of
stepscope's own. Otherwise the reader reads it with `GET /responses/{id}` until it is terminal, at most once per
poll interval (`PollSchedule.fast`), backing off to `slow` while it stays queued or in progress. A response still
`queued` `stuck_after_s` after its creation is given up (`stuck_queued`): a known server bug leaves some so.

The reader also remembers the responses it committed lately (`done`), so that the same response seen again by
another way (the proxy, then the listing, then a webhook) is never read or committed twice; after a restart the
store answers that (`known_runs`).
"""

from __future__ import annotations

import collections
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from stepscope.contract.vocabulary import DropReason
from stepscope.core.poller import PollSchedule
from stepscope.core.records import Commit, Committer, UnitRef
from stepscope.errors import UnitAbandoned
from stepscope.protocols.responses.mapping import ResponseContext
from stepscope.protocols.responses.records import Item, Response

log = logging.getLogger("stepscope.responses")

STUCK_QUEUED_S = 1800.0
"""A response still `queued` this long after its creation is given up: servers queue for seconds, not half hours."""
STREAM_MAX_S = 900.0
"""How long a stream through the proxy may report a response before the reader reads it itself anyway (the proxy
says when a stream ends; this bounds a stream that never says so)."""
DONE_MAX = 50_000
"""Committed response ids remembered, to ignore a response seen again by another way (about 5 MB)."""
TOOL_TIMES_MAX = 512
"""Tool-call timings kept per response at most."""

ResponseCommit = Commit[Response, Item, ResponseContext]


class ResponseSource(Protocol):
    """What the reader reads (`ResponsesClient` provides it)."""

    async def get_response(self, response_id: str) -> Response: ...


@dataclass(slots=True)
class ResponseState:
    """What the reader knows of one response: the latest copy, when it was first seen terminal (Unix seconds),
    the creating request's `traceparent`, the proxy's tool-call timings, until when a stream reports it and when
    news of it last came (monotonic seconds)."""

    ref: UnitRef
    response: Response | None = None
    observed_end: float | None = None
    traceparent: str | None = None
    tool_times: dict[str, tuple[int, int]] = field(default_factory=dict)
    streaming_until: float = 0.0
    fresh_at: float = -math.inf
    waiting_polls: int = 0


class ResponseReader:
    """Reads responses; a `UnitReader[ResponseState]`."""

    def __init__(
        self,
        client: ResponseSource,
        committer: Committer[Response, Item, ResponseContext],
        *,
        schedule: PollSchedule,
        stuck_after_s: float = STUCK_QUEUED_S,
        wall: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self._committer = committer
        self._schedule = schedule
        self._stuck_after_s = stuck_after_s
        self._wall = wall
        self._monotonic = monotonic
        self._done: collections.OrderedDict[str, None] = collections.OrderedDict()

    def begin(self, ref: UnitRef, cursor: str | None, committed: set[str]) -> ResponseState:
        return ResponseState(ref)

    def status(self, state: ResponseState) -> str:
        return state.response.status if state.response is not None else "pending"

    def busy(self, state: ResponseState) -> bool:
        return False  # a conversation takes new responses while one runs

    def done(self, response_id: str) -> bool:
        """Whether this process committed the response lately."""
        return response_id in self._done

    # --- what the proxy, the listing and webhooks show ----------------------------------------------------------

    def observed(self, state: ResponseState, response: Response, traceparent: str | None, *, at: float,
                 streaming: bool) -> None:  # fmt: skip
        """A copy of the response seen at `at` (Unix seconds): in a proxied answer or stream (`streaming`: more
        events follow until the stream ends), or in the listing."""
        if traceparent is not None and state.traceparent is None:
            state.traceparent = traceparent
        if state.response is not None and state.response.is_terminal and not response.is_terminal:
            return  # an older copy (a listing page read before the stream ended) never undoes a terminal one
        self._take(state, response, at)
        now = self._monotonic()
        state.fresh_at = now
        if streaming and not response.is_terminal:
            state.streaming_until = now + STREAM_MAX_S

    def tool_timed(self, state: ResponseState, item_id: str, start_ns: int, end_ns: int) -> None:
        """The proxy saw a tool-call item added at `start_ns` and done at `end_ns`."""
        if len(state.tool_times) < TOOL_TIMES_MAX:
            state.tool_times[item_id] = (start_ns, end_ns)

    def stream_ended(self, state: ResponseState) -> None:
        """The stream reporting the response ended before it was terminal: read it from now on."""
        state.streaming_until = 0.0
        state.fresh_at = -math.inf

    # --- polling ------------------------------------------------------------------------------------------------

    async def poll(self, state: ResponseState) -> float | None:
        response = state.response
        if response is None or not response.is_terminal:
            now = self._monotonic()
            if state.streaming_until > now:
                return state.streaming_until - now  # the stream reports it; its end brings the next poll forward
            since = now - state.fresh_at
            if response is not None and since < self._schedule.fast:
                return self._schedule.fast - since  # news came lately: at most one read per poll interval
            previous = response.status if response is not None else None
            response = await self._client.get_response(state.ref.unit_id)
            state.fresh_at = self._monotonic()
            self._take(state, response, self._wall())
            if not response.is_terminal:
                return self._wait(state, response, previous)
        context = ResponseContext(observed_end=state.observed_end, tool_times=dict(state.tool_times),
                                  traceparent=state.traceparent)  # fmt: skip
        if not await self._committer.commit(ResponseCommit(state.ref, response, finish=context, finished=True)):
            return self._schedule.slow
        self._done[response.id] = None
        if len(self._done) > DONE_MAX:
            self._done.popitem(last=False)
        return None

    def _take(self, state: ResponseState, response: Response, at: float) -> None:
        state.response = response
        if response.is_terminal and state.observed_end is None:
            state.observed_end = at

    def _wait(self, state: ResponseState, response: Response, previous: str | None) -> float:
        """Seconds to the next read of a response still going; `UnitAbandoned` for one stuck queued."""
        if response.status == "queued" and self._wall() - response.created_at > self._stuck_after_s:
            raise UnitAbandoned(f"still queued {self._stuck_after_s:.0f}s after its creation",
                                reason=DropReason.STUCK_QUEUED)  # fmt: skip
        state.waiting_polls = state.waiting_polls + 1 if response.status == previous else 1
        return self._schedule.waiting(state.waiting_polls)
