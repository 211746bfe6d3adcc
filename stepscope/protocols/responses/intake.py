"""`ResponseIntake`: where responses seen outside polling arrive, and how each becomes tracked exactly once.

Four ways show a response: the proxy (a JSON answer or a stream's events), the project listing, a verified webhook
and a `/v1/watch` registration. The proxy and webhooks only queue here (`seen`, `tool_timed`, `stream_ended`,
`mentioned`; bounded by `queue_max`, past which an observation is dropped and counted as `proxy_feed_full`); one
task applies the queue in order. The listing hands its responses over directly (`offer`).

Applying is where "committed once" is decided: a response the poller tracks gets the new copy; one the reader
committed lately, or the store knows (committed before a restart, or tracked already), is left alone; any other
is tracked, with what was seen of it, so a terminal copy is committed without a request.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

from stepscope.contract.vocabulary import DropReason
from stepscope.core.poller import Poller
from stepscope.core.records import Drops, UnitRef
from stepscope.errors import InvalidObject, StoreError
from stepscope.protocols.responses.parsers import parse_response
from stepscope.protocols.responses.reader import ResponseReader, ResponseState
from stepscope.protocols.responses.records import Response
from stepscope.protocols.responses.vocabulary import CONTAINER

log = logging.getLogger("stepscope.responses")

QUEUE_MAX = 10_000


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
        self._drops = drops
        self._content = content
        self._queue: collections.deque[_Event] = collections.deque()
        self._queue_max = queue_max
        self._ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    # --- what the proxy and webhooks show (queue only; never blocks or raises) ------------------------------------

    def seen(self, data: Mapping[str, Any], traceparent: str | None, *, at: float, streaming: bool) -> None:
        """A response object in a proxied answer (`streaming`: in a stream's lifecycle event), seen at `at`."""
        self._put(("seen", data, traceparent, (at, streaming)))

    def tool_timed(self, response_id: str, item_id: str, start_ns: int, end_ns: int) -> None:
        self._put(("tool", response_id, item_id, (start_ns, end_ns)))

    def stream_ended(self, response_id: str) -> None:
        self._put(("ended", response_id, None, None))

    def mentioned(self, response_id: str) -> None:
        """A verified webhook (or a registration) names the response: read it once."""
        self._put(("mentioned", response_id, None, None))

    def _put(self, event: _Event) -> None:
        if len(self._queue) >= self._queue_max:
            self._drops.dropped(DropReason.PROXY_FEED_FULL)
            return
        self._queue.append(event)
        self._ready.set()

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
        if self._task is None:
            self._task = asyncio.create_task(self._apply_forever(), name="stepscope-responses-intake")

    async def stop(self, budget_s: float = 1.0) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._apply_all(), timeout=budget_s)

    @property
    def pending(self) -> int:
        """Observations queued, not applied yet."""
        return len(self._queue)

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def _apply_forever(self) -> None:
        while True:
            await self._ready.wait()
            self._ready.clear()
            await self._apply_all()

    async def _apply_all(self) -> None:
        while self._queue:
            event = self._queue.popleft()
            try:
                await self._apply(*event)
            except InvalidObject as exc:
                log.warning("proxy: %s", exc)
                self._drops.dropped(DropReason.PROXY_UNREADABLE)
            except StoreError:
                self._drops.dropped(DropReason.PROXY_FEED_ERROR)  # logged by the store; polling or the listing retries
            except Exception:  # a stage boundary: one bad observation never stops the intake
                log.exception("responses intake failed on a %s", event[0])
                self._drops.dropped(DropReason.PROXY_FEED_ERROR)

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
