"""Listing a project's threads (Foundry Agents `GET /threads`), so discovery needs no configured thread.

OpenAI's Assistants API has no such list; Azure Foundry Agents has one, newest first by default and paged like
runs (`limit` 1..100, `order`, `after`, `before`; envelope `{data, last_id, has_more}`). `ThreadLister` sends
it with the same credential, headers, `api-version` and bounds as the `AssistantsClient` it sits beside (build
it with `ThreadLister.beside(connection, config)`), without retries: discovery lists again on its next pass.

HTTP outcome -> exception, as the client's: 401/403 `AuthError`, 404 `NotFound`, 429 `RateLimited`, 408, 409,
5xx, transport errors, timeouts and unreadable bodies `Unavailable`, other 4xx `BadRequest`. A body past
`max_body` or a listing past `max_pages` raises `LimitExceeded`. Messages name the endpoint and status, never
a credential.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import httpx

from stepscope import __version__
from stepscope.config import Config
from stepscope.errors import (
    AuthError,
    BadRequest,
    InvalidObject,
    LimitExceeded,
    NotFound,
    RateLimited,
    SourceError,
    Unavailable,
)
from stepscope.source.auth import Auth
from stepscope.source.connect import ApiConnection
from stepscope.types import RequestObserver

ENDPOINT = "list_threads"
_PAGE = 100


@dataclass(frozen=True, slots=True)
class ThreadInfo:
    """A listed thread: its id and creation time (Unix seconds)."""

    id: str
    created_at: int


class ThreadSource(Protocol):
    """Threads of a project, newest first. Raises only `SourceError` subclasses; the caller may stop early."""

    def list_threads(self) -> AsyncIterator[ThreadInfo]: ...


def parse_thread(obj: object) -> ThreadInfo:
    """`{"id": "thread_...", "created_at": 1767225600, ...}` -> `ThreadInfo`; `InvalidObject` without them."""
    if not isinstance(obj, Mapping):
        raise InvalidObject("thread", "not a JSON object")
    tid, created = obj.get("id"), obj.get("created_at")
    if not isinstance(tid, str) or not tid:
        raise InvalidObject("thread", "no id")
    if not isinstance(created, int) or isinstance(created, bool) or created < 0:
        raise InvalidObject("thread", "no created_at", object_id=tid)
    return ThreadInfo(tid, created)


class ThreadLister:
    """`ThreadSource` over HTTP: `GET {base_url}/threads?order=desc&limit=100[&after=...]`."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        base_url: str,
        auth: Auth,
        api_version: str | None = None,
        max_body: int = 8 * 1024 * 1024,
        deadline: float | None = 30.0,
        max_pages: int = 100,
        observer: RequestObserver | None = None,
    ) -> None:
        self._http = http
        self._url = base_url.rstrip("/") + "/threads"
        self._auth = auth
        self._api_version = api_version
        self._max_body = max_body
        self._deadline = deadline
        self._max_pages = max_pages
        self._observer = observer

    @classmethod
    def beside(cls, connection: ApiConnection, config: Config, observer: RequestObserver | None = None) -> ThreadLister:
        """A lister sharing `connection`'s pool and credential, bounded as `config` bounds the client."""
        api = config.api
        return cls(
            connection.http, base_url=api.base_url, auth=connection.auth, api_version=api.api_version,
            max_body=api.max_body, deadline=api.timeout, max_pages=api.max_pages, observer=observer,
        )  # fmt: skip

    async def list_threads(self) -> AsyncIterator[ThreadInfo]:
        after: str | None = None
        for _ in range(self._max_pages):
            body = await self._get(after)
            data = body.get("data") if isinstance(body, dict) else None
            if not isinstance(data, list):
                raise Unavailable(f"{ENDPOINT}: malformed list: no 'data' array", endpoint=ENDPOINT)
            for raw in data:
                try:
                    yield parse_thread(raw)
                except InvalidObject as exc:
                    if self._observer is not None:
                        self._observer.observe_invalid(exc)
            last = data[-1].get("id") if data and isinstance(data[-1], dict) else None
            if body.get("has_more") is not True or not isinstance(last, str) or last == after:
                return
            after = last
        raise LimitExceeded(
            f"{ENDPOINT}: listing stopped: still has more after {self._max_pages} pages (STEPSCOPE_MAX_PAGES)",
            reason="page_cap", endpoint=ENDPOINT,
        )  # fmt: skip

    async def _get(self, after: str | None) -> Any:
        params: dict[str, str | int] = {"limit": _PAGE, "order": "desc"}
        if after:
            params["after"] = after
        if self._api_version:
            params["api-version"] = self._api_version
        headers = {
            "OpenAI-Beta": "assistants=v2",
            "User-Agent": f"stepscope/{__version__}",
            "Accept": "application/json",
        }
        headers.update(await self._auth.headers())
        started = time.monotonic()
        code = "error"
        try:
            async with asyncio.timeout(self._deadline):
                async with self._http.stream("GET", self._url, params=params, headers=headers) as response:
                    code = str(response.status_code)
                    content = await self._read(response)
        except TimeoutError:
            code = "deadline"
            raise LimitExceeded(f"{ENDPOINT}: no complete answer within {self._deadline or 0:g}s", reason="deadline",
                                endpoint=ENDPOINT) from None  # fmt: skip
        except httpx.RequestError as exc:
            raise Unavailable(f"{ENDPOINT}: request failed: {type(exc).__name__}", endpoint=ENDPOINT) from None
        finally:
            if self._observer is not None:
                self._observer.observe_request(ENDPOINT, code, time.monotonic() - started)
        status = response.status_code
        if status >= 300:
            if status == 401:
                self._auth.invalidate()
            raise _status_error(status)
        try:
            return json.loads(content)
        except ValueError:
            raise Unavailable(f"{ENDPOINT}: HTTP {status}: unreadable JSON body", endpoint=ENDPOINT) from None

    async def _read(self, response: httpx.Response) -> bytes:
        body = bytearray()
        async for chunk in response.aiter_bytes():
            body += chunk
            if len(body) > self._max_body:
                raise LimitExceeded(f"{ENDPOINT}: body over {self._max_body} bytes (STEPSCOPE_API_MAX_BODY)",
                                    reason="too_large", endpoint=ENDPOINT)  # fmt: skip
        return bytes(body)


def _status_error(status: int) -> SourceError:
    message = f"{ENDPOINT}: HTTP {status}"
    if status in (401, 403):
        return AuthError(message, status_code=status, endpoint=ENDPOINT)
    if status == 404:
        return NotFound(message, status_code=status, endpoint=ENDPOINT)
    if status == 429:
        return RateLimited(message, status_code=status, endpoint=ENDPOINT)
    if status in (408, 409) or status >= 500:
        return Unavailable(message, status_code=status, endpoint=ENDPOINT)
    return BadRequest(message, status_code=status, endpoint=ENDPOINT)
