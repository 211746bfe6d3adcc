"""Endpoint logic of the simulated Responses API: validation, state changes, lookups and cursor pages.

Lists take `limit` (1..100, default 20), `order` (`asc`|`desc`, default `desc`), `after` and `before` (ids of
objects in the list, exclusive; a cursor that is not in the list is a 400) and answer `{object: "list", data,
first_id, last_id, has_more}`. Unknown or deleted ids are 404s; a response stored with `store: false` cannot be
read back. Cancelling a response that was not created in the background is a 400; cancelling a terminal one
returns it unchanged. `GET /responses/{id}?stream=true` replays and follows the events of a background response
(`starting_after=N` skips those numbered up to N); for other responses it is a 404, as the service answers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from stepscope.simulator.handlers import ApiError
from stepscope.simulator.responses import serializers as ser
from stepscope.simulator.responses.engine import ResponsesEngine
from stepscope.simulator.responses.params import metadata_param, parse_create, type_error
from stepscope.simulator.responses.state import SimConversation, SimItem, SimResponse
from stepscope.simulator.serializers import dumps
from stepscope.simulator.state import page_window

_MAX_CONVERSATION_ITEMS = 20


@dataclass(slots=True)
class Call:
    """One parsed request: path ids, query (last value wins), JSON body and the simulated time it arrived."""

    ids: dict[str, str]
    query: dict[str, str]
    body: dict[str, Any]
    t: float


@dataclass(slots=True)
class Answer:
    """A JSON `obj`, or a response to answer with: as an event `stream` (events numbered above `after`) or as
    JSON once it is terminal (`wait`)."""

    obj: Any = None
    stream: SimResponse | None = None
    after: int = -1
    wait: SimResponse | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def error_body(err: ApiError) -> bytes:
    """The API's error body for `err`: `{"error": {"message", "type", "param", "code"}}`."""
    return dumps({"error": {"message": err.message, "type": err.type, "param": err.param, "code": err.code}})


def _paging(query: dict[str, str]) -> tuple[int, bool]:
    try:
        limit = int(query.get("limit", "20"))
    except ValueError:
        raise ApiError(400, "Invalid 'limit': expected an integer.", param="limit", code="invalid_type") from None
    if not 1 <= limit <= 100:
        raise ApiError(400, f"Invalid 'limit': integer {'below minimum' if limit < 1 else 'above maximum'} value. "
                       f"Expected a value between 1 and 100, but got {limit} instead.", param="limit",
                       code="integer_below_min_value" if limit < 1 else "integer_above_max_value")  # fmt: skip
    order = query.get("order", "desc")
    if order not in ("asc", "desc"):
        raise ApiError(400, f"Invalid value: '{order}'. Supported values are: 'asc' and 'desc'.", param="order",
                       code="invalid_value")  # fmt: skip
    return limit, order == "desc"


def page(call: Call, keys: Sequence[str], render: Callable[[int], dict[str, Any]]) -> dict[str, Any]:
    """One page over objects stored oldest first; `keys[i]` is the id (cursor) of object `i`."""
    limit, desc = _paging(call.query)
    positions: dict[str, int | None] = {}
    for name in ("after", "before"):
        cursor = call.query.get(name)
        positions[name] = None
        if cursor is not None:
            try:
                positions[name] = keys.index(cursor)
            except ValueError:
                raise ApiError(400, f"Invalid '{name}': no object with id '{cursor}' in this list.",
                               param=name) from None  # fmt: skip
    window, more = page_window(len(keys), limit, desc, positions["after"], positions["before"])
    return ser.page([render(i) for i in window], more)


def _is_agent(ref: dict[str, Any] | None, name: str | None, agent_id: str | None) -> bool:
    """Whether an `agent_reference` passes Foundry's `agent_name` and `agent_id` ("name:version") filters."""
    if name is None and agent_id is None:
        return True
    if ref is None:
        return False
    return (name is None or ref["name"] == name) and (agent_id is None or f"{ref['name']}:{ref['version']}" == agent_id)


class ResponsesHandlers:
    """One method per endpoint; the app routes to them by name."""

    def __init__(self, engine: ResponsesEngine) -> None:
        self.engine = engine
        self.azure = engine.azure

    # --- lookups ------------------------------------------------------------------------------------------------

    def _response(self, call: Call) -> SimResponse:
        rid = call.ids["response_id"]
        resp = self.engine.stored(rid, call.t)
        if resp is None:
            raise ApiError(404, f"Response with id '{rid}' not found.", param="response_id")
        return resp

    def _conversation(self, cid: str, t: float, param: str = "conversation_id") -> SimConversation:
        conv = self.engine.conversations.get(cid)
        if conv is None or conv.created > t:
            raise ApiError(404, f"Conversation with id '{cid}' not found.", param=param)
        return conv

    def _dict(self, resp: SimResponse, t: float) -> dict[str, Any]:
        return ser.response_dict(resp, t, azure=self.azure)

    # --- responses ----------------------------------------------------------------------------------------------

    def create_response(self, call: Call, *, websocket: bool = False) -> Answer:
        params = parse_create(call.body, azure=self.azure, websocket=websocket)
        if params.conversation_id is not None:
            self._conversation(params.conversation_id, call.t, "conversation")
        if params.previous_response_id is not None and self.engine.stored(params.previous_response_id,
                                                                          call.t) is None:  # fmt: skip
            raise ApiError(400, f"Previous response with id '{params.previous_response_id}' not found.",
                           param="previous_response_id", code="previous_response_not_found")  # fmt: skip
        if params.agent is not None and params.agent["name"] not in {a["name"] for a in self.engine.agents}:
            raise ApiError(404, f"Agent '{params.agent['name']}' not found.", param="agent_reference.name")
        resp = self.engine.create_response(call.t, params)
        if params.stream or websocket:
            return Answer(stream=resp, extra={"stream_id": params.stream_id} if params.stream_id else {})
        if params.background:
            return Answer(self._dict(resp, call.t))
        return Answer(wait=resp)

    def get_response(self, call: Call) -> Answer:
        resp = self._response(call)
        if call.query.get("stream") != "true":
            return Answer(self._dict(resp, call.t))
        if not resp.background:
            raise ApiError(404, f"Response with id '{resp.id}' not found.", param="response_id")
        try:
            after = int(call.query.get("starting_after", "-1"))
        except ValueError:
            raise ApiError(400, "Invalid 'starting_after': expected an integer.", param="starting_after",
                           code="invalid_type") from None  # fmt: skip
        return Answer(stream=resp, after=after)

    def delete_response(self, call: Call) -> Answer:
        resp = self._response(call)
        self.engine.delete(resp, call.t)
        return Answer(ser.deleted_dict(resp.id))

    def cancel_response(self, call: Call) -> Answer:
        resp = self._response(call)
        if not resp.background:
            raise ApiError(400, "Only responses created with background=true can be cancelled.",
                           param="response_id")  # fmt: skip
        if not resp.terminal_at(call.t):
            self.engine.cancel(resp, call.t)
        return Answer(self._dict(resp, call.t))

    def list_input_items(self, call: Call) -> Answer:
        resp = self._response(call)
        items = resp.input_items
        return Answer(page(call, [i["id"] for i in items],
                           lambda k: ser.stored_item_dict(items[k], resp, azure=self.azure)))  # fmt: skip

    def list_responses(self, call: Call) -> Answer:
        """Foundry's listing of stored responses, filtered by agent name, `name:version` and conversation."""
        q = call.query
        name, agent_id, conv = q.get("agent_name"), q.get("agent_id"), q.get("conversation_id")
        found = [r for r in self.engine.order if r.exists_at(call.t) and _is_agent(r.agent, name, agent_id)
                 and (conv is None or r.conversation_id == conv)]  # fmt: skip
        return Answer(page(call, [r.id for r in found], lambda i: self._dict(found[i], call.t)))

    # --- conversations ------------------------------------------------------------------------------------------

    def create_conversation(self, call: Call) -> Answer:
        body = call.body
        unknown = set(body) - {"items", "metadata"}
        if unknown:
            name = sorted(unknown)[0]
            raise ApiError(400, f"Unknown parameter: '{name}'.", param=name, code="unknown_parameter")
        items = body.get("items") or []
        if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
            raise type_error("items", "an array of input items", items)
        if len(items) > _MAX_CONVERSATION_ITEMS:
            raise ApiError(400, f"Invalid 'items': array too long. Expected an array with maximum length 20, but "
                           f"got an array with length {len(items)} instead.", param="items",
                           code="array_above_max_length")  # fmt: skip
        conv = self.engine.create_conversation(call.t, items=items, metadata=metadata_param(body.get("metadata")))
        return Answer(ser.conversation_dict(conv))

    def get_conversation(self, call: Call) -> Answer:
        return Answer(ser.conversation_dict(self._conversation(call.ids["conversation_id"], call.t)))

    def _items(self, call: Call) -> list[tuple[dict[str, Any] | SimItem, SimResponse | None]]:
        conv = self._conversation(call.ids["conversation_id"], call.t)
        return conv.items_at(call.t)

    def list_conversation_items(self, call: Call) -> Answer:
        items = self._items(call)
        kind = call.query.get("item_type") if self.azure else None
        if kind is not None:
            items = [(e, r) for e, r in items if (e.type if isinstance(e, SimItem) else e.get("type")) == kind]
        keys = [e.id if isinstance(e, SimItem) else str(e["id"]) for e, _ in items]
        return Answer(page(call, keys, lambda k: ser.stored_item_dict(*items[k], azure=self.azure)))

    def get_conversation_item(self, call: Call) -> Answer:
        wanted = call.ids["item_id"]
        for entry, resp in self._items(call):
            if (entry.id if isinstance(entry, SimItem) else entry.get("id")) == wanted:
                return Answer(ser.stored_item_dict(entry, resp, azure=self.azure))
        raise ApiError(404, f"Item with id '{wanted}' not found.", param="item_id")

    def list_conversations(self, call: Call) -> Answer:
        """Foundry's listing of conversations, filtered by the agents whose responses are in them."""
        q = call.query
        name, agent_id = q.get("agent_name"), q.get("agent_id")

        def matches(conv: SimConversation) -> bool:
            if name is None and agent_id is None:
                return True
            return any(_is_agent(r.agent, name, agent_id) for r in conv.responses if r.created <= call.t)

        convs = [c for c in self.engine.conversation_order if c.created <= call.t and matches(c)]
        return Answer(page(call, [c.id for c in convs], lambda i: ser.conversation_dict(convs[i])))
