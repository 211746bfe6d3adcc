"""`AgentsClient`: the OpenAI Agents API (beta) read through the shared request core.

Same discipline as the Assistants client (`stepscope.client.core.RequestCore`): auth, `OpenAI-Beta: agents=v1`,
retries, the client-wide retry-after, the request budget, the body cap, the deadline, the page cap and repeated
cursors, invalid objects counted and skipped in listings (`InvalidObject` for a single GET). Errors carry the
session id as `thread_id` and the turn id as `run_id` (`SourceError` has no fields of their own for them).

Paging: sessions, turns, traces and subagents follow `after=<last item id>` (the SDK's `CursorPage`); turn items
follow `after=<body last_id>` (`ConversationCursorPage`: "the previous response's last_id, which can differ from the
last item's ID"). Page sizes are clamped to the API's 1..100.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from functools import partial
from typing import Unpack

import httpx

from stepscope.client.auth import Auth
from stepscope.client.core import CoreOptions, RequestCore, clamp, seg
from stepscope.client.parsing import parse_page
from stepscope.protocols.agents.parsers import (
    parse_item,
    parse_session,
    parse_subagent,
    parse_trace,
    parse_turn,
)
from stepscope.protocols.agents.records import AgentSession, Item, SessionTrace, Subagent, Turn
from stepscope.protocols.agents.vocabulary import Endpoint

BETA = "agents=v1"
AGENTS_ENDPOINTS = tuple(Endpoint)
"""Values of the `endpoint` argument this client passes to `RequestObserver.observe_request`."""

_SESSION_PAGE = partial(parse_page, kind="agent_session", parse=parse_session)
_TURN_PAGE = partial(parse_page, kind="agent_turn", parse=parse_turn)
_TRACE_PAGE = partial(parse_page, kind="agent_trace", parse=parse_trace)
_SUBAGENT_PAGE = partial(parse_page, kind="agent_subagent", parse=parse_subagent)


class AgentsClient:
    """Reads agent sessions, their turns, turn items, published traces and agents.

    Constructor arguments mean what they mean for `AssistantsClient` (there is no Azure flavour here). List
    methods page lazily: the caller may stop early.
    """

    def __init__(self, http: httpx.AsyncClient, *, base_url: str, auth: Auth, **options: Unpack[CoreOptions]) -> None:
        self._core = RequestCore(http, base_url=base_url, auth=auth, beta=BETA, **options)

    def __repr__(self) -> str:
        return f"AgentsClient(base_url={self._core.shown_url!r}, auth={self._core.auth!r})"

    async def list_sessions(
        self, *, agent_id: str | None = None, after: str | None = None, limit: int = 100
    ) -> AsyncIterator[AgentSession]:
        """Sessions, newest first (`order=desc`), optionally of one root agent, starting after session `after`."""
        params: dict[str, str | int] = {"limit": clamp(limit), "order": "desc"}
        if agent_id:
            params["agent_id"] = agent_id
        if after:
            params["after"] = after
        async for session in self._core.paginate(Endpoint.LIST_SESSIONS, "agents/sessions", params, _SESSION_PAGE):
            yield session

    async def get_session(self, session_id: str) -> AgentSession:
        body = await self._core.get(
            Endpoint.GET_SESSION, f"agents/sessions/{seg(session_id)}", {}, thread_id=session_id
        )
        return self._core.parse_one(parse_session, body)

    async def list_turns(self, session_id: str, *, after: str | None = None, limit: int = 100) -> AsyncIterator[Turn]:
        """Turns of a session, oldest first (`order=asc`, by creation time and turn id), after turn `after`."""
        params = _ascending(limit, after)
        path = f"agents/sessions/{seg(session_id)}/turns"
        async for turn in self._core.paginate(Endpoint.LIST_TURNS, path, params, _TURN_PAGE, thread_id=session_id):
            yield turn

    async def get_turn(self, session_id: str, turn_id: str) -> Turn:
        path = f"agents/sessions/{seg(session_id)}/turns/{seg(turn_id)}"
        body = await self._core.get(Endpoint.GET_TURN, path, {}, thread_id=session_id, run_id=turn_id)
        return self._core.parse_one(parse_turn, body)

    async def list_turn_items(
        self, session_id: str, turn_id: str, *, after: str | None = None, limit: int = 100, content: bool = False
    ) -> AsyncIterator[Item]:
        """Items of a turn in order (`order=asc`), paging with the body's `last_id`; content only with `content`."""
        params = _ascending(limit, after)
        path = f"agents/sessions/{seg(session_id)}/turns/{seg(turn_id)}/items"
        parse = partial(parse_page, kind="agent_item", parse=partial(parse_item, content=content), body_cursor=True)
        async for item in self._core.paginate(
            Endpoint.LIST_TURN_ITEMS, path, params, parse, thread_id=session_id, run_id=turn_id
        ):
            yield item

    async def list_traces(
        self, session_id: str, *, after: str | None = None, limit: int = 100, newest_first: bool = False
    ) -> AsyncIterator[SessionTrace]:
        """Published root-turn traces of a session, oldest first (or newest first); each trace's id is its root
        turn's id."""
        params = _ascending(limit, after)
        if newest_first:
            params["order"] = "desc"
        path = f"agents/sessions/{seg(session_id)}/traces"
        async for trace in self._core.paginate(Endpoint.LIST_TRACES, path, params, _TRACE_PAGE, thread_id=session_id):
            yield trace

    async def list_subagents(self, session_id: str, *, limit: int = 100) -> AsyncIterator[Subagent]:
        """Subagents of a session, oldest first."""
        params = _ascending(limit, None)
        path = f"agents/sessions/{seg(session_id)}/subagents"
        async for sub in self._core.paginate(
            Endpoint.LIST_SUBAGENTS, path, params, _SUBAGENT_PAGE, thread_id=session_id
        ):
            yield sub

    async def list_subagent_turns(
        self, session_id: str, subagent_id: str, *, after: str | None = None, limit: int = 100
    ) -> AsyncIterator[Turn]:
        """Turns a subagent ran, oldest first, after turn `after`."""
        params = _ascending(limit, after)
        path = f"agents/sessions/{seg(session_id)}/subagents/{seg(subagent_id)}/turns"
        async for turn in self._core.paginate(
            Endpoint.LIST_SUBAGENT_TURNS, path, params, _TURN_PAGE, thread_id=session_id
        ):
            yield turn

    async def get_subagent_turn(self, session_id: str, subagent_id: str, turn_id: str) -> Turn:
        path = f"agents/sessions/{seg(session_id)}/subagents/{seg(subagent_id)}/turns/{seg(turn_id)}"
        body = await self._core.get(Endpoint.GET_SUBAGENT_TURN, path, {}, thread_id=session_id, run_id=turn_id)
        return self._core.parse_one(parse_turn, body)

    async def list_subagent_turn_items(
        self,
        session_id: str,
        subagent_id: str,
        turn_id: str,
        *,
        after: str | None = None,
        limit: int = 100,
        content: bool = False,
    ) -> AsyncIterator[Item]:
        """Items of a subagent's turn in order, paging after the last item's id."""
        params = _ascending(limit, after)
        path = f"agents/sessions/{seg(session_id)}/subagents/{seg(subagent_id)}/turns/{seg(turn_id)}/items"
        parse = partial(parse_page, kind="agent_item", parse=partial(parse_item, content=content), body_cursor=True)
        async for item in self._core.paginate(
            Endpoint.LIST_SUBAGENT_TURN_ITEMS, path, params, parse, thread_id=session_id, run_id=turn_id
        ):
            yield item


def _ascending(limit: int, after: str | None) -> dict[str, str | int]:
    params: dict[str, str | int] = {"limit": clamp(limit), "order": "asc"}
    if after:
        params["after"] = after
    return params
