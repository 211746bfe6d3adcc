"""Response discovery: the project listing read newest first down to a floor, one listing per pass, and a server
without a listing said once."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field

import pytest

from stepscope.core.discovery import DiscoverySeams, DiscoverySettings
from stepscope.errors import LimitExceeded, NotFound, SourceError
from stepscope.protocols.responses.discovery import IDLE, ResponseDiscovery
from stepscope.protocols.responses.records import AgentReference, Response
from tests.kit.fakes import Counters, RecordingTracker

pytestmark = pytest.mark.anyio
NOW = 10_000.0


@dataclass
class Project:
    """The listing: responses newest first; counts listings and responses yielded; `fail` is raised after the
    responses yielded so far."""

    responses: list[Response] = field(default_factory=list)
    listings: list[str | None] = field(default_factory=list)
    yielded: int = 0
    fail: Exception | None = None
    fail_after: int = 0

    def add(self, rid: str, created_at: int, status: str = "completed", agent: str | None = None) -> None:
        ref = AgentReference(agent) if agent else None
        self.responses.insert(0, Response(rid, status, created_at, created_at + 1, agent=ref))

    async def list_responses(self, *, agent_name: str | None = None) -> AsyncIterator[Response]:
        self.listings.append(agent_name)
        for i, response in enumerate(self.responses):
            if self.fail is not None and i == self.fail_after:
                raise self.fail
            if agent_name is None or (response.agent is not None and response.agent.name == agent_name):
                self.yielded += 1
                yield response


@dataclass
class Offers:
    offered: list[str] = field(default_factory=list)
    moments: list[float] = field(default_factory=list)

    async def offer(self, responses: Sequence[Response], *, at: float) -> int:
        self.offered += [r.id for r in responses]
        self.moments.append(at)
        return len(responses)


def discovery(
    project: Project,
    offers: Offers,
    drops: Counters | None = None,
    wall: Callable[[], float] = lambda: NOW,
    **kw: object,
) -> ResponseDiscovery:
    tracker = RecordingTracker()
    seams = DiscoverySeams(store=None, tracker=tracker, health=tracker, drops=drops or Counters(),  # type: ignore[arg-type]
                           wall=wall)  # fmt: skip
    return ResponseDiscovery(project, offers, DiscoverySettings(lookback_s=3600), seams, **kw)  # type: ignore[arg-type]


async def test_first_pass_reads_the_lookback_later_passes_only_what_is_new() -> None:
    """The first pass offers every response inside the lookback (not older ones); later passes read only down
    to the newest seen, so a quiet project costs one short listing and offers nothing twice."""
    project, offers = Project(), Offers()
    project.add("resp_old", int(NOW - 4000))
    for i in range(5):
        project.add(f"resp_{i}", int(NOW - 100 + i))
    d = discovery(project, offers)
    assert await d.run_once() == 5
    assert offers.offered == [f"resp_{i}" for i in reversed(range(5))]
    read = project.yielded
    assert await d.run_once() == 0
    assert project.yielded - read == 4  # the two-second overlap (3) and the one below it that ends the listing
    project.add("resp_new", int(NOW - 50))
    assert await d.run_once() == 1 and offers.offered[-1] == "resp_new"
    assert project.listings == [None, None, None] and d.watched() == ["project"]


async def test_one_agent_is_filtered_by_the_server_several_by_name() -> None:
    """One agent name uses the listing's own filter; several use one unfiltered listing kept by agent name."""
    project, offers = Project(), Offers()
    project.add("resp_a", int(NOW - 10), agent="alpha")
    project.add("resp_b", int(NOW - 9), agent="beta")
    project.add("resp_c", int(NOW - 8))
    assert await discovery(project, offers, agents=("alpha",)).run_once() == 1
    assert project.listings == ["alpha"] and offers.offered == ["resp_a"]
    two = Offers()
    assert await discovery(project, two, agents=("alpha", "beta")).run_once() == 2
    assert project.listings[-1] is None and sorted(two.offered) == ["resp_a", "resp_b"]


async def test_a_server_without_a_listing_is_said_once(caplog: pytest.LogCaptureFixture) -> None:
    """A 404 listing (OpenAI) stops listing, is logged once, and makes discovery idle unless the proxy or
    webhooks are configured."""
    project = Project(fail=NotFound("no route", status_code=404))
    project.add("resp_1", int(NOW))
    alone = discovery(project, Offers())
    with caplog.at_level(logging.INFO, logger="stepscope.discovery"):
        assert await alone.run_once() == 0
        assert await alone.run_once() == 0
    assert len(project.listings) == 1 and alone.watched() == []
    assert alone.idle_reason() == IDLE
    assert [r.levelno for r in caplog.records] == [logging.WARNING]
    helped = discovery(project, Offers(), elsewhere=True)
    await helped.run_once()
    assert helped.idle_reason() is None


async def test_a_listing_cut_short_keeps_what_it_read() -> None:
    """A listing that breaks a bound offers the responses read before it broke and counts listing_unbounded; a
    failed one offers what it read but keeps the floor, so the next pass reads as far back again."""
    drops = Counters()
    project, offers = Project(), Offers()
    for i in range(4):
        project.add(f"resp_{i}", int(NOW - 100 + i))
    project.fail, project.fail_after = LimitExceeded("page cap", reason="page_cap"), 2
    d = discovery(project, offers, drops)
    assert await d.run_once() == 2 and drops.counts == {"listing_unbounded": 1}
    failing, later = Project(), Offers()
    for i in range(4):
        failing.add(f"resp_{i}", int(NOW - 100 + i))
    failing.fail, failing.fail_after = SourceError("outage", status_code=503), 2
    flaky = discovery(failing, later)
    assert await flaky.run_once() == 2
    failing.fail = None
    assert await flaky.run_once() == 2 and sorted(later.offered) == [f"resp_{i}" for i in range(4)]


async def test_what_a_listing_finds_is_offered_as_seen_when_it_was_read() -> None:
    """Listed responses are offered with the moment the listing was read, after its last page, not the moment the
    pass began: a response that ended while the pages were awaited is never seen terminal before it ended."""
    clock = [NOW]

    class SlowProject(Project):
        async def list_responses(self, *, agent_name: str | None = None) -> AsyncIterator[Response]:
            async for response in super().list_responses(agent_name=agent_name):
                clock[0] += 1.5  # each response comes with a page that took a second and a half to read
                yield response

    project, offers = SlowProject(), Offers()
    for i in range(3):
        project.add(f"resp_{i}", int(NOW - 10 + i))
    assert await discovery(project, offers, wall=lambda: clock[0]).run_once() == 3
    assert offers.moments == [NOW + 4.5]
