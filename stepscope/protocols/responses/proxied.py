"""What the proxy shows of Responses API traffic: responses created, read or cancelled through it, and their events.

`ResponseObserver` is the protocol's `ProxyObserver`. It routes (on the end of the path, so OpenAI's `/v1/...` and
Foundry's `/api/projects/{p}/openai/v1/...` both work):

| request                                  | route kind         | what its answer shows                        |
|------------------------------------------|--------------------|----------------------------------------------|
| `POST .../responses`                     | `create_response`  | the response it created: JSON, or SSE events |
| `GET .../responses` (WebSocket upgrade)  | `responses_socket` | the responses created on the socket, in turn |
| `GET .../responses/{id}`                 | `read_response`    | that response (JSON, or a resumed stream)    |
| `POST .../responses/{id}/cancel`         | `read_response`    | that response, cancelled                     |

Each 2xx answer gets a `_ResponseAnswer`, which hands the `ResponseIntake` every copy of the response it carries (the
JSON body, or the `response` of each lifecycle event: `response.created`, `.queued`, `.in_progress`, `.completed`,
`.failed`, `.incomplete`), the moments it saw each tool-call item's `response.output_item.added` and `.done`, and
the end of a stream that ended before its response did. An answer speaks of one response: the one its path names,
or the first its events name; on a WebSocket each `response.created` starts the next one. Events naming another
response are counted as `proxy_unreadable` and ignored, so one answer can never make stepscope track responses it
did not carry. A create's `traceparent` header parents the response's span.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol
from urllib.parse import unquote

from stepscope.contract.vocabulary import DropReason
from stepscope.core.records import Drops
from stepscope.protocols.base import AnswerSink, Route
from stepscope.protocols.responses.vocabulary import is_tool_call

CREATE = "create_response"
SOCKET = "responses_socket"
READ = "read_response"
LIFECYCLE = frozenset({"response.created", "response.queued", "response.in_progress", "response.completed",
                       "response.failed", "response.incomplete"})  # fmt: skip
TERMINAL_EVENTS = frozenset({"response.completed", "response.failed", "response.incomplete"})
ITEM_ADDED = "response.output_item.added"
ITEM_DONE = "response.output_item.done"
OPEN_ITEMS_MAX = 256
"""Tool-call items awaiting their `.done` per answer at most; more are not timed."""

_ID = r"([A-Za-z0-9_.~%-]{1,128})"
_COLLECTION = re.compile(r"/responses/?\Z")
_ONE = re.compile(rf"/responses/{_ID}/?\Z")
_CANCEL = re.compile(rf"/responses/{_ID}/cancel/?\Z")


def classify(method: str, path: str) -> Route | None:
    """The route of a request whose answer shows a response, else None.

    >>> classify("POST", "/v1/responses")
    Route(kind='create_response', container_id=None, unit_id=None)
    >>> classify("GET", "/api/projects/p/openai/v1/responses/resp_1")
    Route(kind='read_response', container_id=None, unit_id='resp_1')
    """
    if "/responses" not in path:
        return None
    if method == "POST":
        if _COLLECTION.search(path):
            return Route(CREATE)
        if match := _CANCEL.search(path):
            return Route(READ, unit_id=unquote(match.group(1)))
    elif method == "GET":
        if _COLLECTION.search(path):
            return Route(SOCKET)
        if match := _ONE.search(path):
            return Route(READ, unit_id=unquote(match.group(1)))
    return None


class ResponseEvents(Protocol):
    """What answers tell (`ResponseIntake`, or a recorder in tests); every call only queues."""

    def seen(self, data: Mapping[str, Any], traceparent: str | None, *, at: float, streaming: bool) -> None: ...

    def tool_timed(self, response_id: str, item_id: str, start_ns: int, end_ns: int) -> None: ...

    def stream_ended(self, response_id: str) -> None: ...


class ResponseObserver:
    """The Responses protocol's `ProxyObserver`: see the module docstring. `wall` is the clock of observed times."""

    def __init__(self, events: ResponseEvents, *, drops: Drops, wall: Callable[[], float] = time.time) -> None:
        self._events = events
        self._drops = drops
        self._wall = wall

    def route(self, method: str, path: str) -> Route | None:
        return classify(method, path)

    def answer(self, route: Route, traceparent: str | None) -> AnswerSink | None:
        return _ResponseAnswer(route, self._events, self._drops, traceparent if route.kind == CREATE else None,
                               self._wall)  # fmt: skip


class _ResponseAnswer:
    """One answer to a routed request, read for the response(s) it carries (see the module docstring)."""

    def __init__(self, route: Route, events: ResponseEvents, drops: Drops, traceparent: str | None,
                 wall: Callable[[], float]) -> None:  # fmt: skip
        self._events = events
        self._drops = drops
        self._traceparent = traceparent
        self._wall = wall
        self._socket = route.kind == SOCKET
        self._id = route.unit_id
        self._terminal = False
        self._added: dict[str, int] = {}  # tool-call item id -> when its `added` event was seen (ns)

    def wants(self, event: str) -> bool:
        return event in LIFECYCLE or event in (ITEM_ADDED, ITEM_DONE)

    def event(self, event: str, data: Mapping[str, Any] | None) -> None:
        if data is None:
            self._drops.dropped(DropReason.PROXY_UNREADABLE)
            return
        if event in LIFECYCLE:
            self._lifecycle(event, data.get("response"))
            return
        item = data.get("item")
        item_id = item.get("id") if isinstance(item, Mapping) else None
        if self._id is None or not isinstance(item_id, str) or not isinstance(item, Mapping):
            return
        if event == ITEM_ADDED:
            item_type = item.get("type")
            if isinstance(item_type, str) and is_tool_call(item_type) and len(self._added) < OPEN_ITEMS_MAX:
                self._added[item_id] = self._now_ns()
        elif (start := self._added.pop(item_id, None)) is not None:
            self._events.tool_timed(self._id, item_id, start, self._now_ns())

    def _now_ns(self) -> int:
        return round(self._wall() * 1e9)

    def body(self, data: object) -> None:
        if isinstance(data, Mapping) and data.get("object") == "response":
            self._report(data, streaming=False)

    def ended(self, complete: bool, stream: bool) -> None:
        if stream and self._id is not None and not self._terminal:
            self._events.stream_ended(self._id)

    def _lifecycle(self, event: str, response: object) -> None:
        if not isinstance(response, Mapping):
            self._drops.dropped(DropReason.PROXY_UNREADABLE)
            return
        if self._socket and event == "response.created" and self._id is not None:
            if not self._terminal:
                self._events.stream_ended(self._id)  # the socket moved on: the last one is read instead
            self._id, self._terminal, self._added = None, False, {}
        if self._report(response, streaming=True) and event in TERMINAL_EVENTS:
            self._terminal = True

    def _report(self, response: Mapping[str, Any], *, streaming: bool) -> bool:
        """Hand over a copy of the answer's response; False (counted) when it names another response."""
        response_id = response.get("id")
        if not isinstance(response_id, str):
            self._drops.dropped(DropReason.PROXY_UNREADABLE)
            return False
        if self._id is None:
            self._id = response_id
        elif response_id != self._id:
            self._drops.dropped(DropReason.PROXY_UNREADABLE)
            return False
        self._events.seen(response, self._traceparent, at=self._wall(), streaming=streaming)
        return True
