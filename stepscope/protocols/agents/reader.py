"""The Agents protocol's `UnitReader`: one turn, committed once, when it is terminal.

A unit is a turn, addressed as `UnitRef(thread_id=session_id, run_id=turn_id)`; a subagent's turn as
`UnitRef(f"{session_id}/{subagent_id}", turn_id)`. Items carry no times, so nothing is committed while a turn runs:
the reader polls the turn (fast while in progress, backing off while queued or waiting) and, once it is terminal,
reads its items, the session's root agent (name and model, cached per session) and, for a root turn, the trace the
server published for it, then commits the turn with all of that as its finish context. The API publishes a turn's
trace a little after the turn ends and its listing does not wait, so a finished root turn without one is read
again up to `TRACE_POLLS` times before it is committed without it. The trace is an attachment and never holds its
turn back: one that cannot be had (over the body cap, behind a listing that does not end, or behind a listing that
failed on every one of those reads: an unreadable body, a server error) is counted as `trace_dropped` and the turn is
committed without it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from stepscope.contract.vocabulary import DropReason
from stepscope.core.poller import PollSchedule
from stepscope.core.records import NO_DROPS, Commit, Committer, Drops, UnitRef
from stepscope.errors import AuthError, InvalidObject, LimitExceeded, NotFound, RateLimited, SourceError
from stepscope.protocols.agents.client import AgentsClient
from stepscope.protocols.agents.mapping import TurnContext
from stepscope.protocols.agents.records import Item, SessionTrace, Turn

log = logging.getLogger("stepscope.agents")

WAITING = frozenset({"queued", "waiting"})
TRACE_POLLS = 3
SESSION_CACHE = 10_000

TurnCommit = Commit[Turn, Item, TurnContext]


@dataclass(slots=True)
class TurnState:
    ref: UnitRef
    turn: Turn | None = None
    waiting_polls: int = 0
    trace_polls: int = 0

    @property
    def session_id(self) -> str:
        return self.ref.container_id.partition("/")[0]

    @property
    def subagent_id(self) -> str | None:
        return self.ref.container_id.partition("/")[2] or None


class TurnReader:
    """Polls Agents API turns; a `UnitReader[TurnState]`. `capture_content` reads item content for span events."""

    def __init__(
        self,
        client: AgentsClient,
        committer: Committer[Turn, Item, TurnContext],
        *,
        schedule: PollSchedule,
        capture_content: bool = False,
        drops: Drops = NO_DROPS,
    ) -> None:
        self._client = client
        self._drops = drops
        self._committer = committer
        self._schedule = schedule
        self._content = capture_content
        self._agents: dict[str, tuple[str | None, str | None]] = {}  # session id -> (root agent name, model)

    def begin(self, ref: UnitRef, cursor: str | None, committed: set[str]) -> TurnState:
        return TurnState(ref)

    def status(self, state: TurnState) -> str:
        return state.turn.status if state.turn is not None else "pending"

    def busy(self, state: TurnState) -> bool:
        return False  # a session takes new turns while one runs (subagents); discovery lists every session

    async def poll(self, state: TurnState) -> float | None:
        previous = state.turn.status if state.turn is not None else None
        turn = await self._read_turn(state)
        state.turn = turn
        if not turn.is_terminal:
            same = turn.status in WAITING and turn.status == previous
            state.waiting_polls = state.waiting_polls + 1 if same else 1
            if turn.status in WAITING:
                return self._schedule.waiting(state.waiting_polls)
            return self._schedule.fast
        published = None
        if turn.subagent_id is None and state.subagent_id is None:
            published, final = await self._published(state.session_id, turn, state.trace_polls)
            if published is None and not final and state.trace_polls < TRACE_POLLS:
                state.trace_polls += 1
                return self._schedule.fast
        items = await self._items(state, turn)
        name, model = await self._agent(state.session_id)
        context = TurnContext(agent_name=name, model=model, items=items, published=published)
        if not await self._committer.commit(TurnCommit(state.ref, turn, finish=context, finished=True)):
            return self._schedule.slow
        return None

    async def _read_turn(self, state: TurnState) -> Turn:
        subagent = state.subagent_id
        if subagent is None:
            return await self._client.get_turn(state.session_id, state.ref.unit_id)
        return await self._client.get_subagent_turn(state.session_id, subagent, state.ref.unit_id)

    async def _items(self, state: TurnState, turn: Turn) -> list[Item]:
        subagent = state.subagent_id
        if subagent is None:
            listing = self._client.list_turn_items(state.session_id, turn.id, content=self._content)
        else:
            listing = self._client.list_subagent_turn_items(state.session_id, subagent, turn.id, content=self._content)
        return [item async for item in listing]

    async def _published(self, session_id: str, turn: Turn, tries: int) -> tuple[SessionTrace | None, bool]:
        """The trace the server published for a root turn, read newest first down to the turn's creation (never the
        whole session from its oldest). A trace that cannot be had (over the body cap, behind a listing that does not
        end, deeper than the depth cap: then the listing skips it) is left out, counted as `trace_dropped`, and the
        turn is committed without it: an attachment never holds back its record. A listing that fails otherwise (an
        unreadable body, a server error) counts as one of the turn's `TRACE_POLLS` reads, `tries` of which were made
        before this one, and the trace is left out once they are spent; a rate limit or a rejected credential is the
        API's state, not the trace's, and is raised for the poller. Returns the trace (or None) and whether that
        answer is final (no use asking again)."""
        try:
            async for trace in self._client.list_traces(session_id, newest_first=True):
                if trace.id == turn.id:
                    return trace, True
                if trace.created_at < turn.created_at:
                    break
        except LimitExceeded as exc:
            return self._left_out(turn, exc.reason)
        except (RateLimited, AuthError):
            raise
        except SourceError as exc:
            if tries < TRACE_POLLS:
                log.debug("turn %s: listing its published trace failed (%s); reading it again", turn.id, exc)
                return None, False
            return self._left_out(turn, f"{TRACE_POLLS + 1} listings failed, the last: {exc}")
        return None, False

    def _left_out(self, turn: Turn, reason: str) -> tuple[None, bool]:
        log.warning("turn %s: its published trace is left out (%s)", turn.id, reason)
        self._drops.dropped(DropReason.TRACE_DROPPED)
        return None, True

    async def _agent(self, session_id: str) -> tuple[str | None, str | None]:
        cached = self._agents.get(session_id)
        if cached is not None:
            return cached
        try:
            session = await self._client.get_session(session_id)
        except NotFound:
            found: tuple[str | None, str | None] = (None, None)
        except (SourceError, InvalidObject):
            return None, None  # the span names the agent id; try again for the next turn
        else:
            found = (session.agent_name, session.model)
        if len(self._agents) >= SESSION_CACHE:
            self._agents.pop(next(iter(self._agents)))
        self._agents[session_id] = found
        return found
