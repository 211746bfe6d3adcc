"""The Responses protocol's factory: what `STEPSCOPE_PROTOCOL=responses` builds.

Units are responses (`UnitRef(CONTAINER, response_id)`), committed once when terminal, with their output items.
OpenAI's Responses API (`OPENAI_BASE_URL=https://api.openai.com/v1`) and Foundry's Agent Service
(`STEPSCOPE_FLAVOR=azure`, `OPENAI_BASE_URL={endpoint}/api/projects/{project}/openai/v1`, Entra ID scope
`https://ai.azure.com/.default`) speak it; neither takes an `api-version`. Responses are found by listing the
project (Foundry), through the proxy (JSON, SSE and WebSocket answers), from verified `response.*` webhooks and
from `/v1/watch` registrations (`{"response_id": "resp_..."}`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from stepscope.config import Config
from stepscope.contract.vocabulary import Flavor
from stepscope.core.discovery import DiscoverySeams, DiscoverySettings
from stepscope.core.poller import Poller, PollSchedule
from stepscope.core.records import NO_DROPS, Committer, Drops, SpanSpec
from stepscope.errors import NotFound, UnknownRoute
from stepscope.mapping.attributes import PROVIDER_OPENAI, MappingOptions
from stepscope.protocols.base import ApiContext, Finders, InvalidRegistration, v1_hint, wrong_base_url
from stepscope.protocols.responses.client import ResponsesClient
from stepscope.protocols.responses.discovery import ResponseDiscovery
from stepscope.protocols.responses.intake import ResponseIntake
from stepscope.protocols.responses.mapping import (
    ResponseContext,
    ResponsesMapper,
    ResponsesOptions,
    response_span,
    tool_spans,
)
from stepscope.protocols.responses.proxied import ResponseObserver
from stepscope.protocols.responses.reader import ResponseReader
from stepscope.protocols.responses.vocabulary import INVALID_KINDS, LABELS, PROTOCOL, PROVIDER_FOUNDRY, Endpoint

PROBE_RESPONSE = "resp_stepscope_credential_check"
"""Fetched once at start: any answer but 401/403 proves the credentials; a 404 naming the response is the expected
one, a 404 for the path itself (`UnknownRoute`) a base URL that does not serve the API."""
RESPONSE_EVENTS = frozenset({"response.completed", "response.failed", "response.cancelled", "response.incomplete"})
"""The webhook event types that make stepscope read the response they name."""
RESPONSE_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")


class ResponsesFactory:
    """Registered as `responses` in `stepscope.protocols`."""

    name = PROTOCOL
    nouns = ("response", "item")
    container = None
    labels = LABELS
    endpoints = tuple(Endpoint)
    invalid_kinds = INVALID_KINDS
    backfills = False

    def check(self, config: Config) -> list[str]:
        problems = []
        if config.poll.threads:
            problems.append("STEPSCOPE_THREADS (poll.threads): only with STEPSCOPE_PROTOCOL=assistants")
        if config.api.foundry_project_id and config.api.flavor != Flavor.AZURE:
            problems.append("STEPSCOPE_FOUNDRY_PROJECT_ID (api.foundry_project_id): only with STEPSCOPE_FLAVOR=azure")
        return problems

    def open(self, context: ApiContext) -> ResponsesInstance:
        return ResponsesInstance(context)


class ResponsesInstance:
    """The Responses protocol reading one API; a `ProtocolInstance`."""

    def __init__(self, context: ApiContext) -> None:
        config = self._config = context.config
        api, connection = config.api, context.connection
        self._drops: Drops = context.drops or NO_DROPS
        self._capture = config.export.capture_content
        self.client = ResponsesClient(connection.http, base_url=api.base_url, auth=connection.auth,
                                      content=self._capture, **context.options)  # fmt: skip
        foundry = api.flavor == Flavor.AZURE
        self.api_name = "Foundry Responses API" if foundry else "Responses API"
        options = MappingOptions(provider_name=PROVIDER_FOUNDRY if foundry else PROVIDER_OPENAI,
                                 capture_content=self._capture)  # fmt: skip
        self.mapper = ResponsesMapper(ResponsesOptions(mapping=options, project_id=api.foundry_project_id))
        self._reader: ResponseReader | None = None

    def reader(self, committer: Committer[Any, Any, Any], schedule: PollSchedule) -> ResponseReader:
        self._reader = ResponseReader(self.client, committer, schedule=schedule)
        return self._reader

    def finders(self, settings: DiscoverySettings, seams: DiscoverySeams) -> Finders:
        assert self._reader is not None, "reader() comes before finders()"
        assert isinstance(seams.tracker, Poller)
        server = self._config.server
        intake = ResponseIntake(seams.tracker, self._reader, seams.store, drops=self._drops, content=self._capture)
        elsewhere = bool(server.proxy_listen or str(server.webhook_secret))
        discovery = ResponseDiscovery(self.client, intake, settings, seams, agents=self._config.poll.agents,
                                      elsewhere=elsewhere)  # fmt: skip

        def webhook(event_type: str, object_id: str | None) -> None:
            if event_type in RESPONSE_EVENTS and object_id is not None and RESPONSE_ID.fullmatch(object_id):
                intake.mentioned(object_id)

        return Finders(
            discovery=discovery,
            proxy=ResponseObserver(intake, drops=self._drops),
            registrations=ResponseRegistrations(intake, seams.tracker),
            webhooks=webhook,
            components=(intake,),
        )

    async def probe(self) -> None:
        try:
            await self.client.get_response(PROBE_RESPONSE)
        except UnknownRoute as exc:
            hint = (
                "for Foundry it is the project endpoint followed by /openai/v1"
                if self._config.api.flavor == Flavor.AZURE
                else v1_hint(self._config.api.base_url, self.api_name)
            )
            raise wrong_base_url(self._config.api.base_url, self.api_name, exc, hint) from exc
        except NotFound:
            return  # the expected answer: the credential was accepted

    async def inspect(self, unit_id: str, container_id: str | None) -> Sequence[SpanSpec]:
        response = await self.client.get_response(unit_id)
        if not response.is_terminal:
            return []
        context = ResponseContext()
        return [response_span(response, context, self.mapper.options), *tool_spans(response, context)]


class ResponseRegistrations:
    """`/v1/watch` for responses: `{"response_id": "resp_..."}` reads that response until it is terminal, for an
    application that knows its response ids but has neither the proxy nor webhooks in front of OpenAI."""

    def __init__(self, intake: ResponseIntake, tracker: Poller[Any]) -> None:
        self._intake = intake
        self._tracker = tracker

    async def watch(self, fields: Mapping[str, str]) -> bool:
        self._intake.mentioned(response_id(fields))
        return True

    async def unwatch(self, fields: Mapping[str, str]) -> None:
        self._tracker.untrack(response_id(fields))


def response_id(fields: Mapping[str, str]) -> str:
    """The `response_id` of a `/v1/watch` body; `InvalidRegistration` with a fixed text otherwise."""
    if set(fields) != {"response_id"}:
        raise InvalidRegistration("only response_id is accepted")
    value = fields["response_id"]
    if not RESPONSE_ID.fullmatch(value):
        raise InvalidRegistration("response_id must look like resp_... (letters, digits, _ and -, at most 128)")
    return value


FACTORY = ResponsesFactory()
