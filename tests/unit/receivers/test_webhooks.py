"""POST /v1/webhooks over a real listener: the simulator's signed session events reach `session_event`; unsigned,
forged, stale, tampered, oversized and replayed deliveries are refused or ignored, counted, and change nothing."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry

from stepscope.export.selfmetrics import SelfMetrics
from stepscope.protocols.agents.factory import SESSION_EVENTS
from stepscope.receivers.http import HttpApp, HttpServer
from stepscope.receivers.webhooks import WebhookVerifier
from stepscope.simulator import ManualClock, Simulator, SimulatorServer, scenario_named
from stepscope.simulator.agents import TurnKnobs
from stepscope.simulator.agents.webhooks import WebhookTarget, sign
from stepscope.testing import eventually

pytestmark = pytest.mark.anyio
SECRET = "whsec_c2VjcmV0LWtleS1mb3Itc2lt"
OTHER_SECRET = "whsec_b3RoZXItc2VjcmV0LWtleQ=="


class Control:
    """The sidecar as the HTTP surface sees it; webhooks need nothing of it."""

    def alive(self) -> bool:
        return True

    def ready(self) -> bool:
        return True

    def status(self) -> dict[str, Any]:
        return {}

    def watch(self, thread_id: str, run_id: str | None) -> bool:
        return True

    def unwatch(self, thread_id: str, run_id: str | None) -> None:
        return


@dataclass
class Rig:
    server: HttpServer
    registry: CollectorRegistry
    events: list[tuple[str | None, str]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.port}/v1/webhooks"

    def refused(self) -> float:
        return self.registry.get_sample_value("stepscope_dropped_total", {"reason": "webhook_invalid"}) or 0.0


async def _rig(secret: str) -> Rig:
    registry = CollectorRegistry()
    metrics = SelfMetrics(registry, version="test")
    events: list[tuple[str | None, str]] = []
    app = HttpApp(Control(), registry, webhook_secret=secret, drops=metrics, max_body=4096,
                  webhooks=lambda kind, object_id: events.append((object_id, kind)))  # fmt: skip
    server = HttpServer(app, "127.0.0.1", 0)
    await server.start()
    return Rig(server, registry, events)


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    running = await _rig(SECRET)
    yield running
    await running.server.shutdown()


def _delivery(body: bytes, *, secret: str = SECRET, webhook_id: str = "wh_1", at: int | None = None) -> dict[str, str]:
    timestamp = int(time.time()) if at is None else at
    return {"content-type": "application/json", "webhook-id": webhook_id, "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(secret, webhook_id, timestamp, body)}  # fmt: skip


def _event(session_id: str = "sess_abc", kind: str = "agent.session.idle") -> bytes:
    return json.dumps({"id": "evt_1", "object": "event", "type": kind, "created_at": 1,
                       "data": {"id": session_id, "environment_type": "none"}}).encode()  # fmt: skip


async def test_the_simulators_deliveries_verify_and_reach_the_callback(rig: Rig) -> None:
    """Every session event the simulator delivers is accepted and reported once as (session id, type)."""
    clock = ManualClock()
    target = WebhookTarget(rig.url, SECRET, attempts=1, timeout_s=2.0)
    sim = Simulator(scenario_named("quiet"), clock=clock, seed=3, protocol="agents", webhooks=target)
    assert sim.agents is not None and sim.agents.delivery is not None
    delivery = sim.agents.delivery
    engine = sim.agents.engine
    session = engine.create_session(clock.now())
    knobs = TurnKnobs(kinds=("function_call", "web_search_call"), seconds=1.0, outcome="completed")
    turn = engine.create_turn(session, clock.now(), knobs=knobs)
    clock.advance(turn.end - clock.now() + 1)
    with SimulatorServer(sim):
        await eventually(lambda: delivery.counts["delivered"] + delivery.counts["given_up"] >= 4, what="deliveries")
        sent = [(d["session_id"], d["type"]) for d in delivery.log]
        assert delivery.counts["given_up"] == 0
    assert rig.events == sent
    assert {kind for _, kind in sent} == SESSION_EVENTS - {"agent.session.failed"}
    assert rig.refused() == 0


@pytest.mark.parametrize(
    ("name", "mutate"),
    [
        ("wrong secret", lambda body: (body, _delivery(body, secret=OTHER_SECRET))),
        ("tampered body", lambda body: (body.replace(b"sess_abc", b"sess_xyz"), _delivery(body))),
        ("old timestamp", lambda body: (body, _delivery(body, at=int(time.time()) - 400))),
        ("future timestamp", lambda body: (body, _delivery(body, at=int(time.time()) + 400))),
        ("unsigned", lambda body: (body, {"content-type": "application/json"})),
        ("unversioned signature", lambda body: (body, {**_delivery(body), "webhook-signature": "bogus"})),
    ],
)
async def test_bad_deliveries_are_refused_and_change_nothing(rig: Rig, name: str, mutate: Any) -> None:
    """A delivery that does not verify answers 400 or 401, is counted as webhook_invalid, and reports nothing."""
    body, headers = mutate(_event())
    async with httpx.AsyncClient() as http:
        answer = await http.post(rig.url, content=body, headers=headers)
    assert answer.status_code in (400, 401), name
    assert "error" in answer.json()
    assert rig.events == []
    assert rig.refused() == 1


async def test_a_replayed_delivery_is_ignored(rig: Rig) -> None:
    """The same webhook-id again within the window is answered 200 but reported only the first time."""
    body = _event()
    headers = _delivery(body)
    async with httpx.AsyncClient() as http:
        first = await http.post(rig.url, content=body, headers=headers)
        again = await http.post(rig.url, content=body, headers=headers)
    assert (first.status_code, again.status_code) == (200, 200)
    assert again.json()["duplicate"] is True
    assert rig.events == [("sess_abc", "agent.session.idle")]


async def test_any_of_several_signatures_may_match(rig: Rig) -> None:
    """A signature header listing a stale signature and the current one is accepted (secret rotation)."""
    body = _event(kind="agent.session.in_progress")
    headers = _delivery(body)
    headers["webhook-signature"] = "v1,c3RhbGU= " + headers["webhook-signature"]
    async with httpx.AsyncClient() as http:
        answer = await http.post(rig.url, content=body, headers=headers)
    assert answer.status_code == 200
    assert rig.events == [("sess_abc", "agent.session.in_progress")]


async def test_other_events_and_oversized_bodies(rig: Rig) -> None:
    """A verified event of another type is acknowledged and handed on for the protocol to judge; a body past the cap
    is a counted 413."""
    other = _event(kind="batch.completed")
    big = _event() + b" " * 5000
    async with httpx.AsyncClient() as http:
        ignored = await http.post(rig.url, content=other, headers=_delivery(other, webhook_id="wh_2"))
        too_big = await http.post(rig.url, content=big, headers=_delivery(big, webhook_id="wh_3"))
    assert (ignored.status_code, too_big.status_code) == (200, 413)
    assert rig.events == [("sess_abc", "batch.completed")]
    assert rig.refused() == 1


async def test_a_signed_delivery_without_a_json_content_type_is_refused(rig: Rig) -> None:
    """A correctly signed delivery posted as text/plain, or with no content type (what a browser page can send
    cross-site without a preflight), is a counted 415 and reaches nothing."""
    body = _event()
    async with httpx.AsyncClient() as http:
        for index, ctype in enumerate(("text/plain", None)):
            headers = _delivery(body, webhook_id=f"wh_ct_{index}")
            if ctype is None:
                del headers["content-type"]
            else:
                headers["content-type"] = ctype
            answer = await http.post(rig.url, content=body, headers=headers)
            assert answer.status_code == 415
    assert rig.events == []
    assert rig.refused() == 2


async def test_without_a_secret_the_endpoint_says_how_to_enable_it() -> None:
    """With no secret configured, POST /v1/webhooks answers 404 naming STEPSCOPE_WEBHOOK_SECRET, counting nothing."""
    running = await _rig("")
    try:
        body = _event()
        async with httpx.AsyncClient() as http:
            answer = await http.post(running.url, content=body, headers=_delivery(body))
        assert answer.status_code == 404
        assert "STEPSCOPE_WEBHOOK_SECRET" in answer.json()["error"]
        assert running.events == []
        assert running.refused() == 0
    finally:
        await running.server.shutdown()


def test_replay_memory_is_bounded() -> None:
    """The verifier remembers at most max_remembered webhook ids, forgetting the oldest first."""
    now = 1_800_000_000.0
    verifier = WebhookVerifier(SECRET, max_remembered=2, wall=lambda: now)
    body = _event()
    for i in range(3):
        assert not verifier.verify(body, _delivery(body, webhook_id=f"wh_{i}", at=int(now))).duplicate
    assert verifier.verify(body, _delivery(body, webhook_id="wh_2", at=int(now))).duplicate
    assert not verifier.verify(body, _delivery(body, webhook_id="wh_0", at=int(now))).duplicate
