"""The words every part of stepscope shares, each defined once: API flavours, auth modes, drop reasons.

Every value is a `StrEnum` member, so it equals, hashes and formats as its plain string (`Flavor.AZURE == "azure"`):
settings, log lines and Prometheus label values read the same. Configuration validates against these sets and the
self metrics create one series per member at start-up. A protocol's own words (its endpoints, statuses and types)
are in its package's `vocabulary` module; metric names, kinds, help texts and labels in
`stepscope.contract.metricdefs`.

The simulator (`stepscope.simulator`) keeps its own copies on purpose: it plays a foreign server, so it must not
learn the bridge's words from the bridge. `tests/unit/contract/test_vocabulary_contract.py` checks that both agree.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = [
    "AUTH_MODES",
    "DROP_REASONS",
    "FLAVORS",
    "AuthMode",
    "DropReason",
    "Flavor",
]


class Flavor(StrEnum):
    """Which dialect of an API a server speaks (`STEPSCOPE_FLAVOR`); each protocol says what it means for it."""

    OPENAI = "openai"  # OpenAI's own paths and Bearer key
    AZURE = "azure"  # Azure AI Foundry: project paths, api-key or Entra ID


class AuthMode(StrEnum):
    """How requests authenticate (`STEPSCOPE_AUTH`); `stepscope.client.auth` has one class per mode."""

    BEARER = "bearer"
    API_KEY = "api-key"
    TOKEN_FILE = "token-file"  # noqa: S105 - a mode name, not a credential
    AZURE_IDENTITY = "azure-identity"


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
    PROXY_UPSTREAM_BUSY = "proxy_upstream_busy"  # a proxied request answered 503: upstream pool or route share full
    LISTENER_FULL = "listener_full"  # a connection answered 503: its listener was at its connection limit
    REQUEST_TIMEOUT = "request_timeout"  # a connection closed: its request head or body did not arrive in time
    WEBHOOK_INVALID = "webhook_invalid"  # a POST /v1/webhooks delivery refused: unsigned, forged, stale, bad body
    SESSIONS_FULL = "sessions_full"  # an Agents API session past the bound of followed sessions, not followed
    TRACE_DROPPED = "trace_dropped"  # a published trace left out of its turn: too large, or its listing ran away
    UNIT_ID_COLLISION = "unit_id_collision"  # a unit whose id another container's unit already has: not followed
    LISTING_UNBOUNDED = "listing_unbounded"  # a unit given up: its listing broke a bound on many polls in a row
    STUCK_QUEUED = "stuck_queued"  # a unit given up: queued far longer than the server ever queues (a server bug)
    TASK_FAILED = "task_failed"  # a background loop's round that raised or hung (logged once per episode, retried)


FLAVORS: tuple[str, ...] = tuple(Flavor)
AUTH_MODES: tuple[str, ...] = tuple(AuthMode)
DROP_REASONS: tuple[str, ...] = tuple(DropReason)
