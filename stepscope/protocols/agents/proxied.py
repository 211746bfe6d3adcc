"""What the proxy shows of Agents API traffic, handed to session discovery.

`SessionObserver` is the protocol's `ProxyObserver`: it routes `POST .../agents/sessions/{id}/events` (a turn starts
or continues there), and when the upstream accepts such a request it tells discovery to follow that session and
list its turns at once, as a verified webhook would. Nothing of the answer's body is read.
"""

from __future__ import annotations

import asyncio
import re
from typing import Protocol
from urllib.parse import unquote

from stepscope.protocols.base import AnswerSink, Route

PROXY_EVENT = "proxy.session.events"
SESSION_EVENTS = "session_events"
_SESSION_EVENTS = re.compile(r"/agents/sessions/([A-Za-z0-9_.~%-]{1,128})/events/?\Z")


class SessionEvents(Protocol):
    """Session discovery as the observer sees it: must not block or raise."""

    def session_event(self, session_id: str, event_type: str) -> None: ...


class SessionObserver:
    """The Agents protocol's `ProxyObserver`."""

    def __init__(self, discovery: SessionEvents) -> None:
        self._discovery = discovery

    def route(self, method: str, path: str) -> Route | None:
        if method != "POST" or "/agents/sessions/" not in path:
            return None
        match = _SESSION_EVENTS.search(path)
        return Route(SESSION_EVENTS, container_id=unquote(match.group(1))) if match else None

    def answer(self, route: Route, traceparent: str | None) -> AnswerSink | None:
        if route.container_id is not None:
            # Deferred to the loop's next turn: following a session writes the store.
            asyncio.get_running_loop().call_soon(self._discovery.session_event, route.container_id, PROXY_EVENT)
        return None
