"""The words stepscope's modules share, each defined once: API flavours, auth modes, endpoints, drop reasons.

Every value is a `StrEnum` member, so it equals, hashes and formats as its plain string (`Flavor.AZURE == "azure"`,
`f"{Endpoint.GET_RUN}"` is `get_run`): settings, log lines and Prometheus label values read the same as before.
Configuration validates against these sets, the client names its endpoints with them, and the self metrics create
one series per member at start-up. Metric names, kinds, help texts and labels live in `stepscope.contract.metricdefs`.

The simulator (`stepscope.simulator`) keeps its own copies on purpose: it plays a foreign server, so it must not
learn the bridge's words from the bridge. `tests/unit/test_vocabulary_contract.py` checks that both agree.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = [
    "AUTH_MODES",
    "DROP_REASONS",
    "ENDPOINTS",
    "FLAVORS",
    "PROTOCOLS",
    "AuthMode",
    "DropReason",
    "Endpoint",
    "Flavor",
    "Protocol",
]


class Protocol(StrEnum):
    """Which API stepscope reads (`STEPSCOPE_PROTOCOL`)."""

    ASSISTANTS = "assistants"  # Assistants v2: threads, runs and run steps
    AGENTS = "agents"  # the Agents API (beta): sessions, turns and items


class Flavor(StrEnum):
    """Which dialect of the Assistants v2 API a server speaks (`STEPSCOPE_FLAVOR`)."""

    OPENAI = "openai"  # paths under /v1, Bearer key
    AZURE = "azure"  # Foundry Agents: paths under /api/projects/<p>, an `api-version` query parameter


class AuthMode(StrEnum):
    """How requests authenticate (`STEPSCOPE_AUTH`); `stepscope.client.auth` has one class per mode."""

    BEARER = "bearer"
    API_KEY = "api-key"
    TOKEN_FILE = "token-file"  # noqa: S105 - a mode name, not a credential
    AZURE_IDENTITY = "azure-identity"


class Endpoint(StrEnum):
    """The API calls the client makes: the `endpoint` label of `stepscope_api_requests_total`."""

    LIST_RUNS = "list_runs"
    GET_RUN = "get_run"
    LIST_STEPS = "list_steps"
    GET_STEP = "get_step"
    GET_ASSISTANT = "get_assistant"
    LIST_THREADS = "list_threads"  # Azure: the project's threads, for discovery with no thread configured
    # The Agents API (STEPSCOPE_PROTOCOL=agents), named as the simulator names them
    LIST_SESSIONS = "list_agent_sessions"
    GET_SESSION = "get_agent_session"
    LIST_TURNS = "list_agent_turns"
    GET_TURN = "get_agent_turn"
    LIST_TURN_ITEMS = "list_agent_turn_items"
    LIST_TRACES = "list_agent_traces"
    LIST_SUBAGENTS = "list_agent_subagents"
    LIST_SUBAGENT_TURNS = "list_agent_subagent_turns"
    GET_SUBAGENT_TURN = "get_agent_subagent_turn"
    LIST_SUBAGENT_TURN_ITEMS = "list_agent_subagent_turn_items"


class DropReason(StrEnum):
    """Why something was dropped or degraded: the `reason` label of `stepscope_dropped_total`."""

    TRACKED_RUNS_FULL = "tracked_runs_full"  # a new run found no room under STEPSCOPE_MAX_TRACKED_RUNS
    BACKLOG_FULL = "backlog_full"  # the oldest undelivered spans made room for new ones
    BACKLOG_EXPIRED = "backlog_expired"  # undelivered spans older than STEPSCOPE_BACKLOG_MAX_AGE
    SPAN_UNENCODABLE = "span_unencodable"  # a span carrying a value that cannot be stored
    LABEL_CAP = "label_cap"  # an observation whose labels were folded to `_other` (degraded, still counted)
    MAPPING_ERROR = "mapping_error"  # a step or run the mapping could not turn into spans or observations
    STORE_ERROR = "store_error"  # a commit the checkpoint store refused
    NOT_FOUND = "not_found"  # a run or registered thread the API answers 404 for
    BAD_REQUEST = "bad_request"  # a run the API refuses to read (other 4xx)
    INTERNAL_ERROR = "internal_error"  # a bug: an unexpected exception while polling a run
    STEP_UNFINISHED = "step_unfinished"  # steps that never finished although their run ended
    RUN_INVALID = "run_invalid"  # a run object that could not be parsed
    WATCH_LIMIT = "watch_limit"  # a /v1/watch registration past STEPSCOPE_MAX_WATCHED
    WATCH_RATE = "watch_rate"  # a /v1/watch request past STEPSCOPE_WATCH_RATE
    WATCH_INVALID = "watch_invalid"  # a /v1/watch request with a bad body
    WATCH_EXPIRED = "watch_expired"  # a /v1/watch thread without a run for the whole lookback
    PROXY_FEED_FULL = "proxy_feed_full"  # a proxy observation past the feed's queue bound (polling still finds it)
    PROXY_FEED_ERROR = "proxy_feed_error"  # a proxy observation the feed failed on
    PROXY_UNREADABLE = "proxy_unreadable"  # a run route's answer or event the proxy could not read
    PROXY_BODY_TOO_LARGE = "proxy_body_too_large"  # a run route's answer too large to observe (relayed anyway)
    PROXY_OBSERVER_ERROR = "proxy_observer_error"  # the proxy's own observation of an answer failed
    WEBHOOK_INVALID = "webhook_invalid"  # a POST /v1/webhooks delivery refused: unsigned, forged, stale, bad body
    SESSIONS_FULL = "sessions_full"  # an Agents API session past the bound of followed sessions, not followed


FLAVORS: tuple[str, ...] = tuple(Flavor)
AUTH_MODES: tuple[str, ...] = tuple(AuthMode)
ENDPOINTS: tuple[str, ...] = tuple(Endpoint)
DROP_REASONS: tuple[str, ...] = tuple(DropReason)
PROTOCOLS: tuple[str, ...] = tuple(Protocol)
