"""Response discovery: the project listing where the server has one, and nothing to configure beyond it.

Foundry's Agent Service lists a project's stored responses (`GET /responses?order=desc`); each pass reads it
newest first, one listing for the whole project (with the `agent_name` filter when `STEPSCOPE_AGENTS` names one
agent; with several, one unfiltered listing whose responses are kept by agent name), down to a floor: the
lookback horizon on the first pass, then the newest `created_at` a complete listing saw, less `OVERLAP_S` for
responses created in the same second. Responses listed lately are remembered (by id, down to the floor), so the
overlap costs nothing. What a pass finds goes to `ResponseIntake.offer`, with the listed copy and the moment the
listing was read (after its last page, so never before a listed response ended): a response listed terminal is
committed without a request of its own.

OpenAI lists no responses: the listing answers 404. Discovery then says once that responses are found through the
proxy and webhooks, and stops listing; `idle_reason` says what to configure when neither is. A listing cut short by
a bound (the page cap, a repeated cursor) keeps what it read, says so once per episode, and counts
`listing_unbounded`; a failed one keeps the floor, so the next pass reads as far back again.

With sharding (`INDEX/COUNT`) a replica keeps only the responses whose stable hash falls in its shard.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from typing import Protocol

from stepscope.contract.vocabulary import DropReason
from stepscope.core.discovery import DiscoverySeams, DiscoverySettings, PeriodicDiscovery
from stepscope.errors import LimitExceeded, NotFound, SourceError
from stepscope.protocols.responses.records import Response
from stepscope.protocols.responses.vocabulary import CONTAINER

log = logging.getLogger("stepscope.discovery")

OVERLAP_S = 2.0
"""Seconds below the newest listed `created_at` the next listing reads again: `created_at` has 1 s resolution."""
UNLISTED = ("this server lists no responses (GET /responses answered 404, as at OpenAI): responses are found "
            "through the proxy (STEPSCOPE_PROXY_LISTEN) and webhooks (STEPSCOPE_WEBHOOK_SECRET)")  # fmt: skip
IDLE = ("this server lists no responses, and neither the proxy (STEPSCOPE_PROXY_LISTEN) nor webhooks "
        "(STEPSCOPE_WEBHOOK_SECRET) are configured: set one of them")  # fmt: skip


class ResponseLister(Protocol):
    """What discovery reads (`ResponsesClient` provides it)."""

    def list_responses(self, *, agent_name: str | None = None) -> AsyncIterator[Response]: ...


class ResponseOffers(Protocol):
    """Where discovery hands what it found (`ResponseIntake`)."""

    async def offer(self, responses: Sequence[Response], *, at: float) -> int: ...


class ResponseDiscovery(PeriodicDiscovery):
    """Lists the project's responses each pass; see the module docstring. `elsewhere`: the proxy or webhooks are
    configured, so a server without a listing still has a way to find responses."""

    name = "responses discovery"

    def __init__(
        self,
        lister: ResponseLister,
        offers: ResponseOffers,
        settings: DiscoverySettings,
        seams: DiscoverySeams,
        *,
        agents: tuple[str, ...] = (),
        elsewhere: bool = False,
    ) -> None:
        super().__init__(settings, seams)
        self._lister = lister
        self._offers = offers
        self._agents = frozenset(agents)
        self._filter = agents[0] if len(agents) == 1 else None
        self._elsewhere = elsewhere
        self._listing = True
        self._newest: int | None = None  # the newest created_at a complete listing saw
        self._listed: dict[str, int] = {}  # response id -> created_at, of responses listed at or above the floor
        self._cut_logged = False

    def watched(self) -> list[str]:
        """The project, while it can be listed."""
        return [CONTAINER] if self._listing else []

    def idle_reason(self) -> str | None:
        if self._listing or self._elsewhere:
            return None
        return IDLE

    async def run_once(self) -> int:
        """One pass: list down to the floor and offer what is new; returns how many responses it started tracking."""
        if not self._listing:
            self.last_pass = self._wall()
            return 0
        now = self._wall()
        floor = now - self.settings.lookback_s if self._newest is None else self._newest - OVERLAP_S
        listed: list[Response] = []
        complete = False
        try:
            async for response in self._lister.list_responses(agent_name=self._filter):
                if response.created_at < floor:
                    break
                listed.append(response)
            complete = True
        except NotFound:
            self._listing = False
            log.log(logging.INFO if self._elsewhere else logging.WARNING, "%s", UNLISTED if self._elsewhere else IDLE)
            self.last_pass = self._wall()
            return 0
        except LimitExceeded as exc:  # the page cap: the newest were read; say once that older ones were not
            self._drops.dropped(DropReason.LISTING_UNBOUNDED)
            if not self._cut_logged:
                log.warning("listing responses stopped early (%s); older responses in the lookback are not read", exc)
                self._cut_logged = True
            complete = True  # what it read moves the floor: a listing that never ends would otherwise repeat
        except SourceError as exc:  # the API health says which state it means; the floor stays
            self._api.failed(exc)
        else:
            self._cut_logged = False
        fresh = [r for r in listed if r.id not in self._listed and self._wanted(r)]
        # Seen when read, not when the pass began: a response that ended while its page was awaited must not get
        # an observed end before its real one.
        found = await self._offers.offer(fresh, at=self._wall()) if fresh else 0
        for response in listed:
            self._listed[response.id] = response.created_at
        if complete:
            self._api.ok()
            if listed:
                self._newest = max(self._newest or 0, *(r.created_at for r in listed))
            keep = (self._newest or now) - 2 * OVERLAP_S
            self._listed = {rid: created for rid, created in self._listed.items() if created >= keep}
        self.last_pass = self._wall()
        return found

    def _wanted(self, response: Response) -> bool:
        """In this shard, and of a chosen agent when `STEPSCOPE_AGENTS` names several."""
        if not self.owns(response.id):
            return False
        if self._agents and self._filter is None:
            return response.agent is not None and response.agent.name in self._agents
        return True
