"""A root turn's published trace is an attachment: a trace listing that keeps failing is read a bounded number of
times, then the turn is committed without it and the trace counted as `trace_dropped`; a rate limit stays the
poller's business; a listing that recovers in time still brings the trace."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import cast

import pytest

from stepscope.core.poller import PollSchedule
from stepscope.core.records import UnitRef
from stepscope.errors import RateLimited, SourceError, Unavailable
from stepscope.protocols.agents.client import AgentsClient
from stepscope.protocols.agents.reader import TRACE_POLLS, TurnCommit, TurnReader
from stepscope.protocols.agents.records import AgentSession, Item, SessionTrace, Turn
from tests.kit.fakes import Counters

pytestmark = pytest.mark.anyio

TURN = Turn(id="turn_1", session_id="sess_1", agent_id="agent_1", status="completed", created_at=1_800_000_000,
            started_at=1_800_000_000, completed_at=1_800_000_005)  # fmt: skip
TRACE = SessionTrace(id="turn_1", session_id="sess_1", created_at=1_800_000_000, otlp={"resourceSpans": []})
UNREADABLE = Unavailable("list_agent_traces: HTTP 200: unreadable JSON body", status_code=200)


@dataclass
class Api:
    """The Agents client as the reader uses it: one finished turn; `failures` are raised by the next trace
    listings, in order, before it lists `TRACE`."""

    failures: list[SourceError] = field(default_factory=list)
    listings: int = 0

    async def get_turn(self, session_id: str, turn_id: str) -> Turn:
        return TURN

    async def list_turn_items(self, session_id: str, turn_id: str, *, content: bool = False) -> AsyncIterator[Item]:
        none: tuple[Item, ...] = ()
        for item in none:
            yield item

    async def list_traces(self, session_id: str, *, newest_first: bool = False) -> AsyncIterator[SessionTrace]:
        self.listings += 1
        if self.failures:
            raise self.failures.pop(0)
        yield TRACE

    async def get_session(self, session_id: str) -> AgentSession:
        return AgentSession(id=session_id, status="idle", created_at=1_800_000_000, agent_id="agent_1")


@dataclass
class Commits:
    commits: list[TurnCommit] = field(default_factory=list)

    async def commit(self, commit: TurnCommit) -> bool:
        self.commits.append(commit)
        return True


def _reader(api: Api, commits: Commits, drops: Counters) -> TurnReader:
    return TurnReader(cast("AgentsClient", api), commits, schedule=PollSchedule(fast=0.01, slow=0.05), drops=drops)


async def test_a_trace_listing_that_keeps_failing_is_read_a_bounded_number_of_times() -> None:
    """A trace listing answering an unreadable body every time is read `TRACE_POLLS` + 1 times; then the turn is
    committed without its trace and `trace_dropped` is counted once."""
    api, commits, drops = Api([UNREADABLE] * 100), Commits(), Counters()
    reader = _reader(api, commits, drops)
    state = reader.begin(UnitRef("sess_1", "turn_1"), None, set())
    polls = [await reader.poll(state) for _ in range(TRACE_POLLS + 1)]
    assert polls == [0.01] * TRACE_POLLS + [None]
    assert api.listings == TRACE_POLLS + 1
    (commit,) = commits.commits
    assert commit.finish is not None and commit.finish.published is None
    assert drops.counts == {"trace_dropped": 1}


async def test_a_trace_listing_that_recovers_in_time_brings_the_trace() -> None:
    """Two failed listings (a server error, an unreadable body) and then a good one: the turn is committed with its
    trace, and nothing is counted as dropped."""
    api, commits, drops = Api([Unavailable("HTTP 503", status_code=503), UNREADABLE]), Commits(), Counters()
    reader = _reader(api, commits, drops)
    state = reader.begin(UnitRef("sess_1", "turn_1"), None, set())
    assert [await reader.poll(state) for _ in range(3)] == [0.01, 0.01, None]
    (commit,) = commits.commits
    assert commit.finish is not None and commit.finish.published == TRACE
    assert drops.counts == {}


async def test_a_rate_limited_trace_listing_is_the_pollers_business() -> None:
    """A rate limit on the trace listing is raised for the poller (which waits for the server's delay) and spends
    none of the turn's reads."""
    api, commits, drops = Api([RateLimited("HTTP 429", status_code=429, retry_after=2.0)] * 5), Commits(), Counters()
    reader = _reader(api, commits, drops)
    state = reader.begin(UnitRef("sess_1", "turn_1"), None, set())
    for _ in range(5):
        with pytest.raises(RateLimited):
            await reader.poll(state)
    assert state.trace_polls == 0 and commits.commits == [] and drops.counts == {}
    assert await reader.poll(state) is None
    assert commits.commits[0].finish is not None and commits.commits[0].finish.published == TRACE
