"""`ResponseIntake`: where responses seen outside polling arrive, and how each becomes tracked exactly once.

Four ways show a response: the proxy (a JSON answer or a stream's events), the project listing, a verified webhook
and a `/v1/watch` registration. The proxy and webhooks only queue here (`seen`, `tool_timed`, `stream_ended`,
`mentioned`), in a `core.feed.Feed`: bounded, applied in order by one task, what applying raises counted. The
listing hands its responses over directly (`offer`).

Applying is where "committed once" is decided: a response the poller tracks gets the new copy; one the reader
committed lately, or the store knows (committed before a restart, or tracked already), is left alone; any other
is tracked, with what was seen of it, so a terminal copy is committed without a request.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

from stepscope.core.feed import QUEUE_MAX, Feed
from stepscope.core.poller import Poller
from stepscope.core.records import Drops, UnitRef
from stepscope.protocols.responses.parsers import parse_response
from stepscope.protocols.responses.reader import ResponseReader, ResponseState
from stepscope.protocols.responses.records import Response
from stepscope.protocols.responses.vocabulary import CONTAINER


class KnownUnits(Protocol):
    """The store as the intake asks it, off the event loop: which of these units it has seen. Raises `StoreError`."""

    async def known_runs(self, unit_ids: Iterable[str]) -> set[str]: ...


_Event = tuple[str, Any, Any, Any]


class ResponseIntake:
    """See the module docstring; a component (`start` runs the applying task, `stop` applies what is queued within
    its budget, then ends it; idempotent). `content` keeps item content when parsing what the proxy saw."""

    name = "responses intake"

    def __init__(
        self,
        poller: Poller[ResponseState],
        reader: ResponseReader,
        store: KnownUnits,
        *,
        drops: Drops,
        content: bool = False,
        queue_max: int = QUEUE_MAX,
    ) -> None:
        self._poller = poller
        self._reader = reader
        self._store = store
        self._content = content
        self._feed: Feed[_Event] = Feed(self.name, self._apply_one, drops=drops, queue_max=queue_max)

    # --- what the proxy and webhooks show (queue only; never blocks or raises) ------------------------------------

    def seen(self, data: Mapping[str, Any], traceparent: str | None, *, at: float, streaming: bool) -> None:
        """A response object in a proxied answer (`streaming`: in a stream's lifecycle event), seen at `at`."""
        self._feed.put(("seen", data, traceparent, (at, streaming)))

    def tool_timed(self, response_id: str, item_id: str, start_ns: int, end_ns: int) -> None:
        self._feed.put(("tool", response_id, item_id, (start_ns, end_ns)))

    def stream_ended(self, response_id: str) -> None:
        self._feed.put(("ended", response_id, None, None))

    def mentioned(self, response_id: str) -> None:
        """A verified webhook (or a registration) names the response: read it once."""
        self._feed.put(("mentioned", response_id, None, None))

    # --- what the listing shows (direct) -------------------------------------------------------------------------

    async def offer(self, responses: Sequence[Response], *, at: float) -> int:
        """Listed responses, seen at `at`: each tracked one gets the listed copy, each new one is tracked with it.
        Returns how many it started tracking. Raises `StoreError`."""
        fresh: list[Response] = []
        for response in responses:
            state = self._poller.state_of(response.id)
            if state is not None:
                self._observe(state, response, None, at, False)
            elif not self._reader.done(response.id):
                fresh.append(response)
        if not fresh:
            return 0
        known = await self._store.known_runs(r.id for r in fresh)
        return sum(self._track(r, None, at, False) for r in fresh if r.id not in known)

    # --- lifecycle ----------------------------------------------------------------------------------------------

    async def start(self) -> None:
        await self._feed.start()

    async def stop(self, budget_s: float = 1.0) -> None:
        await self._feed.stop(budget_s)

    @property
    def pending(self) -> int:
        """Observations queued, not applied yet."""
        return self._feed.pending

    async def _apply_one(self, event: _Event) -> None:
        await self._apply(*event)

    async def _apply(self, kind: str, first: Any, second: Any, third: Any) -> None:
        if kind == "seen":
            response = parse_response(first, content=self._content)
            at, streaming = third
            state = self._poller.state_of(response.id)
            if state is not None:
                self._observe(state, response, second, at, streaming)
            elif await self._is_new(response.id):
                self._track(response, second, at, streaming)
            return
        state = self._poller.state_of(first)
        if kind == "tool":
            if state is not None:
                self._reader.tool_timed(state, second, *third)
        elif kind == "ended":
            if state is not None:
                self._reader.stream_ended(state)
                self._poller.poll_soon(first)
        elif state is not None:
            self._poller.poll_soon(first)  # a webhook says it ended: read it now
        elif await self._is_new(first):
            self._poller.track(UnitRef(CONTAINER, first))

    async def _is_new(self, response_id: str) -> bool:
        if self._reader.done(response_id):
            return False
        return response_id not in await self._store.known_runs([response_id])

    def _track(self, response: Response, traceparent: str | None, at: float, streaming: bool) -> bool:
        # Past the tracking bound the poller counts it, and the listing or a webhook offers it again.
        tracked = self._poller.track(UnitRef(CONTAINER, response.id))
        state = self._poller.state_of(response.id)  # also when another way tracked it meanwhile
        if state is not None:
            self._observe(state, response, traceparent, at, streaming)
        return tracked

    def _observe(self, state: ResponseState, response: Response, traceparent: str | None, at: float,
                 streaming: bool) -> None:  # fmt: skip
        self._reader.observed(state, response, traceparent, at=at, streaming=streaming)
        if response.is_terminal:
            self._poller.poll_soon(response.id)
