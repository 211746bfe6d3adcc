"""The protocol-neutral request core shared by the Assistants and Agents clients.

`RequestCore` sends each GET with the beta, organisation, project and auth headers (plus `api-version` when set),
retries transient failures under a `RetryPolicy`, never sends a request before a server's `retry-after` has elapsed
(the rule is client-wide: rate limits belong to the key, not to a run or session), paces itself with a
`RequestBudget`, pages lists lazily and hands every object to a tolerant parser. A protocol client only names
endpoints, builds paths and picks parsers.

HTTP outcome -> exception, after retries for the retried ones (`x-should-retry: true|false` overrides):
401/403 `AuthError`, 404 `NotFound`, other 3xx/4xx `BadRequest` (none retried); 429 `RateLimited`; 408, 409,
5xx, transport errors, timeouts and unreadable bodies `Unavailable` (all retried). A 404 whose body is not an API
error naming a missing object (`Invalid URL (GET /...)`, an HTML page; `answers.unknown_route`) is `UnknownRoute`,
a `NotFound` for the path itself: the base URL does not serve this API.

Every read is bounded, so a hostile or broken server costs a known amount of memory and time: a body is read
while streaming up to `max_body` bytes (after decompression) and abandoned past it (`LimitExceeded`
`too_large`, observed as code `too_large`, not retried in the call); each attempt, from sending to the body's
last byte, ends within `deadline` seconds (`deadline`, observed as code `deadline`, retried like a timeout). A
listing ends at `max_pages` pages (`page_cap`) or at a cursor it has already seen (`repeated_cursor`); both
raise after yielding what was read and are observed as an invalid `list`.

A retry-after beyond `RetryPolicy.max_retry_after` is not slept through: calls fail fast with `RateLimited`
until it passes. Messages name the endpoint, status and the server's `error.message` (truncated), or for
transport errors the base URL (`cannot reach https://host/v1 (connection refused)`), never a credential: the
values of the auth headers and the URL's userinfo are redacted. A single GET whose object cannot be parsed raises
`InvalidObject` (list endpoints skip such items); both kinds of bad object go to `observe_invalid`.

Errors carry the `thread_id`/`run_id` context the caller passes; the Agents client passes its session and turn ids
there (the conversation and the unit of work, as thread and run are for Assistants).
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any, NoReturn, TypedDict, TypeVar
from urllib.parse import quote, urlencode

import httpx

from stepscope import __version__
from stepscope.client.answers import (
    MESSAGE_LIMIT,
    connect_reason,
    read_capped,
    redact,
    secrets_of,
    server_message,
    size_text,
    status_error,
    strip_userinfo,
    unknown_route,
)
from stepscope.client.auth import Auth
from stepscope.client.parsing import Page
from stepscope.client.retry import (
    RequestBudget,
    RetryPolicy,
    SleepFn,
    SystemClock,
    parse_retry_after,
    stop_aware_sleep,
)
from stepscope.core.records import Clock, RequestObserver
from stepscope.errors import AuthError, ConfigError, InvalidObject, LimitExceeded, RateLimited, SourceError, Unavailable

log = logging.getLogger("stepscope.client")
_T = TypeVar("_T")

DEFAULT_MAX_BODY = 8 * 1024 * 1024
"""Bytes of one response body at most; a page of 100 steps is well under 1 MB."""
DEFAULT_DEADLINE = 30.0
"""Seconds one request may take from sending to the body's last byte."""
DEFAULT_MAX_PAGES = 100
"""Pages of one listing at most (10,000 steps at 100 per page)."""
_ERROR_BODY_MAX = 64 * 1024  # only `error.message` is read from an error body
_LOGGED_IDS_MAX = 1024

PageParser = Callable[[object], Page]
"""Turns one list body into a `Page`; raises `InvalidObject` for an envelope it cannot read."""


class CoreOptions(TypedDict, total=False):
    """`RequestCore`'s optional keyword arguments that a protocol client passes through unchanged."""

    organization: str | None
    project: str | None
    retry: RetryPolicy | None
    observer: RequestObserver | None
    clock: Clock | None
    rng: Callable[[], float] | None
    stop: asyncio.Event | None
    sleep: SleepFn | None
    budget: RequestBudget | None
    max_body: int
    deadline: float | None
    max_pages: int


@dataclass(frozen=True, slots=True)
class _Outcome:
    """One HTTP attempt: a JSON body, or an error and whether the policy allows another try."""

    body: Any = None
    error: SourceError | None = None
    retryable: bool = False
    headers: Mapping[str, str] | None = None


class RequestCore:
    """GETs against one API endpoint with one credential, under every bound; see the module docstring.

    `http` is owned by the caller (tests pass one built on `httpx.MockTransport`). `base_url` includes any
    version or project prefix. `beta` is the `OpenAI-Beta` header value (`assistants=v2`, `agents=v1`; empty:
    none). `sleep` defaults to a sleep that `stop` interrupts; once `stop` is set, a pending retry gives up with
    the last error. `rng` draws the jitter in [0, 1). `max_body` (bytes), `deadline` (seconds per attempt; None:
    none) and `max_pages` (per listing) bound what one server can cost; a value <= 0 is a `ConfigError`.
    """

    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        base_url: str,
        auth: Auth,
        beta: str,
        api_version: str | None = None,
        organization: str | None = None,
        project: str | None = None,
        retry: RetryPolicy | None = None,
        observer: RequestObserver | None = None,
        clock: Clock | None = None,
        rng: Callable[[], float] | None = None,
        stop: asyncio.Event | None = None,
        sleep: SleepFn | None = None,
        budget: RequestBudget | None = None,
        max_body: int = DEFAULT_MAX_BODY,
        deadline: float | None = DEFAULT_DEADLINE,
        max_pages: int = DEFAULT_MAX_PAGES,
    ) -> None:
        bad = [
            name
            for name, v in (("max_body", max_body), ("deadline", deadline), ("max_pages", max_pages))
            if v is not None and v <= 0
        ]
        if bad:
            raise ConfigError([f"api.{name}: must be > 0" for name in bad])
        self._http = http
        # Credentials are the `auth`'s alone: userinfo in the base URL is dropped, never sent (httpx would turn it
        # into an `Authorization: Basic` header beside, or instead of, the key) and so never shown.
        self._base_url = strip_userinfo(base_url.rstrip("/"))
        self.shown_url = self._base_url
        self._max_body = max_body
        self._deadline = deadline
        self._max_pages = max_pages
        self.auth = auth
        self._api_version = api_version
        self._retry = retry or RetryPolicy()
        self._observer = observer
        self._clock: Clock = clock or SystemClock()
        self._rng = rng or random.Random().random
        self._stop = stop
        self._sleep = sleep or stop_aware_sleep(stop)
        self._budget = budget or RequestBudget()
        headers = {"User-Agent": f"stepscope/{__version__}", "Accept": "application/json"}
        if beta:  # the Responses API is no beta: it takes no such header
            headers["OpenAI-Beta"] = beta
        if organization:
            headers["OpenAI-Organization"] = organization
        if project:
            headers["OpenAI-Project"] = project
        self._headers = headers
        self._not_before = float("-inf")  # monotonic instant before which no request may be sent
        self._failing: dict[str, str] = {}  # endpoint -> status of its last give-up, for state-change logging
        self._logged_invalid: OrderedDict[tuple[str, str], None] = OrderedDict()

    # --- paging and parsing ----------------------------------------------------------------------------------

    async def paginate(
        self,
        endpoint: str,
        path: str,
        params: Mapping[str, str | int],
        parse_page: PageParser,
        *,
        thread_id: str | None = None,
        run_id: str | None = None,
    ) -> AsyncIterator[Any]:
        """Items of a listing, page by page with `after=<Page.last_id>` while `has_more`; invalid items skipped."""
        after = params.get("after")
        seen: set[str | int | None] = {after} if after is not None else set()  # at most max_pages cursors
        for pages in range(1, self._max_pages + 1):
            query = dict(params)
            if after is not None:
                query["after"] = after
            body = await self.get(endpoint, path, query, thread_id=thread_id, run_id=run_id)
            page = self._parse_page(endpoint, body, parse_page, thread_id=thread_id, run_id=run_id)
            if page.has_more and page.last_id in seen:
                # Repeating or alternating cursors would page forever; this page's items were most likely yielded
                # already, so it is dropped whole, while what was read before stays valid.
                what = f"returned cursor {page.last_id} again after {pages} page(s)"
                raise self._runaway(endpoint, "repeated_cursor", what, thread_id=thread_id, run_id=run_id)
            for item in page.data:
                yield item
            if not page.has_more:
                return
            seen.add(page.last_id)
            after = page.last_id
        what = f"still has more after {self._max_pages} pages (STEPSCOPE_MAX_PAGES)"
        raise self._runaway(endpoint, "page_cap", what, thread_id=thread_id, run_id=run_id)

    def _runaway(
        self, endpoint: str, reason: str, what: str, *, thread_id: str | None, run_id: str | None
    ) -> LimitExceeded:
        """Count a listing that would not end as an invalid `list` and build the error that ends it."""
        if self._observer is not None:
            self._observer.observe_invalid(InvalidObject("list", f"listing stopped: {reason}"))
        message = f"{endpoint}: listing stopped: the server {what}"
        return LimitExceeded(message, reason=reason, endpoint=endpoint, thread_id=thread_id, run_id=run_id)

    def _parse_page(
        self, endpoint: str, body: Any, parse_page: PageParser, *, thread_id: str | None, run_id: str | None
    ) -> Page:
        try:
            page = parse_page(body)
        except InvalidObject as exc:
            self.report_invalid(exc)
            raise Unavailable(
                f"{endpoint}: malformed list: {exc.reason}", endpoint=endpoint, thread_id=thread_id, run_id=run_id
            ) from exc
        for invalid in page.invalid:
            self.report_invalid(invalid)
        return page

    def parse_one(self, parse: Callable[[object], _T], body: Any) -> _T:
        """`parse(body)`; an `InvalidObject` is counted and logged, then re-raised."""
        try:
            return parse(body)
        except InvalidObject as exc:
            self.report_invalid(exc)
            raise

    def report_invalid(self, exc: InvalidObject) -> None:
        """Count every invalid object; log each object once while it stays among the recently logged ones."""
        if self._observer is not None:
            self._observer.observe_invalid(exc)
        key = (exc.kind, exc.object_id or exc.reason)
        if key in self._logged_invalid:
            self._logged_invalid.move_to_end(key)
            return
        self._logged_invalid[key] = None
        if len(self._logged_invalid) > _LOGGED_IDS_MAX:
            self._logged_invalid.popitem(last=False)
        log.warning("skipping %s", exc)

    # --- requests, retries and pacing ------------------------------------------------------------------------

    async def get(
        self,
        endpoint: str,
        path: str,
        params: Mapping[str, str | int],
        *,
        thread_id: str | None = None,
        run_id: str | None = None,
    ) -> Any:
        """GET `path` and return its JSON body, retrying under the policy; raises `SourceError` subclasses."""
        ctx: dict[str, Any] = {"endpoint": endpoint, "thread_id": thread_id, "run_id": run_id}
        policy = self._retry
        deadline = None if policy.total_timeout is None else self._clock.monotonic() + policy.total_timeout
        attempt = 0
        while True:
            await self._wait_turn(ctx)
            outcome = await self._attempt(path, params, ctx)
            error = outcome.error
            if error is None:
                if self._failing.pop(endpoint, None) is not None:
                    log.debug("%s: requests succeed again", endpoint)
                return outcome.body
            server_after = getattr(error, "retry_after", None)
            if (
                not outcome.retryable
                or attempt >= policy.max_retries
                or (server_after is not None and server_after > policy.max_retry_after)
            ):
                self._give_up(endpoint, error)
            delay = policy.retry_delay(attempt, outcome.headers or {}, self._rng(), now=self._clock.time())
            if deadline is not None and self._clock.monotonic() + delay > deadline:
                self._give_up(endpoint, error)
            log.debug("%s; retry %d of %d in %.2fs", error, attempt + 1, policy.max_retries, delay)
            await self._sleep(delay)
            if self._stopping():
                self._give_up(endpoint, error)
            attempt += 1

    def _give_up(self, endpoint: str, error: SourceError) -> NoReturn:
        status = str(error.status_code) if error.status_code is not None else type(error).__name__
        if self._failing.get(endpoint) != status:
            self._failing[endpoint] = status
            # DEBUG: the stage that acts on the error (poller, discovery, CLI) reports it once, in its own words.
            log.debug("giving up: %s", error)
        raise error

    def _stopping(self) -> bool:
        return self._stop is not None and self._stop.is_set()

    async def _wait_turn(self, ctx: dict[str, Any]) -> None:
        """Wait for the client-wide not-before instant, then for the budget's next slot."""
        while (wait := self._not_before - self._clock.monotonic()) > 0:
            if wait > self._retry.max_retry_after or self._stopping():
                raise RateLimited(f"{ctx['endpoint']}: rate limited for another {wait:.1f}s", retry_after=wait, **ctx)
            await self._sleep(wait)
        wait = self._budget.acquire(self._clock.monotonic())
        if wait > 0:
            log.debug("%s: request budget low, waiting %.2fs", ctx["endpoint"], wait)
            await self._sleep(wait)
            if self._stopping():
                raise RateLimited(f"{ctx['endpoint']}: stopped while pacing requests", retry_after=wait, **ctx)

    async def _attempt(self, path: str, params: Mapping[str, str | int], ctx: dict[str, Any]) -> _Outcome:
        endpoint = ctx["endpoint"]
        try:
            auth_headers = await self.auth.headers()
        except AuthError as exc:
            return _Outcome(error=AuthError(f"{endpoint}: {exc}", **ctx))
        secrets = secrets_of(auth_headers)
        query: dict[str, str | int] = dict(params)
        if self._api_version:
            query["api-version"] = self._api_version
        started = self._clock.monotonic()
        try:
            async with asyncio.timeout(self._deadline):
                response, content = await self._fetch(path, query, {**self._headers, **auth_headers})
        except TimeoutError:
            self._observe(endpoint, "deadline", started)
            message = f"{endpoint}: no complete answer from {self.shown_url} within {self._deadline or 0:g}s"
            return _Outcome(error=LimitExceeded(message, reason="deadline", **ctx), retryable=True)
        except httpx.RequestError as exc:
            self._observe(endpoint, "error", started)
            message = f"{endpoint}: {redact(self._transport_problem(exc), secrets)[:MESSAGE_LIMIT]}"
            return _Outcome(error=Unavailable(message, **ctx), retryable=True)
        status = response.status_code
        now = self._clock.monotonic()
        self._budget.update(response.headers, now)
        retry_after = parse_retry_after(response.headers, now=self._clock.time())
        if retry_after is not None and retry_after < 0:
            retry_after = None
        if retry_after is not None and status >= 400:
            self._not_before = max(self._not_before, now + retry_after)
        if 200 <= status < 300:
            if content is None:
                # Not retried within the call: the same request would most likely bring the same body.
                self._observe(endpoint, "too_large", started)
                message = f"{endpoint}: HTTP {status}: body over {size_text(self._max_body)} (STEPSCOPE_API_MAX_BODY)"
                return _Outcome(error=LimitExceeded(message, reason="too_large", status_code=status, **ctx))
            try:
                body = json.loads(content)
            except (ValueError, RecursionError):  # bad JSON, bad UTF-8, or nesting past the interpreter's limit
                # Counted apart from 200: a server answering garbage is an API error, not a success.
                self._observe(endpoint, "invalid_body", started)
                unreadable = Unavailable(f"{endpoint}: HTTP {status}: unreadable JSON body", status_code=status, **ctx)
                return _Outcome(error=unreadable, retryable=True, headers=response.headers)
            self._observe(endpoint, str(status), started)
            return _Outcome(body=body)
        self._observe(endpoint, str(status), started)
        message = f"{endpoint}: HTTP {status}"
        said = redact(server_message(content), secrets)
        if said:
            message += f": {said}"
        route = None
        if status == 404 and (evidence := unknown_route(content, secrets)) is not None:
            route = (f"GET /{path}", evidence)
        error = status_error(status, message, retry_after, ctx, route=route)
        if status == 401:
            self.auth.invalidate()
        return _Outcome(
            error=error, retryable=self._retry.should_retry(status, response.headers), headers=response.headers
        )

    async def _fetch(
        self, path: str, query: Mapping[str, str | int], headers: Mapping[str, str]
    ) -> tuple[httpx.Response, bytearray | None]:
        """Send one GET and read its body up to the cap (None: larger); leaving the stream closes it."""
        url = f"{self._base_url}/{path}"
        if query:
            # Joined here rather than passed as `params`: httpx's merge of query parameters into the URL cost about
            # a third of building a request (tests/benchmarks/bench_profile.py). Same encoding: spaces as %20.
            url = f"{url}?{urlencode(query, quote_via=quote)}"
        async with self._http.stream("GET", url, headers=headers) as response:
            cap = self._max_body if 200 <= response.status_code < 300 else min(self._max_body, _ERROR_BODY_MAX)
            return response, await read_capped(response, cap)

    def _transport_problem(self, exc: httpx.RequestError) -> str:
        """What went wrong on the wire, naming the (redacted) base URL, in one line."""
        if isinstance(exc, httpx.ConnectTimeout):
            return f"cannot reach {self.shown_url} (connect timed out)"
        if isinstance(exc, httpx.TimeoutException):
            return f"timed out waiting for {self.shown_url}"
        if isinstance(exc, httpx.ConnectError):
            return f"cannot reach {self.shown_url} ({connect_reason(exc)})"
        detail = str(exc)
        return f"connection to {self.shown_url} failed: {type(exc).__name__}" + (f": {detail}" if detail else "")

    def _observe(self, endpoint: str, code: str, started: float) -> None:
        if self._observer is not None:
            self._observer.observe_request(endpoint, code, max(self._clock.monotonic() - started, 0.0))


def seg(value: str) -> str:
    """One path segment: ids are quoted so that an odd id can never change the path."""
    return quote(value, safe="")


def clamp(limit: int) -> int:
    """The API accepts page sizes 1..100 and answers 400 otherwise."""
    return max(1, min(limit, 100))
