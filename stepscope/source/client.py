"""`AssistantsClient`: the Assistants v2 API (OpenAI or Azure Foundry Agents) as a `StepSource`.

One instance per API endpoint and credential. It sends each GET with the beta, organisation, project and auth
headers (plus `api-version` when set), retries transient failures under a `RetryPolicy`, never sends a request
before a server's `retry-after` has elapsed (the rule is client-wide: rate limits belong to the key, not to a
run), paces itself with a `RequestBudget`, pages lists lazily and parses objects tolerantly.

HTTP outcome -> exception, after retries for the retried ones (`x-should-retry: true|false` overrides):
401/403 `AuthError`, 404 `NotFound`, other 3xx/4xx `BadRequest` (none retried); 429 `RateLimited`; 408, 409,
5xx, transport errors, timeouts and unreadable bodies `Unavailable` (all retried).

A retry-after beyond `RetryPolicy.max_retry_after` is not slept through: calls fail fast with `RateLimited`
until it passes. Messages name the endpoint, status and the server's `error.message` (truncated), never a
credential: the values of the auth headers are redacted. A single GET whose object cannot be parsed raises
`InvalidObject` (list endpoints skip such items); both kinds of bad object go to `observe_invalid`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar
from urllib.parse import quote

import httpx

from stepscope import __version__
from stepscope.errors import (
    AuthError,
    BadRequest,
    ConfigError,
    InvalidObject,
    NotFound,
    RateLimited,
    SourceError,
    Unavailable,
)
from stepscope.models import Assistant, Page, Run, RunRef, RunStep, parse_assistant, parse_page, parse_run, parse_step
from stepscope.source._retry import (
    RequestBudget,
    RetryPolicy,
    SleepFn,
    SystemClock,
    parse_retry_after,
    stop_aware_sleep,
)
from stepscope.source.auth import Auth
from stepscope.types import Clock, RequestObserver

log = logging.getLogger("stepscope.source")
_T = TypeVar("_T")

ENDPOINTS = ("list_runs", "get_run", "list_steps", "get_step", "get_assistant")
"""Values of the `endpoint` argument passed to `RequestObserver.observe_request`."""
FLAVORS = ("openai", "azure")
_MESSAGE_LIMIT = 200
_LOGGED_IDS_MAX = 1024


@dataclass(frozen=True, slots=True)
class _Outcome:
    """One HTTP attempt: a JSON body, or an error and whether the policy allows another try."""

    body: Any = None
    error: SourceError | None = None
    retryable: bool = False
    headers: Mapping[str, str] | None = None


class AssistantsClient:
    """Reads threads' runs and run steps; implements `stepscope.types.StepSource`.

    `http` is owned by the caller (tests pass one built on `httpx.MockTransport`). `base_url` includes any
    version or project prefix (`https://api.openai.com/v1`, `https://<x>.services.ai.azure.com/api/projects/<p>`).
    `flavor="azure"` requires `api_version`. `sleep` defaults to a sleep that `stop` interrupts; once `stop` is
    set, a pending retry gives up with the last error. `rng` draws the jitter in [0, 1).
    """

    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        base_url: str,
        auth: Auth,
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
        flavor: str = "openai",
    ) -> None:
        if flavor not in FLAVORS:
            raise ConfigError([f"api.flavor: unknown flavor {flavor!r} (expected one of {', '.join(FLAVORS)})"])
        if flavor == "azure" and not api_version:
            raise ConfigError(["api.api_version: required for the azure flavor"])
        self._http = http
        self._base_url = base_url.rstrip("/")
        self._auth = auth
        self._api_version = api_version
        self._retry = retry or RetryPolicy()
        self._observer = observer
        self._clock: Clock = clock or SystemClock()
        self._rng = rng or random.Random().random
        self._stop = stop
        self._sleep = sleep or stop_aware_sleep(stop)
        self._budget = budget or RequestBudget()
        self.flavor = flavor
        headers = {
            "OpenAI-Beta": "assistants=v2",
            "User-Agent": f"stepscope/{__version__}",
            "Accept": "application/json",
        }
        if organization:
            headers["OpenAI-Organization"] = organization
        if project:
            headers["OpenAI-Project"] = project
        self._headers = headers
        self._not_before = float("-inf")  # monotonic instant before which no request may be sent
        self._failing: dict[str, str] = {}  # endpoint -> status of its last give-up, for state-change logging
        self._logged_invalid: OrderedDict[tuple[str, str], None] = OrderedDict()

    def __repr__(self) -> str:
        return f"AssistantsClient(base_url={self._base_url!r}, flavor={self.flavor!r}, auth={self._auth!r})"

    # --- StepSource ------------------------------------------------------------------------------------------

    async def list_runs(self, thread_id: str, *, limit: int = 20) -> AsyncIterator[Run]:
        """Runs of a thread, newest first (`order=desc`), paging with `after=<last run id>` while `has_more`."""
        path = f"threads/{_seg(thread_id)}/runs"
        async for run in self._paginate(
            "list_runs", path, {"limit": _clamp(limit), "order": "desc"}, parse_run, thread_id=thread_id
        ):
            yield run

    async def get_run(self, ref: RunRef) -> Run:
        path = f"threads/{_seg(ref.thread_id)}/runs/{_seg(ref.run_id)}"
        body = await self._call("get_run", path, {}, thread_id=ref.thread_id, run_id=ref.run_id)
        return self._parse_one(parse_run, body)

    async def list_steps(self, ref: RunRef, *, after: str | None = None, limit: int = 100) -> AsyncIterator[RunStep]:
        """Steps of a run, oldest first (`order=asc`), starting after step id `after`, paging while `has_more`."""
        path = f"threads/{_seg(ref.thread_id)}/runs/{_seg(ref.run_id)}/steps"
        params: dict[str, str | int] = {"limit": _clamp(limit), "order": "asc"}
        if after:
            params["after"] = after
        async for step in self._paginate(
            "list_steps", path, params, parse_step, thread_id=ref.thread_id, run_id=ref.run_id
        ):
            yield step

    async def get_step(self, ref: RunRef, step_id: str) -> RunStep:
        path = f"threads/{_seg(ref.thread_id)}/runs/{_seg(ref.run_id)}/steps/{_seg(step_id)}"
        body = await self._call("get_step", path, {}, thread_id=ref.thread_id, run_id=ref.run_id)
        return self._parse_one(parse_step, body)

    async def get_assistant(self, assistant_id: str) -> Assistant:
        body = await self._call("get_assistant", f"assistants/{_seg(assistant_id)}", {})
        return self._parse_one(parse_assistant, body)

    # --- paging and parsing ----------------------------------------------------------------------------------

    async def _paginate(
        self,
        endpoint: str,
        path: str,
        params: dict[str, str | int],
        parse: Callable[[object], Any],
        *,
        thread_id: str,
        run_id: str | None = None,
    ) -> AsyncIterator[Any]:
        after = params.get("after")
        while True:
            query = dict(params)
            if after is not None:
                query["after"] = after
            body = await self._call(endpoint, path, query, thread_id=thread_id, run_id=run_id)
            page = self._parse_page(endpoint, body, parse, thread_id=thread_id, run_id=run_id)
            for item in page.data:
                yield item
            if not page.has_more:
                return
            if page.last_id == after:
                # A server that repeats its cursor would page forever; what was read so far is still valid.
                log.warning("%s: the server returned cursor %s again; stopping this listing", endpoint, after)
                return
            after = page.last_id

    def _parse_page(
        self, endpoint: str, body: Any, parse: Callable[[object], Any], *, thread_id: str, run_id: str | None
    ) -> Page:
        kind = "run" if endpoint == "list_runs" else "run_step"
        try:
            page = parse_page(body, kind, parse)
        except InvalidObject as exc:
            self._report_invalid(exc)
            raise Unavailable(
                f"{endpoint}: malformed list: {exc.reason}", endpoint=endpoint, thread_id=thread_id, run_id=run_id
            ) from exc
        for invalid in page.invalid:
            self._report_invalid(invalid)
        return page

    def _parse_one(self, parse: Callable[[object], _T], body: Any) -> _T:
        try:
            return parse(body)
        except InvalidObject as exc:
            self._report_invalid(exc)
            raise

    def _report_invalid(self, exc: InvalidObject) -> None:
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

    async def _call(
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
            auth_headers = await self._auth.headers()
        except AuthError as exc:
            return _Outcome(error=AuthError(f"{endpoint}: {exc}", **ctx))
        secrets = _secrets(auth_headers)
        query: dict[str, str | int] = dict(params)
        if self._api_version:
            query["api-version"] = self._api_version
        started = self._clock.monotonic()
        try:
            response = await self._http.get(
                f"{self._base_url}/{path}", params=query, headers={**self._headers, **auth_headers}
            )
        except httpx.RequestError as exc:
            self._observe(endpoint, "error", started)
            detail = _redact(str(exc), secrets)[:_MESSAGE_LIMIT]
            reason = "timed out" if isinstance(exc, httpx.TimeoutException) else type(exc).__name__
            message = f"{endpoint}: {reason}" + (f": {detail}" if detail else "")
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
            try:
                body = json.loads(response.content)
            except ValueError:  # JSONDecodeError and UnicodeDecodeError are both ValueErrors
                # Counted apart from 200: a server answering garbage is an API error, not a success.
                self._observe(endpoint, "invalid_body", started)
                unreadable = Unavailable(f"{endpoint}: HTTP {status}: unreadable JSON body", status_code=status, **ctx)
                return _Outcome(error=unreadable, retryable=True, headers=response.headers)
            self._observe(endpoint, str(status), started)
            return _Outcome(body=body)
        self._observe(endpoint, str(status), started)
        message = f"{endpoint}: HTTP {status}"
        server_message = _redact(_server_message(response), secrets)
        if server_message:
            message += f": {server_message}"
        error = _status_error(status, message, retry_after, ctx)
        if status == 401:
            self._auth.invalidate()
        return _Outcome(
            error=error, retryable=self._retry.should_retry(status, response.headers), headers=response.headers
        )

    def _observe(self, endpoint: str, code: str, started: float) -> None:
        if self._observer is not None:
            self._observer.observe_request(endpoint, code, max(self._clock.monotonic() - started, 0.0))


def _status_error(status: int, message: str, retry_after: float | None, ctx: dict[str, Any]) -> SourceError:
    if status in (401, 403):
        return AuthError(message, status_code=status, **ctx)
    if status == 404:
        return NotFound(message, status_code=status, **ctx)
    if status == 429:
        return RateLimited(message, retry_after=retry_after, status_code=status, **ctx)
    if status in (408, 409) or status >= 500:
        return Unavailable(message, retry_after=retry_after, status_code=status, **ctx)
    return BadRequest(message, status_code=status, **ctx)


def _server_message(response: httpx.Response) -> str:
    """`error.message` (or a bare `message`) from an error body, with `error.code` when present; else ''."""
    try:
        body = json.loads(response.content)
    except ValueError:
        return ""
    err = body.get("error") if isinstance(body, dict) else None
    source = err if isinstance(err, dict) else body if isinstance(body, dict) else {}
    message = source.get("message")
    text = message[:_MESSAGE_LIMIT] if isinstance(message, str) else ""
    code = source.get("code")
    if isinstance(code, str) and code:
        text = f"{text} ({code})" if text else code
    return text


def _secrets(auth_headers: Mapping[str, str]) -> tuple[str, ...]:
    values = []
    for value in auth_headers.values():
        values.append(value)
        scheme, _, token = value.partition(" ")
        if token and scheme.lower() == "bearer":
            values.append(token)
    return tuple(v for v in values if len(v) >= 4)


def _redact(text: str, secrets: tuple[str, ...]) -> str:
    for secret in secrets:
        text = text.replace(secret, "<redacted>")
    return text


def _seg(value: str) -> str:
    """One path segment: ids are quoted so that an odd id can never change the path."""
    return quote(value, safe="")


def _clamp(limit: int) -> int:
    """The API accepts page sizes 1..100 and answers 400 otherwise."""
    return max(1, min(limit, 100))
