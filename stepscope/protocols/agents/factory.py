"""The Agents API protocol's factory: what `STEPSCOPE_PROTOCOL=agents` builds.

Units are turns (`UnitRef(session_id, turn_id)`; a subagent's turn `UnitRef(f"{session}/{subagent}", turn)`),
committed once with their items and the trace the server published. Sessions are found by listing the project's
sessions (`STEPSCOPE_AGENTS` restricts them to some agents), from verified `agent.session.*` webhooks, and from
events the application posts to a session through the proxy.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from stepscope.config import Config
from stepscope.contract.vocabulary import Flavor
from stepscope.core.discovery import DiscoverySeams, DiscoverySettings
from stepscope.core.poller import PollSchedule
from stepscope.core.records import NO_DROPS, Committer, SpanSpec
from stepscope.errors import ConfigError, NotFound, UnknownRoute
from stepscope.mapping.attributes import MappingOptions
from stepscope.protocols.agents.client import AgentsClient
from stepscope.protocols.agents.discovery import SessionDiscovery
from stepscope.protocols.agents.mapping import AgentsMapper, TurnContext, turn_span
from stepscope.protocols.agents.proxied import SessionObserver
from stepscope.protocols.agents.reader import TurnReader
from stepscope.protocols.agents.vocabulary import INVALID_KINDS, LABELS, PROTOCOL, Endpoint
from stepscope.protocols.base import ApiContext, Finders, v1_hint, wrong_base_url

PROBE_SESSION = "sess_stepscope_credential_check"
"""Fetched once at start: any answer but 401/403 proves the credentials; a 404 naming the session is the expected
one, a 404 for the path itself (`UnknownRoute`) a base URL that does not serve the API."""
SESSION_EVENTS = frozenset(
    {"agent.session.in_progress", "agent.session.idle", "agent.session.failed", "agent.session.action_required"}
)
"""The webhook event types that make discovery look at a session at once."""
SESSION_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")


class AgentsFactory:
    """Registered as `agents` in `stepscope.protocols`."""

    name = PROTOCOL
    nouns = ("turn", "item")
    container = "session"
    labels = LABELS
    endpoints = tuple(Endpoint)
    invalid_kinds = INVALID_KINDS
    backfills = False

    def check(self, config: Config) -> list[str]:
        if config.api.flavor != Flavor.OPENAI:
            return [f"STEPSCOPE_PROTOCOL (api.protocol): agents needs STEPSCOPE_FLAVOR={Flavor.OPENAI}"]
        return []

    def open(self, context: ApiContext) -> AgentsInstance:
        return AgentsInstance(context)


class AgentsInstance:
    """The Agents protocol reading one API; a `ProtocolInstance`."""

    api_name = "Agents API"

    def __init__(self, context: ApiContext) -> None:
        self._config = context.config
        connection = context.connection
        self.client = AgentsClient(connection.http, base_url=self._config.api.base_url, auth=connection.auth,
                                   **context.options)  # fmt: skip
        self.mapper = AgentsMapper(MappingOptions(capture_content=self._config.export.capture_content))
        self._drops = context.drops or NO_DROPS

    def reader(self, committer: Committer[Any, Any, Any], schedule: PollSchedule) -> TurnReader:
        return TurnReader(self.client, committer, schedule=schedule,
                          capture_content=self._config.export.capture_content, drops=self._drops)  # fmt: skip

    def finders(self, settings: DiscoverySettings, seams: DiscoverySeams) -> Finders:
        discovery = SessionDiscovery(self.client, settings, seams, agents=self._config.poll.agents)

        def webhook(event_type: str, object_id: str | None) -> None:
            if event_type in SESSION_EVENTS and object_id is not None and SESSION_ID.fullmatch(object_id):
                discovery.session_event(object_id, event_type)

        return Finders(discovery=discovery, proxy=SessionObserver(discovery), webhooks=webhook)

    async def probe(self) -> None:
        try:
            await self.client.get_session(PROBE_SESSION)
        except UnknownRoute as exc:
            url = self._config.api.base_url
            raise wrong_base_url(url, self.api_name, exc, v1_hint(url, self.api_name)) from exc
        except NotFound:
            return  # the expected answer: the credential was accepted

    async def inspect(self, unit_id: str, container_id: str | None) -> Sequence[SpanSpec]:
        if container_id is None:
            raise ConfigError(["--session: the turn's session id is required for the agents protocol"])
        turn = await self.client.get_turn(container_id, unit_id)
        items = [item async for item in self.client.list_turn_items(container_id, unit_id)]
        if not turn.is_terminal:
            return []
        return [turn_span(turn, TurnContext(items=items), options=self.mapper.options)]


FACTORY = AgentsFactory()
