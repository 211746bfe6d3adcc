"""One way to build an API client from the configuration, for `serve`, `backfill` and `inspect` alike.

`connect()` returns an `ApiConnection`: the httpx pool (connect timeout, connection limit), the credential and the
`AssistantsClient` with every bound the configuration sets (body cap, request deadline, page cap). `aclose()`
releases the pool and the credential (an Entra ID token provider holds its own session).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import httpx

from stepscope.config import Config
from stepscope.source.auth import Auth, make_auth
from stepscope.source.client import AssistantsClient
from stepscope.types import RequestObserver

CONNECT_TIMEOUT_S = 5.0


@dataclass(slots=True)
class ApiConnection:
    http: httpx.AsyncClient
    auth: Auth
    client: AssistantsClient

    async def aclose(self) -> None:
        """Close the pool and the credential. Idempotent."""
        await self.http.aclose()
        close_auth = getattr(self.auth, "aclose", None)
        if close_auth is not None:
            await close_auth()


def connect(
    config: Config,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    auth: Auth | None = None,
    observer: RequestObserver | None = None,
    stop: asyncio.Event | None = None,
) -> ApiConnection:
    """The client `config` describes. `transport` and `auth` are seams for tests."""
    api = config.api
    http = httpx.AsyncClient(
        transport=transport,
        timeout=httpx.Timeout(api.timeout, connect=min(CONNECT_TIMEOUT_S, api.timeout)),
        limits=httpx.Limits(max_connections=config.poll.concurrency + 4),
    )
    auth = auth or make_auth(api.auth, key=str(api.api_key), token_file=api.token_file)
    client = AssistantsClient(
        http,
        base_url=api.base_url,
        auth=auth,
        api_version=api.api_version,
        organization=api.org_id,
        project=api.project_id,
        observer=observer,
        stop=stop,
        flavor=api.flavor,
        max_body=api.max_body,
        deadline=api.timeout,
        max_pages=api.max_pages,
    )
    return ApiConnection(http, auth, client)
