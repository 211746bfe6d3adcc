"""The proxy's observation queue: the relay path only hands `(answer, chunk)` over; one task decodes and calls the
protocol's sink.

Relaying never waits on observing. For each routed 2xx answer (or observed WebSocket) the relay path calls
`begin()`, then `chunk()` with every chunk after it went on to the application, then `end()`. Those put items
into a queue of at most `QUEUE_MAX` chunks (the ends, one per answer in flight, always fit, so every answer
ends); a chunk that finds the queue full is dropped and counted (`proxy_feed_full`), and its answer is given up:
the task reads none of it any more, and a sink already made is told it ended incomplete, so an answer is never
half-read as if whole.

One task, started with the first answer, makes the sink (`GuardedObserver.answer`, so a protocol that raises is
counted and goes no further) and feeds it through an `AnswerReader` (JSON or an event stream) or a
`WebSocketReader`. What the readers raise is counted as `proxy_observer_error`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib

from stepscope.contract.vocabulary import DropReason
from stepscope.core.records import Drops
from stepscope.protocols.base import Route
from stepscope.receivers.proxy.guard import GuardedObserver
from stepscope.receivers.proxy.observe import DEFAULT_MAX_BODY, AnswerReader
from stepscope.receivers.proxy.websocket import WebSocketReader

QUEUE_MAX = 4096
"""Chunks waiting for the observation task at most (at most 64 KiB each, mostly far less)."""
_BATCH = 32  # items handled before the task lets the loop run other work


class Observed:
    """One answer under observation; made by `ObservationQueue.begin()`."""

    __slots__ = ("content_encoding", "content_type", "given_up", "ignored", "reader", "route", "traceparent",
                 "websocket")  # fmt: skip

    def __init__(self, route: Route, traceparent: str | None, content_type: str, content_encoding: str,
                 websocket: bool) -> None:  # fmt: skip
        self.route = route
        self.traceparent = traceparent
        self.content_type = content_type
        self.content_encoding = content_encoding
        self.websocket = websocket
        self.given_up = False  # a chunk did not fit the queue: the answer is no longer read
        self.ignored = False  # the protocol wants no sink for it: nothing more is queued
        self.reader: AnswerReader | WebSocketReader | None = None


class ObservationQueue:
    """See the module docstring. `guard` makes the sinks; `drops` counts; `max_body` bounds what a reader keeps."""

    def __init__(
        self, guard: GuardedObserver, *, drops: Drops, max_items: int = QUEUE_MAX, max_body: int = DEFAULT_MAX_BODY
    ) -> None:
        self._guard = guard
        self._drops = drops
        self._max = max_items
        self._max_body = max_body
        self._items: collections.deque[tuple[Observed, bytes | bool]] = collections.deque()
        self._chunks = 0  # chunks (not ends) in the queue
        self._wakeup: asyncio.Future[None] | None = None
        self._task: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        return len(self._items)

    def begin(self, route: Route, traceparent: str | None, *, content_type: str = "", content_encoding: str = "",
              websocket: bool = False) -> Observed:  # fmt: skip
        """A new answer to observe; call `chunk()` for each of its chunks and `end()` once."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._drain(), name="stepscope-proxy-observe")
        return Observed(route, traceparent, content_type, content_encoding, websocket)

    def chunk(self, answer: Observed, data: bytes) -> None:
        if answer.given_up or answer.ignored or not data:
            return
        if self._chunks >= self._max:
            answer.given_up = True
            self._count(DropReason.PROXY_FEED_FULL)
            return
        self._chunks += 1
        self._put(answer, data)

    def end(self, answer: Observed, complete: bool) -> None:
        """The answer ended: `complete` when every byte went on to the application."""
        if not answer.ignored:
            self._put(answer, complete and not answer.given_up)

    def _put(self, answer: Observed, item: bytes | bool) -> None:
        self._items.append((answer, item))
        wakeup = self._wakeup
        if wakeup is not None and not wakeup.done():
            wakeup.set_result(None)

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            for _ in range(_BATCH):
                if not self._items:
                    break
                answer, item = self._items.popleft()
                if not isinstance(item, bool):
                    self._chunks -= 1
                self._handle(answer, item)
            if self._items:
                await asyncio.sleep(0)  # a long queue must not hold the loop: relaying goes first
                continue
            self._wakeup = loop.create_future()
            try:
                await self._wakeup
            finally:
                self._wakeup = None

    def _handle(self, answer: Observed, item: bytes | bool) -> None:
        reader = answer.reader
        try:
            if answer.given_up:
                if isinstance(item, bool) and reader is not None:
                    answer.reader = None
                    reader.finish(False)
                return
            if reader is None:
                if answer.ignored:
                    return
                reader = answer.reader = self._reader(answer)
                if reader is None:
                    answer.ignored = True
                    return
            if isinstance(item, bool):
                answer.reader = None
                reader.finish(item)
            else:
                reader.chunk(item)
        except Exception as exc:  # fail-open: this answer goes unobserved, the others go on
            answer.given_up = True
            self._guard.failed("read", exc)

    def _reader(self, answer: Observed) -> AnswerReader | WebSocketReader | None:
        sink = self._guard.answer(answer.route, answer.traceparent)
        if sink is None:
            return None
        if answer.websocket:
            return WebSocketReader(sink, max_message=self._max_body, drops=self._drops)
        return AnswerReader(sink, content_type=answer.content_type, content_encoding=answer.content_encoding,
                            max_body=self._max_body, drops=self._drops)  # fmt: skip

    def _count(self, reason: DropReason) -> None:
        with contextlib.suppress(Exception):
            self._drops.dropped(reason)

    async def aclose(self, budget_s: float = 1.0) -> None:
        """Stop the task, then handle what is still queued within `budget_s` (the rest is dropped). Idempotent."""
        task = self._task
        if task is None:
            return
        self._task = None
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + budget_s
        while self._items and loop.time() < deadline:
            answer, item = self._items.popleft()
            self._handle(answer, item)
        self._items.clear()
        self._chunks = 0
        await asyncio.sleep(0)  # what the sinks deferred to the loop's next turn runs before the close returns
