"""Runs the application creates through the proxy, and the steps its streams carry, handed to the poller.

`ProxyFeed` is the proxy's `RunFeed` for the Assistants protocol. The proxy calls it on the event loop, after the
bytes concerned went on to the application; it only parses and queues, and one task applies the queue, so nothing
here can slow a proxied request. A run created (or resumed by `submit_tool_outputs`) is tracked the moment the
upstream answered, with the application's `traceparent` as its parent when its metadata has none; a stream's
events commit its steps as they come; a stream's end brings the final check forward. The queue is bounded: what
does not fit is dropped and counted (`proxy_feed_full`), and polling still finds it.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Callable, Mapping
from typing import Any

from stepscope.contract.vocabulary import DropReason
from stepscope.core.poller import Poller
from stepscope.core.records import UnitRef
from stepscope.errors import InvalidObject
from stepscope.protocols.assistants.reader import RunState, StepReader
from stepscope.protocols.assistants.records import parse_run, parse_step

log = logging.getLogger("stepscope.proxied")

QUEUE_MAX = 10_000
_Event = tuple[str, Any, Any]


class ProxyFeed:
    """Feeds the poller and the reader from the proxy. `start()` runs the applying task; `stop()` ends it."""

    def __init__(
        self,
        poller: Poller[RunState],
        reader: StepReader,
        *,
        dropped: Callable[[str, int], None],
        queue_max: int = QUEUE_MAX,
    ) -> None:
        self._poller = poller
        self._reader = reader
        self._dropped = dropped
        self._queue: collections.deque[_Event] = collections.deque()
        self._queue_max = queue_max
        self._ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    # --- RunFeed (called by the proxy; parse and queue only) ---------------------------------------------------

    def run_created(self, run: Mapping[str, Any], traceparent: str | None) -> None:
        self._put(("run", run, traceparent))

    def stream_event(self, event: str, data: Mapping[str, Any]) -> None:
        if event.startswith("thread.run.step."):  # the proxy passes no step deltas
            self._put(("step", data, None))
        elif event.startswith("thread.run."):
            self._put(("run_event", data, None))

    def stream_ended(self, thread_id: str | None, run_id: str | None, complete: bool) -> None:
        if thread_id is not None and run_id is not None:
            self._put(("ended", UnitRef(thread_id, run_id), complete))

    def session_active(self, session_id: str) -> None:
        """Agents API traffic means nothing to the Assistants protocol."""

    def _put(self, item: _Event) -> None:
        if len(self._queue) >= self._queue_max:
            self._dropped(DropReason.PROXY_FEED_FULL, 1)
            return
        self._queue.append(item)
        self._ready.set()

    # --- lifecycle ----------------------------------------------------------------------------------------------

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._apply_forever(), name="stepscope-proxy-feed")

    async def stop(self) -> None:
        """Apply what is queued, then stop. Idempotent."""
        self._apply_all()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _apply_forever(self) -> None:
        while True:
            await self._ready.wait()
            self._ready.clear()
            self._apply_all()

    def _apply_all(self) -> None:
        while self._queue:
            kind, data, extra = self._queue.popleft()
            try:
                self._apply(kind, data, extra)
            except InvalidObject as exc:
                log.warning("proxy: %s", exc)
                self._dropped(DropReason.PROXY_UNREADABLE, 1)
            except Exception:  # a stage boundary: one bad event never stops the feed
                log.exception("proxy feed failed on a %s", kind)
                self._dropped(DropReason.PROXY_FEED_ERROR, 1)

    def _apply(self, kind: str, data: Any, extra: Any) -> None:
        if kind == "ended":
            ref: UnitRef = data
            state = self._poller.state_of(ref.unit_id)
            if state is not None:
                self._reader.stream_ended(state)
                self._poller.poll_soon(ref.unit_id)
            return
        if kind == "step":
            step = parse_step(data)
            state = self._poller.state_of(step.run_id)
            if state is not None:
                self._reader.stream_step(state, step)
            return
        run = parse_run(data)
        state = self._poller.state_of(run.id)
        if state is None and self._poller.track(run.ref):
            state = self._poller.state_of(run.id)
        if state is None:
            return  # the tracking bound is reached (counted by the poller); discovery offers it again
        if kind == "run":
            self._reader.stream_started(state, run, extra)
        else:
            self._reader.stream_run(state, run)
