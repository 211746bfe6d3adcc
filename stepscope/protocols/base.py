"""The contract of a protocol: one factory, registered by name, that builds what the engine needs to read one API.

The engine never names a protocol. It asks the registry (`stepscope.protocols.get(name)`) for a `ProtocolFactory`,
checks the configuration with it, and `open`s one `ProtocolInstance` per process on the shared HTTP connection.
The instance provides, in the order the engine wires them:

1. `mapper`: pure mapping of the protocol's records to telemetry (the pipeline is built with it);
2. `reader(committer, schedule)`: the `UnitReader` that polls one unit and commits what became terminal (the
   poller is built with it);
3. `finders(settings, seams)`: how units are found once the poller exists, as `Finders`: a discovery (a
   component), and optionally what it makes of traffic through the proxy, `/v1/watch` registrations and verified
   webhook events, plus components of its own;
4. `probe()` for the start-up credential check (`wrong_base_url` words its error for a base URL that does not
   serve the protocol), `inspect()` for `stepscope inspect`.

Everything crossing this seam is typed here or in `stepscope.core.records`; the receivers (HTTP surface, proxy)
and the commands use these types and nothing of a protocol's package.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from stepscope.client.connect import ApiConnection
from stepscope.client.core import CoreOptions
from stepscope.config import Config
from stepscope.config.values import redact_url
from stepscope.core.discovery import DiscoverySeams, DiscoverySettings
from stepscope.core.lifecycle import Component
from stepscope.core.poller import PollSchedule
from stepscope.core.records import Committer, Drops, KnownLabels, Mapper, SpanSpec, UnitReader
from stepscope.errors import ConfigError, StepscopeError, UnknownRoute


class RegistrationFull(StepscopeError):
    """A `/v1/watch` registration refused: `limit` registrations exist already (counted as `watch_limit`)."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"{limit} registrations, the maximum (STEPSCOPE_MAX_WATCHED)")
        self.limit = limit


class InvalidRegistration(ValueError):
    """A `/v1/watch` body whose fields register nothing; the message is a fixed text, never the input."""


class Discovery(Component, Protocol):
    """A protocol's discovery as the engine sees it: a component that finds units and hands them to the poller."""

    @property
    def last_pass(self) -> float | None:
        """Wall-clock time of the last finished pass, None before the first."""
        ...

    def watched(self) -> list[str]:
        """The containers (threads, sessions, ...) this replica watches now."""
        ...

    def idle_reason(self) -> str | None:
        """None while discovery can find units; else what to configure so that it can (one sentence)."""
        ...


class Registrations(Protocol):
    """`/v1/watch` for this protocol: `fields` are a flat JSON object of strings from the request body."""

    async def watch(self, fields: Mapping[str, str]) -> bool:
        """Register what `fields` name; False when another shard owns it. Raises `InvalidRegistration`,
        `RegistrationFull` or `StoreError`."""
        ...

    async def unwatch(self, fields: Mapping[str, str]) -> None:
        """Drop a registration (and stop tracking a unit it names). Raises `InvalidRegistration` or `StoreError`."""
        ...


@dataclass(frozen=True, slots=True)
class Route:
    """A proxied request whose answer a protocol wants to see: the protocol's name for it, and the ids its path
    names (None when the path names none)."""

    kind: str
    container_id: str | None = None
    unit_id: str | None = None


class AnswerSink(Protocol):
    """Receives one proxied answer as the proxy's observation task decodes it, after its bytes went on to the
    application: never on the relay path. Implementations must not block or raise (the proxy counts and logs what
    they raise, and goes on)."""

    def wants(self, event: str) -> bool:
        """Whether a streamed event (SSE `event:` name or a WebSocket message's `type`) is worth parsing."""
        ...

    def event(self, event: str, data: Mapping[str, Any] | None) -> None:
        """One wanted event, with its data when it is a JSON object (None otherwise)."""
        ...

    def body(self, data: object) -> None:
        """The whole JSON body of a non-streamed answer."""
        ...

    def ended(self, complete: bool, stream: bool) -> None:
        """The answer ended: `complete` when every byte arrived and went on to the application; `stream` when it was
        a stream of events (SSE or WebSocket) rather than one JSON body."""
        ...


class ProxyObserver(Protocol):
    """What a protocol makes of the traffic the proxy relays."""

    def route(self, method: str, path: str) -> Route | None:
        """The route of a request whose answer is worth seeing, else None. Called on the relay path: must be a
        cheap look at the method and path, nothing more."""
        ...

    def answer(self, route: Route, traceparent: str | None) -> AnswerSink | None:
        """A sink for the 2xx answer to a routed request; `traceparent` is the request's valid W3C header."""
        ...


WebhookHandler = Callable[[str, str | None], None]
"""Told of each verified, first-seen webhook delivery as `(event type, data.id)`; must not block or raise."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Finders:
    """How a protocol finds units of work, built once the poller exists."""

    discovery: Discovery
    proxy: ProxyObserver | None = None
    registrations: Registrations | None = None
    webhooks: WebhookHandler | None = None
    components: Sequence[Component] = ()
    backfill: Callable[[Sequence[str]], Awaitable[int]] | None = None
    """`stepscope backfill`: track every finished unit of these containers within the lookback; returns how many."""


class ProtocolInstance(Protocol):
    """One protocol reading one API, for one process; see the module docstring for the order of the calls."""

    @property
    def api_name(self) -> str:
        """The API's name for log lines ("Assistants API")."""
        ...

    @property
    def mapper(self) -> Mapper[Any, Any, Any]: ...

    def reader(self, committer: Committer[Any, Any, Any], schedule: PollSchedule) -> UnitReader[Any]: ...

    def finders(self, settings: DiscoverySettings, seams: DiscoverySeams) -> Finders: ...

    async def probe(self) -> None:
        """One cheap authenticated request: raises `AuthError` when the credential is refused, `ConfigError`
        (`wrong_base_url`) when the base URL does not serve the protocol, another `SourceError` when the API cannot
        say; returns when the credential was accepted (a 404 for the made-up object it asks for is that answer)."""
        ...

    async def inspect(self, unit_id: str, container_id: str | None) -> Sequence[SpanSpec]:
        """The spans of one unit as they are now (a unit still going gives its spans so far). Raises `SourceError`,
        `InvalidObject`, or `ConfigError` when the protocol needs a container id and none was given."""
        ...


@dataclass(frozen=True, slots=True, kw_only=True)
class ApiContext:
    """What a protocol is opened with: the configuration, the shared connection (pool and credential), the request
    options every client on it shares (observer, stop event, bounds), and where drops are counted."""

    config: Config
    connection: ApiConnection
    options: CoreOptions = field(default_factory=CoreOptions)
    drops: Drops | None = None


class ProtocolFactory(Protocol):
    """A protocol as registered in `stepscope.protocols`. Stateless: `open` builds one instance per process."""

    @property
    def name(self) -> str:
        """`STEPSCOPE_PROTOCOL`'s value and the `protocol` label of the domain metrics."""
        ...

    @property
    def nouns(self) -> tuple[str, str]:
        """What its units and records are called in views and logs: `("run", "step")`, `("turn", "item")`."""
        ...

    @property
    def container(self) -> str | None:
        """What a unit's container is called where a command must be told it (`stepscope inspect --thread`):
        `thread`, `session`; None when a unit is read by its id alone."""
        ...

    @property
    def labels(self) -> KnownLabels:
        """The protocol's known label values, fan-outs and start-up series (see `KnownLabels`)."""
        ...

    @property
    def endpoints(self) -> tuple[str, ...]:
        """The `endpoint` label values of the requests its clients make (series created at start-up)."""
        ...

    @property
    def invalid_kinds(self) -> tuple[str, ...]:
        """The `kind` label values of objects its parsers reject (series created at start-up)."""
        ...

    @property
    def backfills(self) -> bool:
        """Whether `Finders.backfill` exists, so `stepscope backfill` can refuse before starting anything."""
        ...

    def check(self, config: Config) -> list[str]:
        """Problems of `config` for this protocol, each naming its setting; empty when it is usable."""
        ...

    def open(self, context: ApiContext) -> ProtocolInstance: ...


def wrong_base_url(base_url: str, api_name: str, error: UnknownRoute, hint: str) -> ConfigError:
    """The start-up error for a base URL that does not serve `api_name`, naming the setting to fix, the request, what
    answered it, and `hint` (where the protocol's base URL usually ends):
    `OPENAI_BASE_URL (api.base_url): http://host:8089 does not serve the Assistants API (GET /assistants/asst_x
    answered 404 Invalid URL); the base URL usually ends in /v1`."""
    answer = f"{error.request} answered 404 {error.evidence}"
    return ConfigError([f"OPENAI_BASE_URL (api.base_url): {redact_url(base_url)} does not serve the {api_name} "
                        f"({answer}); {hint}"])  # fmt: skip


def v1_hint(base_url: str, api_name: str) -> str:
    """`wrong_base_url`'s hint for an API served under `/v1` (OpenAI's and OpenAI-compatible servers')."""
    if base_url.rstrip("/").endswith("/v1"):
        return f"it ends in /v1 already: is it a server of the {api_name}?"
    return "the base URL usually ends in /v1"
