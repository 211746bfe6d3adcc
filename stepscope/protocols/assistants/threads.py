"""Listing a project's threads (Foundry Agents `GET /threads`), so discovery needs no configured thread.

OpenAI's Assistants API has no such list; Azure Foundry Agents has one, newest first by default and paged like
runs (`limit` 1..100, `order`, `after`, `before`; envelope `{data, last_id, has_more}`). `ThreadLister` sends
it through its own `RequestCore` with the same credential, headers, `api-version` and bounds as the
`AssistantsClient` it sits beside (build it with `ThreadLister.beside(connection, config)`), without retries:
discovery lists again on its next pass.

Outcomes, bounds, messages and counts are `RequestCore`'s (`stepscope.client.core`): 401/403 `AuthError`, 404
`NotFound`, 429 `RateLimited`, 408, 409, 5xx, transport errors, timeouts and unreadable bodies `Unavailable`, other
4xx `BadRequest`; a body past `max_body`, an attempt past `deadline`, a listing past `max_pages` or one repeating
a cursor `LimitExceeded`; a thread without an id or creation time is counted as invalid and skipped.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Protocol, Unpack

import httpx

from stepscope.client.auth import Auth
from stepscope.client.connect import ApiConnection, client_options
from stepscope.client.core import CoreOptions, RequestCore
from stepscope.client.parsing import parse_page
from stepscope.client.retry import RetryPolicy
from stepscope.config import Config
from stepscope.core.records import RequestObserver
from stepscope.errors import InvalidObject
from stepscope.protocols.assistants.client import BETA
from stepscope.protocols.assistants.vocabulary import Endpoint

ENDPOINT = Endpoint.LIST_THREADS
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
    """`ThreadSource` over HTTP: `GET {base_url}/threads?order=desc&limit=100[&after=...]`.

    `options` mean what they mean for `AssistantsClient`, except `retry`: a lister never retries.
    """

    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        base_url: str,
        auth: Auth,
        api_version: str | None = None,
        **options: Unpack[CoreOptions],
    ) -> None:
        options["retry"] = RetryPolicy(max_retries=0)  # discovery lists again on its next pass
        self._core = RequestCore(http, base_url=base_url, auth=auth, beta=BETA, api_version=api_version, **options)

    @classmethod
    def beside(cls, connection: ApiConnection, config: Config, observer: RequestObserver | None = None) -> ThreadLister:
        """A lister sharing `connection`'s pool and credential, with the headers and bounds `config` sets."""
        api = config.api
        options = client_options(config, observer=observer)
        return cls(connection.http, base_url=api.base_url, auth=connection.auth, api_version=api.api_version, **options)

    async def list_threads(self) -> AsyncIterator[ThreadInfo]:
        params: dict[str, str | int] = {"limit": _PAGE, "order": "desc"}
        async for thread in self._core.paginate(ENDPOINT, "threads", params, _THREAD_PAGE):
            yield thread


_THREAD_PAGE = partial(parse_page, kind="thread", parse=parse_thread)
