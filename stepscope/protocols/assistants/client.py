"""`AssistantsClient`: the Assistants v2 API (OpenAI or Azure Foundry Agents) as a `StepSource`.

One instance per API endpoint and credential. The request discipline (headers, retries, the client-wide
`retry-after`, the request budget, the body cap, the request deadline, the page cap and repeated cursors, tolerant
parsing and the observer's counts, redaction) lives in `stepscope.client.core.RequestCore`; this module names the
endpoints, builds their paths and picks their parsers. Every request carries `OpenAI-Beta: assistants=v2`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from functools import partial
from typing import Unpack

import httpx

from stepscope.client.auth import Auth
from stepscope.client.core import (
    DEFAULT_DEADLINE,
    DEFAULT_MAX_BODY,
    DEFAULT_MAX_PAGES,
    CoreOptions,
    RequestCore,
    clamp,
    seg,
)
from stepscope.client.parsing import parse_page
from stepscope.contract.vocabulary import FLAVORS
from stepscope.core.records import UnitRef
from stepscope.errors import ConfigError
from stepscope.protocols.assistants.records import Assistant, Run, RunStep, parse_assistant, parse_run, parse_step
from stepscope.protocols.assistants.vocabulary import Endpoint

__all__ = [
    "DEFAULT_DEADLINE",
    "DEFAULT_MAX_BODY",
    "DEFAULT_MAX_PAGES",
    "AssistantsClient",
]

BETA = "assistants=v2"


class AssistantsClient:
    """Reads threads' runs and run steps; implements `stepscope.core.records.StepSource`.

    `http` is owned by the caller (tests pass one built on `httpx.MockTransport`). `base_url` includes any
    version or project prefix (`https://api.openai.com/v1`, `https://<x>.services.ai.azure.com/api/projects/<p>`).
    `flavor="azure"` requires `api_version`. `sleep` defaults to a sleep that `stop` interrupts; once `stop` is
    set, a pending retry gives up with the last error. `rng` draws the jitter in [0, 1). `max_body` (bytes),
    `deadline` (seconds per attempt; None: none) and `max_pages` (per listing) bound what one server can cost.
    Userinfo in `base_url` is dropped: never sent, never shown.
    """

    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        base_url: str,
        auth: Auth,
        api_version: str | None = None,
        flavor: str = "openai",
        **options: Unpack[CoreOptions],
    ) -> None:
        if flavor not in FLAVORS:
            raise ConfigError([f"api.flavor: unknown flavor {flavor!r} (expected one of {', '.join(FLAVORS)})"])
        if flavor == "azure" and not api_version:
            raise ConfigError(["api.api_version: required for the azure flavor"])
        self._core = RequestCore(http, base_url=base_url, auth=auth, beta=BETA, api_version=api_version, **options)
        self.flavor = flavor

    def __repr__(self) -> str:
        return f"AssistantsClient(base_url={self._core.shown_url!r}, flavor={self.flavor!r}, auth={self._core.auth!r})"

    # --- StepSource ------------------------------------------------------------------------------------------

    async def list_runs(self, thread_id: str, *, limit: int = 20) -> AsyncIterator[Run]:
        """Runs of a thread, newest first (`order=desc`), paging with `after=<last run id>` while `has_more`."""
        path = f"threads/{seg(thread_id)}/runs"
        params: dict[str, str | int] = {"limit": clamp(limit), "order": "desc"}
        async for run in self._core.paginate(Endpoint.LIST_RUNS, path, params, _RUN_PAGE, thread_id=thread_id):
            yield run

    async def get_run(self, ref: UnitRef) -> Run:
        path = f"threads/{seg(ref.container_id)}/runs/{seg(ref.unit_id)}"
        body = await self._core.get(Endpoint.GET_RUN, path, {}, thread_id=ref.container_id, run_id=ref.unit_id)
        return self._core.parse_one(parse_run, body)

    async def list_steps(self, ref: UnitRef, *, after: str | None = None, limit: int = 100) -> AsyncIterator[RunStep]:
        """Steps of a run, oldest first (`order=asc`), starting after step id `after`, paging while `has_more`."""
        path = f"threads/{seg(ref.container_id)}/runs/{seg(ref.unit_id)}/steps"
        params: dict[str, str | int] = {"limit": clamp(limit), "order": "asc"}
        if after:
            params["after"] = after
        async for step in self._core.paginate(
            Endpoint.LIST_STEPS, path, params, _STEP_PAGE, thread_id=ref.container_id, run_id=ref.unit_id
        ):
            yield step

    async def get_step(self, ref: UnitRef, step_id: str) -> RunStep:
        path = f"threads/{seg(ref.container_id)}/runs/{seg(ref.unit_id)}/steps/{seg(step_id)}"
        body = await self._core.get(Endpoint.GET_STEP, path, {}, thread_id=ref.container_id, run_id=ref.unit_id)
        return self._core.parse_one(parse_step, body)

    async def get_assistant(self, assistant_id: str) -> Assistant:
        body = await self._core.get(Endpoint.GET_ASSISTANT, f"assistants/{seg(assistant_id)}", {})
        return self._core.parse_one(parse_assistant, body)


_RUN_PAGE = partial(parse_page, kind="run", parse=parse_run)
_STEP_PAGE = partial(parse_page, kind="run_step", parse=parse_step)
