"""The Responses protocol's reader and intake over the real poller and store: each response committed once, from
what the proxy, the listing or a webhook showed, with as few reads of its own as the API allows."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest

from stepscope.core.asyncstore import AsyncStore
from stepscope.core.health import ApiHealth
from stepscope.core.poller import Poller, PollSchedule
from stepscope.core.records import Commit, UnitRef
from stepscope.core.store import SqliteStore
from stepscope.errors import NotFound
from stepscope.protocols.responses.intake import ResponseIntake
from stepscope.protocols.responses.mapping import ResponseContext
from stepscope.protocols.responses.reader import ResponseReader, ResponseState
from stepscope.protocols.responses.records import Item, Response
from stepscope.protocols.responses.vocabulary import CONTAINER
from stepscope.testing import eventually
from tests.kit.fakes import Counters

pytestmark = pytest.mark.anyio
FAST = PollSchedule(fast=0.05, slow=0.2, grace=2)
QUEUED = Response("resp_1", "queued", created_at=1_000, background=True)
DONE = replace(QUEUED, status="completed", completed_at=1_004, output=(Item("message", "msg_1", status="completed"),))


@dataclass
class Server:
    """Responses by id as `GET /responses/{id}` answers them; counts the reads."""

    responses: dict[str, Response] = field(default_factory=dict)
    reads: list[str] = field(default_factory=list)

    async def get_response(self, response_id: str) -> Response:
        self.reads.append(response_id)
        if response_id not in self.responses:
            raise NotFound("no such response", status_code=404)
        return self.responses[response_id]


@dataclass
class Commits:
    commits: list[Commit[Response, Item, ResponseContext]] = field(default_factory=list)

    async def commit(self, commit: Commit[Response, Item, ResponseContext]) -> bool:
        self.commits.append(commit)
        return True

    @property
    def ids(self) -> list[str]:
        return [c.unit.id for c in self.commits]


@dataclass
class Rig:
    server: Server
    commits: Commits
    reader: ResponseReader
    poller: Poller[ResponseState]
    intake: ResponseIntake
    store: AsyncStore
    drops: Counters
    wall: list[float]


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    server, commits, drops, wall = Server(), Commits(), Counters(), [1_010.0]
    store = AsyncStore(SqliteStore(str(tmp_path / "state.db")))
    await store.start()
    reader = ResponseReader(server, commits, schedule=FAST, stuck_after_s=600, wall=lambda: wall[0])
    poller: Poller[ResponseState] = Poller(reader, store, drops, ApiHealth(), slow=FAST.slow)
    intake = ResponseIntake(poller, reader, store, drops=drops)
    await poller.start()
    await intake.start()
    yield Rig(server, commits, reader, poller, intake, store, drops, wall)
    await intake.stop()
    await poller.stop()
    await store.stop()


def wire(response: Response) -> dict[str, Any]:
    out: dict[str, Any] = {"id": response.id, "object": "response", "status": response.status,
                           "created_at": response.created_at, "completed_at": response.completed_at,
                           "background": response.background}  # fmt: skip
    out["output"] = [{"type": i.type, "id": i.id, "status": i.status} for i in response.output]
    return out


async def test_an_answer_seen_whole_costs_no_request(rig: Rig) -> None:
    """A response the proxy saw terminal (a JSON answer or a stream's last event) is committed with no read, its
    span ending at the server's completed_at."""
    rig.intake.seen(wire(DONE), None, at=1_009.5, streaming=False)
    await eventually(lambda: rig.commits.ids == ["resp_1"], what="the commit")
    assert rig.server.reads == []
    assert rig.commits.commits[0].finish == ResponseContext(observed_end=1_009.5)


async def test_a_background_response_is_read_once_per_interval_until_terminal(rig: Rig) -> None:
    """A queued answer is read with GET until terminal, never more often than the poll interval, and the observed
    end of one that failed is the read that found it so."""
    rig.server.responses["resp_1"] = QUEUED
    began = time.monotonic()
    rig.intake.seen(wire(QUEUED), "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", at=1_000.0,
                    streaming=False)  # fmt: skip
    await eventually(lambda: len(rig.server.reads) >= 3, what="three reads")
    rig.wall[0] = 1_020.0
    rig.server.responses["resp_1"] = replace(QUEUED, status="failed", error_code="server_error")
    await eventually(lambda: rig.commits.ids == ["resp_1"], what="the commit")
    elapsed = time.monotonic() - began
    context = rig.commits.commits[0].finish
    assert context is not None and context.observed_end == 1_020.0
    assert context.traceparent is not None  # the creating request's header
    assert len(rig.server.reads) <= elapsed / FAST.fast + 1  # at most one read per poll interval


async def test_seen_by_proxy_listing_and_webhook_is_committed_once(rig: Rig) -> None:
    """The same response shown by the proxy, then listed, then named by a webhook is committed once; after the
    reader forgets it, the store still knows it (a restart)."""
    rig.intake.seen(wire(DONE), None, at=1_005.0, streaming=False)
    assert await rig.intake.offer([DONE], at=1_006.0) in (0, 1)
    rig.intake.mentioned("resp_1")
    await eventually(lambda: rig.commits.ids == ["resp_1"], what="the commit")
    rig.intake.mentioned("resp_1")
    assert await rig.intake.offer([DONE], at=1_007.0) == 0
    fresh = ResponseReader(rig.server, rig.commits, schedule=FAST)
    other = ResponseIntake(rig.poller, fresh, rig.store, drops=rig.drops)  # as after a restart
    assert await other.offer([DONE], at=1_008.0) == 0
    await eventually(lambda: rig.intake.pending == 0, what="the queue drained")
    assert rig.commits.ids == ["resp_1"] and rig.server.reads == []


async def test_a_stream_keeps_reads_away_until_it_ends(rig: Rig) -> None:
    """While a stream reports a response, the reader does not read it; a stream cut short makes it read."""
    running = replace(QUEUED, status="in_progress", background=False)
    rig.server.responses["resp_1"] = running
    rig.intake.seen(wire(running), None, at=1_001.0, streaming=True)
    rig.intake.tool_timed("resp_1", "fc_1", 10, 20)
    await eventually(lambda: rig.poller.is_tracked("resp_1"), what="tracking")
    state = rig.poller.state_of("resp_1")
    await eventually(lambda: state is not None and bool(state.tool_times), what="the timing")
    assert rig.server.reads == []
    rig.server.responses["resp_1"] = replace(DONE, background=False)
    rig.intake.stream_ended("resp_1")
    await eventually(lambda: rig.commits.ids == ["resp_1"], what="the commit")
    assert rig.server.reads == ["resp_1"]
    finish = rig.commits.commits[0].finish
    assert finish is not None and finish.tool_times == {"fc_1": (10, 20)}


async def test_a_webhook_for_an_unknown_response_reads_it_once(rig: Rig) -> None:
    """A verified webhook naming a response nobody showed makes one read, then the commit."""
    rig.server.responses["resp_1"] = DONE
    rig.intake.mentioned("resp_1")
    await eventually(lambda: rig.commits.ids == ["resp_1"], what="the commit")
    assert rig.server.reads == ["resp_1"]


async def test_a_response_stuck_queued_is_given_up_and_counted(rig: Rig) -> None:
    """A response still queued past the bound after its creation is forgotten, counted as stuck_queued."""
    rig.server.responses["resp_1"] = QUEUED
    rig.wall[0] = QUEUED.created_at + 601
    rig.intake.mentioned("resp_1")
    await eventually(lambda: rig.drops.counts.get("stuck_queued") == 1, what="the drop")
    await eventually(lambda: not rig.poller.is_tracked("resp_1"), what="forgetting")
    assert rig.commits.ids == [] and await rig.store.active_runs() == []


async def test_unreadable_observations_are_counted_and_the_queue_is_bounded(tmp_path: Path) -> None:
    """An answer whose response cannot be parsed is counted as proxy_unreadable; past the queue bound,
    observations are counted as proxy_feed_full, never held."""
    server, commits, drops = Server(), Commits(), Counters()
    store = AsyncStore(SqliteStore(str(tmp_path / "s.db")))
    await store.start()
    reader = ResponseReader(server, commits, schedule=FAST)
    poller: Poller[ResponseState] = Poller(reader, store, drops, ApiHealth())
    intake = ResponseIntake(poller, reader, store, drops=drops, queue_max=2)
    for i in range(5):
        intake.seen({"id": f"resp_{i}", "object": "response"}, None, at=0.0, streaming=False)
    assert drops.counts == {"proxy_feed_full": 3}
    await intake.start()
    await eventually(lambda: drops.counts.get("proxy_unreadable") == 2, what="the unreadable ones")
    await intake.stop()
    await store.stop()


async def test_units_are_addressed_by_response_id_alone(rig: Rig) -> None:
    """Whatever way showed it, a response's unit is the project container and its id."""
    rig.server.responses["resp_1"] = QUEUED
    rig.intake.mentioned("resp_1")
    await eventually(lambda: rig.poller.is_tracked("resp_1"), what="tracking")
    state = rig.poller.state_of("resp_1")
    assert state is not None and state.ref == UnitRef(CONTAINER, "resp_1")
