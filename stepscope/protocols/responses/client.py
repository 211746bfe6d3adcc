"""`ResponsesClient`: the Responses API read through the shared request core.

Same discipline as the other protocols' clients (`stepscope.client.core.RequestCore`): auth, retries, the
client-wide retry-after, the request budget, the body cap, the deadline, the page cap and repeated cursors,
invalid objects counted and skipped in listings (`InvalidObject` for a single GET). No `OpenAI-Beta` header and no
`api-version`: OpenAI's `/v1` and Foundry's `{project}/openai/v1` take neither. Errors carry the response id as
`run_id`.

Only Foundry lists responses (`GET /responses`, newest first with `order=desc`, paged with `after=<last id>`); at
OpenAI that path answers 404, which `list_responses` lets through as `NotFound` for discovery to act on.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from functools import partial
from typing import Unpack

import httpx

from stepscope.client.auth import Auth
from stepscope.client.core import CoreOptions, RequestCore, clamp, seg
from stepscope.client.parsing import parse_page
from stepscope.protocols.responses.parsers import KIND, parse_response
from stepscope.protocols.responses.records import Response
from stepscope.protocols.responses.vocabulary import Endpoint


class ResponsesClient:
    """Reads responses. `content` makes the parsers keep item content (for content capture)."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        base_url: str,
        auth: Auth,
        content: bool = False,
        **options: Unpack[CoreOptions],
    ) -> None:
        self._core = RequestCore(http, base_url=base_url, auth=auth, beta="", **options)
        self._parse = partial(parse_response, content=content)
        self._page = partial(parse_page, kind=KIND, parse=self._parse)

    def __repr__(self) -> str:
        return f"ResponsesClient(base_url={self._core.shown_url!r}, auth={self._core.auth!r})"

    async def list_responses(self, *, agent_name: str | None = None, limit: int = 100) -> AsyncIterator[Response]:
        """The project's stored responses, newest first, optionally of one agent. The caller stops when it has
        gone back far enough."""
        params: dict[str, str | int] = {"limit": clamp(limit), "order": "desc"}
        if agent_name:
            params["agent_name"] = agent_name
        async for response in self._core.paginate(Endpoint.LIST_RESPONSES, "responses", params, self._page):
            yield response

    async def get_response(self, response_id: str) -> Response:
        body = await self._core.get(Endpoint.GET_RESPONSE, f"responses/{seg(response_id)}", {}, run_id=response_id)
        return self._core.parse_one(self._parse, body)
