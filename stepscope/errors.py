"""The stepscope exception tree, split by what the caller does next.

```
StepscopeError
├── ConfigError              fatal at start-up: the CLI prints every problem and exits 2
├── SourceError              talking to the Assistants API failed
│   ├── RetryableSourceError try again later (the retry policy decides when)
│   │   ├── RateLimited      429; carries the server's retry delay when it sent one
│   │   └── Unavailable      408/409/5xx, timeouts, dropped connections, truncated bodies
│   │       └── LimitExceeded an answer past a client bound: too_large, deadline, page_cap, repeated_cursor
│   └── FatalSourceError     retrying the same request cannot help
│       ├── AuthError        401/403: the credential is wrong; stop polling until it changes
│       ├── NotFound         404: the thread or run is gone; forget it
│       │   └── UnknownRoute 404 for the path itself: the base URL does not serve this API; fix it, forget nothing
│       └── BadRequest       other 4xx: our request is wrong for this server
├── InvalidObject            one API object could not be parsed; it is counted and skipped
└── StoreError               the checkpoint store could not be read or written
```

Exceptions carry context (`run_id`, `status_code`) as attributes; wrap causes with `raise ... from exc`.
"""

from __future__ import annotations


class StepscopeError(Exception):
    """Root of every error stepscope raises on purpose."""


class ConfigError(StepscopeError):
    """The configuration is invalid; `problems` lists every `setting: reason`."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(self.problems))


class SourceError(StepscopeError):
    """A request to the Assistants API failed."""

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        endpoint: str | None = None,
        run_id: str | None = None,
        thread_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.endpoint = endpoint
        self.run_id = run_id
        self.thread_id = thread_id


class RetryableSourceError(SourceError):
    """A transient failure: the same request may succeed later."""


class RateLimited(RetryableSourceError):
    """HTTP 429; `retry_after` is the server's delay in seconds, when it gave one."""

    def __init__(self, message: str, *, retry_after: float | None = None, **context: object) -> None:
        super().__init__(message, **context)  # type: ignore[arg-type]
        self.retry_after = retry_after


class Unavailable(RetryableSourceError):
    """5xx, 408, 409, timeouts, dropped connections or an unreadable body."""

    def __init__(self, message: str, *, retry_after: float | None = None, **context: object) -> None:
        super().__init__(message, **context)  # type: ignore[arg-type]
        self.retry_after = retry_after


class LimitExceeded(Unavailable):
    """The server's answer broke one of the client's bounds; `reason` (one of `LIMIT_REASONS`) says which.

    `too_large`: a body over the size cap; `deadline`: one request took longer than its deadline; `page_cap`: a
    listing still had more pages at the cap; `repeated_cursor`: a listing returned a cursor it had returned before.
    Retryable, since a server may recover, but a caller should back off and count it by `reason`.
    """

    def __init__(self, message: str, *, reason: str, **context: object) -> None:
        super().__init__(message, **context)  # type: ignore[arg-type]
        self.reason = reason


LIMIT_REASONS = ("too_large", "deadline", "page_cap", "repeated_cursor")


class FatalSourceError(SourceError):
    """Retrying the same request cannot help."""


class AuthError(FatalSourceError):
    """401 or 403: the credential is missing, wrong or lacks permission."""


class NotFound(FatalSourceError):
    """404: the thread, run or step does not exist (any more); or, as `UnknownRoute`, the path itself is unknown."""


class UnknownRoute(NotFound):
    """A 404 for a path the server does not serve at all, told apart from a missing object by its body: the base URL
    is wrong (no `/v1`, another server, another API), so nothing the path names may be forgotten for it.

    `request` is the method and path below the base URL (`GET /assistants/asst_x`); `evidence` is what showed it in
    a few words (`Invalid URL`, `an HTML page`, the start of a body without an API error). A `NotFound` of its own,
    so code that only knows 404s treats it as before.
    """

    def __init__(self, message: str, *, request: str, evidence: str, **context: object) -> None:
        super().__init__(message, **context)  # type: ignore[arg-type]
        self.request = request
        self.evidence = evidence


class BadRequest(FatalSourceError):
    """Another 4xx: the server rejected the request itself."""


class InvalidObject(StepscopeError):
    """An API object that cannot be turned into a typed record.

    `kind` is the object kind (`run`, `run_step`, `list`, ...), `object_id` its id when one could be read.
    """

    def __init__(self, kind: str, reason: str, *, object_id: str | None = None) -> None:
        where = f" {object_id}" if object_id else ""
        super().__init__(f"invalid {kind}{where}: {reason}")
        self.kind = kind
        self.reason = reason
        self.object_id = object_id


class UnitAbandoned(StepscopeError):
    """A reader gives its unit up for good (a response stuck `queued` past its bound): the poller forgets the unit
    and counts it by `reason`, a `stepscope_dropped_total` reason."""

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class StoreError(StepscopeError):
    """The checkpoint store could not be opened, read or written."""


def reason_of(error: BaseException) -> str:
    """An error's message for a log line, or its type's name when the message is empty (`ReadTimeout`)."""
    return str(error) or type(error).__name__
