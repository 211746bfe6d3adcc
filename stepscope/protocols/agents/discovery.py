"""Session discovery for the Agents API: which turns to track, with nothing configured but the key and base URL.

Every pass lists the project's sessions newest first (`GET /agents/sessions`, one listing per agent of
`STEPSCOPE_AGENTS`, or one for all) down to the lookback horizon: paging stops at the first session created before
`now - lookback`, at the first followed session older than the newest one the previous complete listing saw, or at
the client's page cap. Each session it finds is *followed*. For every followed session a pass lists the turns after
the last turn it has seen (oldest first) and tracks each turn created inside the lookback that the store does not
know yet, as `UnitRef(thread_id=session_id, run_id=turn_id)`; so a new turn on an old session is found as long as
the session is followed. A turn whose id is already tracked or known under another session is a collision: counted
(`unit_id_collision`), logged once, and only the first is followed. A session stops being followed once its last
activity (the listing's `last_active_at`, its turns' times, a webhook) is older than the lookback and no turn of it
is tracked. `session_event()` (a verified webhook) follows a session and wakes the loop so its turns are listed at
once.

Sessions are listed by creation, so a session created before the lookback that becomes active again is found only
while it is still followed, or through a webhook. The followed set is kept in the store's `watched` table (session
id as `thread_id`, no run), so it survives a restart; the turn cursor and the activity do not: after a restart each
followed session's turns are listed once from the start (the store's known turns are skipped), and a session
without turns is read once (`GET /agents/sessions/{id}`) for its `last_active_at`.

Bounds: at most `max_followed` sessions (past it new ones are counted as `sessions_full` and logged once per
episode); one pass lists the turns of at most `pass_budget` sessions, sessions a webhook or a newer
`last_active_at` announced first, then the least recently listed, `DISCOVERY_CONCURRENCY` at once; when more are
followed than a pass lists, that is logged once per episode. With sharding (`INDEX/COUNT`) a replica follows only
the sessions whose stable hash falls in its shard.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import Protocol

from stepscope.contract.vocabulary import DropReason
from stepscope.core.discovery import DISCOVERY_CONCURRENCY, DiscoverySeams, DiscoverySettings, PeriodicDiscovery
from stepscope.core.records import UnitRef
from stepscope.errors import (
    BadRequest,
    InvalidObject,
    LimitExceeded,
    NotFound,
    SourceError,
    StoreError,
)
from stepscope.protocols.agents.records import AgentSession, Subagent, Turn

log = logging.getLogger("stepscope.discovery")

DEFAULT_MAX_FOLLOWED = 10_000


class SessionSource(Protocol):
    """What discovery reads (`AgentsClient` provides it)."""

    async def get_session(self, session_id: str) -> AgentSession: ...

    def list_sessions(self, *, agent_id: str | None = None) -> AsyncIterator[AgentSession]: ...

    def list_turns(self, session_id: str, *, after: str | None = None) -> AsyncIterator[Turn]: ...

    def list_subagents(self, session_id: str) -> AsyncIterator[Subagent]: ...

    def list_subagent_turns(
        self, session_id: str, subagent_id: str, *, after: str | None = None
    ) -> AsyncIterator[Turn]: ...


@dataclass(slots=True)
class _Followed:
    active_at: float | None = None  # latest activity known (Unix s); None: not known yet (loaded from the store)
    cursor: str | None = None  # the last turn listed; None: list from the first
    listed_at: float = -math.inf  # monotonic time of the last turn listing
    urgent: bool = False  # announced by a webhook or a newer last_active_at: listed first
    subagents_at: float = -math.inf  # the activity time up to which the session's subagent turns were listed
    subagent_cursors: dict[str, str] = field(default_factory=dict)  # subagent id -> its last turn listed


def _latest(turn: Turn) -> int:
    return max(t for t in (turn.created_at, turn.started_at, turn.completed_at) if t is not None)


class SessionDiscovery(PeriodicDiscovery):
    """Finds new turns of followed sessions every `settings.interval_s` seconds; a `PeriodicDiscovery`.

    `agents` restricts the session listing to those root agents (empty: all). Sessions refused or gone are counted
    (`sessions_full`, `not_found`). A webhook or the proxy (`session_event`) asks the poller to poll the session's
    latest tracked turn at once.
    """

    def __init__(
        self,
        source: SessionSource,
        settings: DiscoverySettings,
        seams: DiscoverySeams,
        *,
        agents: Iterable[str] = (),
        max_followed: int = DEFAULT_MAX_FOLLOWED,
    ) -> None:
        super().__init__(settings, seams)
        self._source = source
        self._agents: list[str | None] = list(dict.fromkeys(agents)) or [None]
        self._budget = max(1, settings.pass_budget)
        self._max_followed = max(1, max_followed)
        self._followed: dict[str, _Followed] = {}
        self._loaded = False
        self._unrecorded: dict[str, bool] = {}  # session -> followed (True) or unfollowed (False), not yet stored
        self._newest: dict[str | None, int] = {}  # agent filter -> newest created_at of its last complete listing
        self._full_logged = self._behind_logged = self._cap_logged = False

    def watched(self) -> list[str]:
        """The sessions followed now."""
        return list(self._followed)

    def idle_reason(self) -> str | None:
        """Always None: the project's sessions are listed, nothing needs configuring."""
        return None

    # --- webhooks -----------------------------------------------------------------------------------------------

    def session_event(self, session_id: str, event_type: str) -> None:
        """A verified webhook about `session_id`: follow it and list its turns at once. Never raises."""
        if not self.owns(session_id) or self.stopping:
            return
        followed = self._follow(session_id, self._wall(), urgent=True)
        if followed is None:
            return
        cursor = followed.cursor
        if cursor is not None and self._tracker.is_tracked(cursor):
            self._tracker.poll_soon(cursor)  # the session's latest turn may have just ended
        log.debug("webhook %s for session %s", event_type, session_id)
        self.wake()

    async def run_once(self) -> int:
        """One pass: list sessions, forget idle ones, list the turns of the due ones; returns turns tracked."""
        await self._load()
        with contextlib.suppress(StoreError):  # logged once per episode by the store; pruned on a later pass
            await self._store.prune(self._wall() - 2 * self.settings.lookback_s)
        for agent_id in self._agents:
            await self._list_sessions(agent_id)
        self._expire()
        batch = self._pick()
        gate = asyncio.Semaphore(DISCOVERY_CONCURRENCY)  # a few listings in flight, never thousands

        async def discover(session_id: str) -> int:
            async with gate:
                return 0 if self.stopping else await self._discover(session_id)

        found = sum(await asyncio.gather(*(discover(s) for s in batch)))
        await self._record()
        self.last_pass = self._wall()
        return found

    # --- following ----------------------------------------------------------------------------------------------

    async def _load(self) -> None:
        """Follow the sessions a previous process followed (once)."""
        if self._loaded:
            return
        try:
            rows = await self._store.watched()
        except StoreError:  # logged once per episode by the store; loaded on a later pass
            return
        self._loaded = True
        for session_id, run_id in rows:
            if run_id is None and self.owns(session_id):
                self._followed.setdefault(session_id, _Followed())

    def _follow(self, session_id: str, active_at: float, *, urgent: bool = False) -> _Followed | None:
        """Follow a session (recorded in the store) or refresh its activity; None when the bound refuses it."""
        followed = self._followed.get(session_id)
        if followed is None:
            if len(self._followed) >= self._max_followed:
                self._drops.dropped(DropReason.SESSIONS_FULL, 1)
                if not self._full_logged:
                    log.warning("following %d sessions, the maximum: newer sessions are not followed until older "
                                "ones go idle past the lookback", self._max_followed)  # fmt: skip
                    self._full_logged = True
                return None
            self._unrecorded[session_id] = True  # written by the pass, off the event loop: this runs in a webhook
            followed = self._followed[session_id] = _Followed()
        if followed.active_at is None or active_at > followed.active_at:
            followed.active_at = active_at
        followed.urgent = followed.urgent or urgent
        return followed

    def _unfollow(self, session_id: str) -> None:
        self._followed.pop(session_id, None)
        self._unrecorded[session_id] = False
        if self._full_logged and len(self._followed) < self._max_followed:
            self._full_logged = False

    async def _record(self) -> None:
        """Write the sessions followed and unfollowed since the last pass to the store, so a restart follows the
        same ones; what fails (logged) is tried again next pass, and is only lost to a restart."""
        for session_id, followed in list(self._unrecorded.items()):
            try:
                if followed:
                    await self._store.watch(session_id, None, self._wall())
                else:
                    await self._store.unwatch(session_id, None)
            except StoreError:  # logged once per episode by the store; written on a later pass
                return
            if self._unrecorded.get(session_id) is followed:
                del self._unrecorded[session_id]

    async def _list_sessions(self, agent_id: str | None) -> None:
        """Follow the sessions created since the last complete listing, down to the horizon.

        A listing that fails part-way still follows what it read, but keeps the previous watermark, so the next one
        pages as far again and misses no session.
        """
        horizon = self._wall() - self.settings.lookback_s
        newest = self._newest.get(agent_id)
        seen: list[AgentSession] = []
        complete = False
        try:
            async for session in self._source.list_sessions(agent_id=agent_id):
                if session.created_at < horizon:
                    break
                if newest is not None and session.created_at < newest and session.id in self._followed:
                    break  # older ones were listed by a complete listing before
                seen.append(session)
            complete = True
        except LimitExceeded as exc:  # the page cap: follow the newest ones, say once that older ones were not read
            if not self._cap_logged:
                log.warning("listing sessions stopped early (%s); older sessions in the lookback are not followed", exc)
                self._cap_logged = True
        except SourceError as exc:  # the API health says which state it means
            self._api.failed(exc)
        for session in seen:
            if not self.owns(session.id):
                continue
            active = max(session.created_at, session.last_active_at or 0)
            known = self._followed.get(session.id)
            newer = known is not None and known.active_at is not None and active > known.active_at
            if active >= horizon:
                self._follow(session.id, active, urgent=newer)
        if complete:
            self._api.ok()
            if seen:
                self._newest[agent_id] = max(newest or 0, *(s.created_at for s in seen))

    def _expire(self) -> None:
        """Stop following sessions idle for the whole lookback whose turns are no longer tracked."""
        horizon = self._wall() - self.settings.lookback_s
        busy = self._tracker.busy_containers()
        idle = [
            sid for sid, f in self._followed.items()
            if f.active_at is not None and f.active_at < horizon and sid not in busy
            and (f.cursor is None or not self._tracker.is_tracked(f.cursor))
        ]  # fmt: skip
        for session_id in idle:
            self._unfollow(session_id)
        if idle:
            log.debug("stopped following %d session(s) idle for %.0f s", len(idle), self.settings.lookback_s)

    def _pick(self) -> list[str]:
        """At most `budget` sessions: announced ones first, then the least recently listed."""
        order = sorted(self._followed, key=lambda s: (not self._followed[s].urgent, self._followed[s].listed_at))
        behind = len(order) > self._budget
        if behind and not self._behind_logged:
            log.warning("following %d sessions, listing the turns of %d per pass (every %.0f s): a new turn may "
                        "wait several passes", len(order), self._budget, self.settings.interval_s)  # fmt: skip
        elif not behind and self._behind_logged:
            log.info("following %d sessions: every session's turns are listed each pass again", len(order))
        self._behind_logged = behind
        return order[: self._budget]

    async def _discover(self, session_id: str) -> int:
        """List a session's turns after its cursor and track the new ones; returns how many were tracked."""
        followed = self._followed.get(session_id)
        if followed is None:
            return 0
        followed.listed_at, followed.urgent = self._monotonic(), False
        horizon = self._wall() - self.settings.lookback_s
        found = 0
        try:
            async for turn in self._source.list_turns(session_id, after=followed.cursor):
                latest = _latest(turn)
                followed.active_at = max(followed.active_at or latest, latest)
                if turn.created_at >= horizon and await self._new(UnitRef(session_id, turn.id)):
                    if self._tracker.track(UnitRef(session_id, turn.id)):
                        found += 1
                    elif not self._tracker.is_tracked(turn.id):
                        break  # no room (counted by the tracker): the cursor stays, so it is listed again
                followed.cursor = turn.id
            if followed.active_at is not None and followed.active_at > followed.subagents_at:
                found += await self._discover_subagents(session_id, followed, horizon)
        except NotFound:
            self._unfollow(session_id)
            self._drops.dropped(DropReason.NOT_FOUND, 1)
            log.info("session %s not found; no longer following it", session_id)
            return found
        except BadRequest as exc:  # e.g. the cursor's turn is gone: list from the start (known turns are skipped)
            log.debug("listing turns of %s after %s refused: %s", session_id, followed.cursor, exc)
            followed.cursor = None
            return found
        except SourceError as exc:  # the API health says which state it means
            self._api.failed(exc)
            return found
        except InvalidObject as exc:
            log.debug("listing turns of %s failed: %s", session_id, exc)  # counted by the client
            return found
        except StoreError:  # logged once per episode by the store; listed again next pass
            return found
        self._api.ok()
        if followed.active_at is None:  # no turn, and followed before a restart: ask the session itself
            await self._read_activity(session_id, followed)
        return found

    async def _new(self, ref: UnitRef) -> bool:
        """Whether a listed turn is one to track: neither tracked nor known to the store. The same id tracked or known
        under another container (the server gave two turns one id) is a collision, counted as
        `unit_id_collision` and logged once by the poller's `track` or by `known`, and the first one stays followed."""
        if self._tracker.is_tracked(ref.unit_id):
            self._tracker.track(ref)  # the same unit: a no-op; the same id in another session: a counted collision
            return False
        return not await self.known(ref)

    async def _discover_subagents(self, session_id: str, followed: _Followed, horizon: float) -> int:
        """Track the new turns of the session's subagents, as `UnitRef(f"{session}/{subagent}", turn)`.

        Listed only when the session was active since the last listing (a subagent runs inside a root turn), and a
        subagent closed before then is not listed again. Raises what the client raises.
        """
        found = 0
        checked = followed.subagents_at
        async for subagent in self._source.list_subagents(session_id):
            if subagent.closed_at is not None and subagent.closed_at < checked:
                continue
            container = f"{session_id}/{subagent.id}"
            after = followed.subagent_cursors.get(subagent.id)
            async for turn in self._source.list_subagent_turns(session_id, subagent.id, after=after):
                if turn.created_at >= horizon and await self._new(UnitRef(container, turn.id)):
                    if self._tracker.track(UnitRef(container, turn.id)):
                        found += 1
                    elif not self._tracker.is_tracked(turn.id):
                        return found  # no room (counted by the tracker): listed again next time
                followed.subagent_cursors[subagent.id] = turn.id
        followed.subagents_at = followed.active_at or checked
        return found

    async def _read_activity(self, session_id: str, followed: _Followed) -> None:
        """Set the activity of a session without turns from its `last_active_at` (now, when it cannot be read)."""
        try:
            session = await self._source.get_session(session_id)
        except NotFound:
            self._unfollow(session_id)
            self._drops.dropped(DropReason.NOT_FOUND, 1)
            return
        except (SourceError, InvalidObject) as exc:
            log.debug("reading session %s failed: %s", session_id, exc)
            followed.active_at = self._wall()  # keep it a lookback from now rather than guess it idle
            return
        followed.active_at = max(session.created_at, session.last_active_at or 0)
