"""What the proxy sees of Agents API traffic, handed to session discovery.

With `STEPSCOPE_PROTOCOL=agents` the proxy relays the application's Agents API requests like any others; when the
upstream accepts events the application posts to a session (`POST .../agents/sessions/{id}/events`: a turn starts
or continues), `SessionFeed` tells discovery to follow that session and list its turns at once, as a verified
webhook would. Assistants run routes and streams mean nothing here. Every call only schedules work: nothing here can
slow a proxied request.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any, Protocol

PROXY_EVENT = "proxy.session.events"


class SessionEvents(Protocol):
    """Session discovery as the feed sees it: must not block or raise."""

    def session_event(self, session_id: str, event_type: str) -> None: ...


class SessionFeed:
    """The proxy's `RunFeed` for the Agents protocol."""

    def __init__(self, discovery: SessionEvents) -> None:
        self._discovery = discovery

    def session_active(self, session_id: str) -> None:
        # Deferred to the loop's next turn: following a session writes the store, after the answer went on.
        asyncio.get_running_loop().call_soon(self._discovery.session_event, session_id, PROXY_EVENT)

    def run_created(self, run: Mapping[str, Any], traceparent: str | None) -> None:
        return None

    def stream_event(self, event: str, data: Mapping[str, Any]) -> None:
        return None

    def stream_ended(self, thread_id: str | None, run_id: str | None, complete: bool) -> None:
        return None
