"""Endpoint logic of the simulated Agents API (read side): lookups, cursor pages and response bodies.

Every list takes `after` (an exclusive cursor), `limit` (1..100, default 20) and `order` (`asc`|`desc`, default
`desc`), and answers `{object: "list", data, first_id, last_id, has_more}`. The SDK pages `CursorPage` lists with
`after=<last object's id>` and turn items (`ConversationCursorPage`) with `after=<last_id>`; the two agree except
for an item without an id (a legacy user message), whose `last_id` is an opaque cursor. Unknown ids are 404s,
a cursor that is not in the list is a 400.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from stepscope.simulator.agents import serializers as ser
from stepscope.simulator.agents.engine import AgentsEngine
from stepscope.simulator.agents.otlp import build_trace
from stepscope.simulator.agents.state import SimItem, SimSession, SimSubagent, SimTurn
from stepscope.simulator.handlers import ApiError, Reply, Request
from stepscope.simulator.state import page_window

_MAX_METADATA_FILTERS = 16


class AgentsHandlers:
    """One method per endpoint; the app routes to them by name."""

    def __init__(self, engine: AgentsEngine) -> None:
        self.engine = engine

    # --- lookups ------------------------------------------------------------------------------------------------

    def _session(self, req: Request) -> SimSession:
        sid = req.ids["session_id"]
        session = self.engine.sessions.get(sid)
        if session is None or session.created > req.t:
            raise ApiError(404, f"No session found with id '{sid}'.", param="session_id")
        return session

    def _turn(self, req: Request, turns: list[SimTurn]) -> SimTurn:
        tid = req.ids["turn_id"]
        turn = next((x for x in turns if x.id == tid and x.created <= req.t), None)
        if turn is None:
            raise ApiError(404, f"No turn found with id '{tid}'.", param="turn_id")
        return turn

    def _subagent(self, req: Request, session: SimSession) -> SimSubagent:
        said = req.ids["subagent_id"]
        i = session.subagent_pos.get(said)
        if i is None or session.subagents[i].opened > req.t:
            raise ApiError(404, f"No subagent found with id '{said}'.", param="subagent_id")
        return session.subagents[i]

    @staticmethod
    def _paging(req: Request) -> tuple[int, bool]:
        try:
            limit = int(req.query.get("limit", "20"))
        except ValueError:
            raise ApiError(400, "Invalid 'limit': expected an integer.", param="limit") from None
        if not 1 <= limit <= 100:
            raise ApiError(400, f"Invalid 'limit': expected 1..100, got {limit}.", param="limit",
                           code="integer_out_of_range")  # fmt: skip
        order = req.query.get("order", "desc")
        if order not in ("asc", "desc"):
            raise ApiError(400, f"Invalid 'order': expected 'asc' or 'desc', got '{order}'.", param="order")
        return limit, order == "desc"

    def _page(self, req: Request, keys: list[str], render: Callable[[int], dict[str, Any]], *,
              conversation: bool = False) -> Reply:  # fmt: skip
        """One page over objects stored in ascending order; `keys[i]` is the cursor of object `i`."""
        limit, desc = self._paging(req)
        after = req.query.get("after")
        pos: int | None = None
        if after is not None:
            try:
                pos = keys.index(after)
            except ValueError:
                raise ApiError(400, f"Invalid 'after': no object with id '{after}' in this list.",
                               param="after") from None  # fmt: skip
        window, more = page_window(len(keys), limit, desc, pos, None)
        data = [render(i) for i in window]
        last = keys[window[-1]] if conversation and window else None
        return Reply(ser.page(data, more, last_id=last))

    # --- sessions -----------------------------------------------------------------------------------------------

    def list_agent_sessions(self, req: Request) -> Reply:
        wanted = {k[9:-1]: v for k, v in req.query.items() if k.startswith("metadata[") and k.endswith("]")}
        if len(wanted) > _MAX_METADATA_FILTERS:
            raise ApiError(400, "Invalid 'metadata': at most 16 pairs.", param="metadata")
        agent_id = req.query.get("agent_id")
        sessions = [
            s for s in self.engine.order
            if s.created <= req.t
            and (agent_id is None or s.agent["id"] == agent_id)
            and all(s.metadata.get(k) == v for k, v in wanted.items())
        ]  # fmt: skip
        return self._page(req, [s.id for s in sessions], lambda i: ser.session_dict(sessions[i], req.t))

    def get_agent_session(self, req: Request) -> Reply:
        return Reply(ser.session_dict(self._session(req), req.t))

    def list_agent_session_items(self, req: Request) -> Reply:
        session = self._session(req)
        items = _items(session.turns[: session.visible_turns(req.t)], req.t)
        return self._page(req, [i.cursor for i in items], lambda k: ser.item_dict(items[k], req.t))

    def list_agent_traces(self, req: Request) -> Reply:
        session = self._session(req)
        turns = [turn for turn in session.turns if turn.publish_at <= req.t]
        return self._page(req, [turn.id for turn in turns], lambda i: ser.trace_dict(turns[i], self._otlp(turns[i])))

    def _otlp(self, turn: SimTurn) -> dict[str, Any]:
        if turn.otlp is None:
            turn.otlp = build_trace(turn, self.engine.seed)
        return turn.otlp

    # --- turns --------------------------------------------------------------------------------------------------

    def list_agent_turns(self, req: Request) -> Reply:
        session = self._session(req)
        turns = session.turns[: session.visible_turns(req.t)]
        return self._page(req, [x.id for x in turns], lambda i: ser.turn_dict(turns[i], req.t))

    def get_agent_turn(self, req: Request) -> Reply:
        return Reply(ser.turn_dict(self._turn(req, self._session(req).turns), req.t))

    def list_agent_turn_items(self, req: Request) -> Reply:
        turn = self._turn(req, self._session(req).turns)
        items = _items([turn], req.t)
        return self._page(req, [i.cursor for i in items], lambda k: ser.item_dict(items[k], req.t), conversation=True)

    # --- subagents ----------------------------------------------------------------------------------------------

    def list_agent_subagents(self, req: Request) -> Reply:
        subs = self._session(req).visible_subagents(req.t)
        return self._page(req, [s.id for s in subs], lambda i: ser.subagent_dict(subs[i], req.t))

    def get_agent_subagent(self, req: Request) -> Reply:
        session = self._session(req)
        return Reply(ser.subagent_dict(self._subagent(req, session), req.t))

    def list_agent_subagent_turns(self, req: Request) -> Reply:
        sub = self._subagent(req, self._session(req))
        turns = [x for x in sub.turns if x.created <= req.t]
        return self._page(req, [x.id for x in turns], lambda i: ser.turn_dict(turns[i], req.t))

    def get_agent_subagent_turn(self, req: Request) -> Reply:
        sub = self._subagent(req, self._session(req))
        return Reply(ser.turn_dict(self._turn(req, sub.turns), req.t))

    def list_agent_subagent_turn_items(self, req: Request) -> Reply:
        sub = self._subagent(req, self._session(req))
        items = _items([self._turn(req, sub.turns)], req.t)
        return self._page(req, [i.cursor for i in items], lambda k: ser.item_dict(items[k], req.t))

    def list_agent_subagent_items(self, req: Request) -> Reply:
        sub = self._subagent(req, self._session(req))
        items = _items([x for x in sub.turns if x.created <= req.t], req.t)
        return self._page(req, [i.cursor for i in items], lambda k: ser.item_dict(items[k], req.t))


def _items(turns: list[SimTurn], t: float) -> list[SimItem]:
    """The items of `turns` that exist at `t`, in turn order then creation order."""
    return [item for turn in turns for item in turn.items[: turn.visible_items(t)]]
