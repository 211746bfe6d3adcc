"""API health: what the stages that talk to the API learned about it, for `/v1/status` and the logs.

The poller and discovery report every outcome here; `ApiHealth` keeps the state (`unknown`, `ok`,
`rate_limited`, `auth_failed`, `unavailable`), the last error and the time of the last success, and logs each
change of state once, so an outage is one warning and one recovery line rather than a line per request.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from stepscope.errors import AuthError, RateLimited, SourceError

log = logging.getLogger("stepscope.core.health")


def state_of(exc: SourceError) -> str:
    """The API state a failed request puts us in."""
    if isinstance(exc, RateLimited):
        return "rate_limited"
    if isinstance(exc, AuthError):
        return "auth_failed"
    return "unavailable"


class ApiHealth:
    """The API's state as the last requests saw it; `name` (e.g. "Assistants API") opens its log lines."""

    def __init__(self, name: str = "API", *, wall: Callable[[], float] = time.time) -> None:
        self._name = name
        self._wall = wall
        self.state = "unknown"
        self.last_error: str | None = None
        self.last_success: float | None = None

    def ok(self) -> None:
        """A request succeeded: record it and log a recovery once."""
        self.last_success = self._wall()
        if self.state != "ok":
            if self.state != "unknown":
                log.info("%s recovered (was %s)", self._name, self.state.replace("_", " "))
            self.state = "ok"
            self.last_error = None

    def failed(self, exc: SourceError, state: str | None = None) -> None:
        """A request failed for good: log the state change once, keep the error for /v1/status."""
        state = state or state_of(exc)
        self.last_error = str(exc)
        if self.state != state:
            log.warning("%s %s: %s", self._name, state.replace("_", " "), exc)
            self.state = state
