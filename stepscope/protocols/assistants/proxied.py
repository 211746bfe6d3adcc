"""What the proxy shows of Assistants traffic: runs created or resumed through it, and the events of their streams.

`RunObserver` is the protocol's `ProxyObserver`. It routes the three requests that create or resume a run (matched
on the end of the path, so OpenAI's `/v1/threads/...`, Foundry's `/api/projects/<p>/threads/...` and Azure
OpenAI's `/openai/threads/...` all work):

| request                                                           | route kind              |
|-------------------------------------------------------------------|-------------------------|
| `POST .../threads/{thread_id}/runs`                               | `create_run`            |
| `POST .../threads/runs`                                           | `create_thread_and_run` |
| `POST .../threads/{thread_id}/runs/{run_id}/submit_tool_outputs`  | `submit_tool_outputs`   |

Each 2xx answer gets a `_RunAnswer`: the run object of a JSON answer, or the first `thread.run` object of a stream,
is the run this request created or resumed; every later event must name that run, so one answer can never make
stepscope track runs it did not start (events naming another run are counted as `proxy_unreadable` and ignored).
What an answer says goes, in order, into `ProxyFeed`'s bounded queue, and one task applies it to the poller and
the reader: a run is tracked the moment the upstream answered (with the request's `traceparent` as its parent
when its metadata has none), a stream's terminal steps are committed as they come, and a stream's end brings the
final check forward. What does not fit the queue is dropped and counted (`proxy_feed_full`); polling still finds it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Protocol
from urllib.parse import unquote

from stepscope.contract.vocabulary import DropReason
from stepscope.core.feed import QUEUE_MAX, Feed
from stepscope.core.poller import Poller
from stepscope.core.records import Drops, UnitRef
from stepscope.protocols.assistants.reader import RunState, StepReader
from stepscope.protocols.assistants.records import parse_run, parse_step
from stepscope.protocols.base import AnswerSink, Route

CREATE_RUN = "create_run"
CREATE_THREAD_AND_RUN = "create_thread_and_run"
SUBMIT_TOOL_OUTPUTS = "submit_tool_outputs"
CREATES = frozenset({CREATE_RUN, CREATE_THREAD_AND_RUN})
"""Routes a `traceparent` header applies to: a resumed run already has its trace."""

_ID = r"([A-Za-z0-9_.~%-]{1,128})"
_CREATE_RUN = re.compile(rf"/threads/{_ID}/runs/?\Z")
_CREATE_THREAD_AND_RUN = re.compile(r"/threads/runs/?\Z")
_SUBMIT = re.compile(rf"/threads/{_ID}/runs/{_ID}/submit_tool_outputs/?\Z")
_RUN_EVENT = "thread.run."
_STEP_EVENT = "thread.run.step."
_DELTA = ".delta"
_DONE = "done"
_Event = tuple[str, Any, Any]


def classify(method: str, path: str) -> Route | None:
    """The route of a request that creates or resumes a run, else None.

    >>> classify("POST", "/v1/threads/thread_abc/runs")
    Route(kind='create_run', container_id='thread_abc', unit_id=None)
    """
    if method != "POST" or "/threads/" not in path:
        return None
    if match := _CREATE_RUN.search(path):
        return Route(CREATE_RUN, container_id=unquote(match.group(1)))
    if _CREATE_THREAD_AND_RUN.search(path):
        return Route(CREATE_THREAD_AND_RUN)
    if match := _SUBMIT.search(path):
        return Route(SUBMIT_TOOL_OUTPUTS, container_id=unquote(match.group(1)), unit_id=unquote(match.group(2)))
    return None


class ProxyFeed:
    """Applies what answers say to the poller and the reader, in order, on one task (a `core.feed.Feed`); a
    component. The `run_created`, `stream_event`, `stream_ended` and `submit_sent` calls only queue."""

    name = "proxy feed"

    def __init__(self, poller: Poller[RunState], reader: StepReader, *, drops: Drops, queue_max: int = QUEUE_MAX):
        self._poller = poller
        self._reader = reader
        self._feed: Feed[_Event] = Feed(self.name, self._apply_one, drops=drops, queue_max=queue_max)

    # --- what answers say (queue only) --------------------------------------------------------------------------

    def run_created(self, run: Mapping[str, Any], traceparent: str | None) -> None:
        self._feed.put(("run", run, traceparent))

    def stream_event(self, event: str, data: Mapping[str, Any]) -> None:
        self._feed.put(("step" if event.startswith(_STEP_EVENT) else "run_event", data, None))

    def stream_ended(self, ref: UnitRef, complete: bool) -> None:
        self._feed.put(("ended", ref, None))

    def submit_sent(self, ref: UnitRef) -> None:
        self._feed.put(("submit", ref, None))

    # --- lifecycle ----------------------------------------------------------------------------------------------

    async def start(self) -> None:
        await self._feed.start()

    async def stop(self, budget_s: float = 1.0) -> None:
        await self._feed.stop(budget_s)

    async def _apply_one(self, event: _Event) -> None:
        await self._apply(*event)

    async def _apply(self, kind: str, data: Any, extra: Any) -> None:
        if kind == "submit":
            state = self._poller.state_of(data.unit_id)
            if state is not None:
                self._reader.submit_sent(state)
            return
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
                await self._reader.stream_step(state, step)
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


class RunEvents(Protocol):
    """What `RunObserver` tells of the answers it reads (`ProxyFeed`, or a recorder in tests); must only queue.

    `run_created(run, traceparent)`: the run object a create or resume answered with (the JSON body, or the first
    `thread.run` object of a stream); `traceparent` is the request's on a create whose run carries none.
    `stream_event(event, data)`: each later `thread.run.*` / `thread.run.step.*` event of that run (no deltas).
    `stream_ended(ref, complete)`: the stream ended; `complete` only when it ended with `done`.
    `submit_sent(ref)`: the application sent a run's tool outputs (told when the request is routed, before the
    upstream answers, so that no poll races the answer).
    """

    def run_created(self, run: Mapping[str, Any], traceparent: str | None) -> None: ...

    def stream_event(self, event: str, data: Mapping[str, Any]) -> None: ...

    def stream_ended(self, ref: UnitRef, complete: bool) -> None: ...

    def submit_sent(self, ref: UnitRef) -> None: ...


class RunObserver:
    """The Assistants protocol's `ProxyObserver`: see the module docstring."""

    def __init__(self, feed: RunEvents, *, drops: Drops) -> None:
        self._feed = feed
        self._drops = drops

    def route(self, method: str, path: str) -> Route | None:
        route = classify(method, path)
        if route is not None and route.kind == SUBMIT_TOOL_OUTPUTS and route.container_id and route.unit_id:
            self._feed.submit_sent(UnitRef(route.container_id, route.unit_id))
        return route

    def answer(self, route: Route, traceparent: str | None) -> AnswerSink | None:
        return _RunAnswer(route, self._feed, self._drops, traceparent if route.kind in CREATES else None)


class _RunAnswer:
    """One answer to a run route, read for the run it created or resumed (see the module docstring)."""

    def __init__(self, route: Route, feed: RunEvents, drops: Drops, traceparent: str | None) -> None:
        self._feed = feed
        self._drops = drops
        self._traceparent = traceparent
        self._thread_id = route.container_id
        self._run_id = route.unit_id  # submit_tool_outputs names its run; a create learns it from the answer
        self._reported = False
        self._done = False

    def wants(self, event: str) -> bool:
        return event == _DONE or (event.startswith(_RUN_EVENT) and not event.endswith(_DELTA))

    def event(self, event: str, data: Mapping[str, Any] | None) -> None:
        if event == _DONE:
            self._done = True
            return
        if data is None:
            self._drops.dropped(DropReason.PROXY_UNREADABLE)
            return
        step = event.startswith(_STEP_EVENT)
        run_id = data.get("run_id") if step else data.get("id")
        if not step and not self._reported:
            if not self._report(data):
                return
        elif not isinstance(run_id, str) or run_id != self._run_id:
            # Only the run this request created or resumed: a forged or confused stream cannot flood tracking.
            self._drops.dropped(DropReason.PROXY_UNREADABLE)
            return
        self._feed.stream_event(event, data)

    def body(self, data: object) -> None:
        if isinstance(data, Mapping):
            self._report(data)

    def ended(self, complete: bool, stream: bool) -> None:
        if stream and self._thread_id is not None and self._run_id is not None:
            self._feed.stream_ended(UnitRef(self._thread_id, self._run_id), complete and self._done)

    def _report(self, obj: Mapping[str, Any]) -> bool:
        """Take `obj` as the run this answer is about; False when it is not a run (or not the resumed one)."""
        run_id, thread_id = obj.get("id"), obj.get("thread_id")
        if obj.get("object") != "thread.run" or not isinstance(run_id, str) or not isinstance(thread_id, str):
            return False
        if self._run_id is not None and run_id != self._run_id:
            self._drops.dropped(DropReason.PROXY_UNREADABLE)
            return False
        self._reported = True
        self._thread_id, self._run_id = thread_id, run_id
        metadata = obj.get("metadata")
        has_own = isinstance(metadata, Mapping) and bool(metadata.get("traceparent"))
        self._feed.run_created(obj, None if has_own else self._traceparent)
        return True
