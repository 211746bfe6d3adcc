"""The Assistants v2 protocol's factory: what `STEPSCOPE_PROTOCOL=assistants` builds.

Units are runs (`UnitRef(thread_id, run_id)`), records are run steps. Runs are found on configured threads
(`STEPSCOPE_THREADS`), threads and runs registered through `/v1/watch`, the project's threads when an Azure project
is given without threads, and runs the application creates through the proxy. Azure AI Foundry Agents (classic)
speak it with `STEPSCOPE_FLAVOR=azure`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from stepscope.config import Config
from stepscope.config.values import RUN_ID, THREAD_ID
from stepscope.contract.vocabulary import Flavor
from stepscope.core.discovery import DiscoverySeams, DiscoverySettings
from stepscope.core.poller import Poller, PollSchedule
from stepscope.core.records import NO_DROPS, Committer, Drops, SpanSpec, UnitRef
from stepscope.errors import ConfigError, InvalidObject, NotFound, SourceError, UnknownRoute
from stepscope.mapping.attributes import PROVIDER_OPENAI, MappingOptions
from stepscope.protocols.assistants.client import AssistantsClient
from stepscope.protocols.assistants.discovery import Discovery
from stepscope.protocols.assistants.mapper import AssistantsMapper
from stepscope.protocols.assistants.proxied import ProxyFeed, RunObserver
from stepscope.protocols.assistants.reader import StepReader
from stepscope.protocols.assistants.spans import run_span, step_spans
from stepscope.protocols.assistants.threads import ThreadLister
from stepscope.protocols.assistants.vocabulary import INVALID_KINDS, LABELS, PROTOCOL, PROVIDER_AZURE, Endpoint
from stepscope.protocols.base import ApiContext, Finders, InvalidRegistration, v1_hint, wrong_base_url

PROBE_ASSISTANT = "asst_stepscope_credential_check"
"""Fetched once at start: any answer but 401/403 proves the credentials; a 404 naming the assistant is the expected
one, a 404 for the path itself (`UnknownRoute`) a base URL that does not serve the API."""
WATCH_FIELDS = frozenset({"thread_id", "run_id"})


class AssistantsFactory:
    """Registered as `assistants` in `stepscope.protocols`."""

    name = PROTOCOL
    nouns = ("run", "step")
    container = "thread"
    labels = LABELS
    endpoints = tuple(Endpoint)
    invalid_kinds = INVALID_KINDS
    backfills = True

    def check(self, config: Config) -> list[str]:
        problems = []
        if config.poll.agents:
            problems.append("STEPSCOPE_AGENTS (poll.agents): only with STEPSCOPE_PROTOCOL=agents or responses")
        return problems

    def open(self, context: ApiContext) -> AssistantsInstance:
        return AssistantsInstance(context)


class AssistantsInstance:
    """The Assistants protocol reading one API; a `ProtocolInstance`."""

    def __init__(self, context: ApiContext) -> None:
        config = self._config = context.config
        api, connection = config.api, context.connection
        self._azure = api.flavor == Flavor.AZURE
        self._drops: Drops = context.drops or NO_DROPS
        self._context = context
        self.client = AssistantsClient(connection.http, base_url=api.base_url, auth=connection.auth,
                                       api_version=api.api_version, flavor=api.flavor, **context.options)  # fmt: skip
        self.api_name = "Azure AI Agents API" if self._azure else "Assistants API"
        provider = PROVIDER_AZURE if self._azure else PROVIDER_OPENAI
        self.mapper = AssistantsMapper(
            MappingOptions(provider_name=provider, capture_content=config.export.capture_content)
        )
        self._reader: StepReader | None = None

    def reader(self, committer: Committer[Any, Any, Any], schedule: PollSchedule) -> StepReader:
        self._reader = StepReader(self.client, committer, self._drops, schedule=schedule)
        return self._reader

    def finders(self, settings: DiscoverySettings, seams: DiscoverySeams) -> Finders:
        config, connection = self._config, self._context.connection
        # Azure can list a project's threads: with none configured, discovery finds them itself.
        lister = None
        if self._azure and not config.poll.threads:
            lister = ThreadLister(connection.http, base_url=config.api.base_url, auth=connection.auth,
                                  api_version=config.api.api_version, **self._context.options)  # fmt: skip
        discovery = Discovery(self.client, settings, seams, threads=config.poll.threads,
                              max_registered=config.server.max_watched, thread_source=lister)  # fmt: skip
        assert self._reader is not None, "reader() comes before finders()"
        assert isinstance(seams.tracker, Poller)
        feed = ProxyFeed(seams.tracker, self._reader, drops=self._drops)
        return Finders(
            discovery=discovery,
            proxy=RunObserver(feed, drops=self._drops),
            registrations=ThreadRegistrations(discovery),
            components=(feed,),
            backfill=discovery.backfill,
        )

    async def probe(self) -> None:
        try:
            await self.client.get_assistant(PROBE_ASSISTANT)
        except UnknownRoute as exc:
            hint = (
                "the base URL is the project endpoint, https://<resource>.services.ai.azure.com/api/projects/<project>"
                if self._azure
                else v1_hint(self._config.api.base_url, self.api_name)
            )
            raise wrong_base_url(self._config.api.base_url, self.api_name, exc, hint) from exc
        except NotFound:
            return  # the expected answer: the credential was accepted

    async def inspect(self, unit_id: str, container_id: str | None) -> Sequence[SpanSpec]:
        if container_id is None:
            raise ConfigError(["--thread: the run's thread id is required for the assistants protocol"])
        run = await self.client.get_run(UnitRef(container_id, unit_id))
        steps = [step async for step in self.client.list_steps(run.ref)]
        try:
            name = (await self.client.get_assistant(run.assistant_id)).name
        except (SourceError, InvalidObject):
            name = None
        options = self.mapper.options
        spans = [run_span(run, assistant_name=name, options=options, partial=True)]
        for step in steps:
            spans.extend(step_spans(run, step, options=options))
        return spans


class ThreadRegistrations:
    """`/v1/watch` for Assistants: `{"thread_id": "thread_...", "run_id": "run_..."}`, the run optional."""

    def __init__(self, discovery: Discovery) -> None:
        self._discovery = discovery

    async def watch(self, fields: Mapping[str, str]) -> bool:
        return await self._discovery.watch(*thread_fields(fields))

    async def unwatch(self, fields: Mapping[str, str]) -> None:
        await self._discovery.unwatch(*thread_fields(fields))


def thread_fields(fields: Mapping[str, str]) -> tuple[str, str | None]:
    """`(thread_id, run_id or None)` of a `/v1/watch` body; `InvalidRegistration` with a fixed text otherwise."""
    if not WATCH_FIELDS.issuperset(fields):
        raise InvalidRegistration("unknown field: only thread_id and run_id are accepted")
    thread_id, run_id = fields.get("thread_id"), fields.get("run_id")
    if thread_id is None or not THREAD_ID.fullmatch(thread_id):
        raise InvalidRegistration("thread_id must look like thread_... (letters, digits, _ and -, at most 64)")
    if run_id is not None and not RUN_ID.fullmatch(run_id):
        raise InvalidRegistration("run_id must look like run_... (letters, digits, _ and -, at most 64)")
    return thread_id, run_id


FACTORY = AssistantsFactory()
