"""`/v1/watch` over a real socket on 127.0.0.1: hostile bodies get 4xx and the server keeps serving."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from prometheus_client import CollectorRegistry

from stepscope.core.store import SqliteStore
from stepscope.export.selfmetrics import SelfMetrics
from stepscope.protocols.assistants.discovery import Discovery
from stepscope.receivers.http import HttpApp, HttpServer
from tests.kit.fakes import DiscoveryService, FakeSource, RecordingTracker, make_discovery

pytestmark = pytest.mark.anyio
JSON = {"content-type": "application/json"}


async def test_hostile_bodies_over_http_get_4xx_and_the_server_lives_on() -> None:
    """Over real HTTP, 5,000 brackets, nesting, a 2 MB body, a chunked 100 KB body and a newline id each get a 4xx
    JSON error; a good registration after them is accepted and /metrics still answers."""
    store = SqliteStore(":memory:")
    store.open()
    registry = CollectorRegistry()
    metrics = SelfMetrics(registry, version="test")
    service = DiscoveryService(make_discovery(Discovery, FakeSource(), store, RecordingTracker(), drops=metrics))
    server = HttpServer(
        HttpApp(service, registry, drops=metrics, watch_rate=1000.0, registrations=service), "127.0.0.1", 0
    )
    await server.start()

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(100):
            yield b"[" * 1000

    bodies: dict[str, bytes | AsyncIterator[bytes]] = {
        "brackets": b"[" * 5_000,
        "nested": b'{"thread_id": {"$ne": null}}',
        "huge": b'{"thread_id": "' + b"a" * 2_000_000 + b'"}',
        "chunked": chunks(),
        "newline id": b'{"thread_id": "thread_ok\\n"}',
    }
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}", timeout=10) as client:
            codes = {}
            for name, body in bodies.items():
                response = await client.post("/v1/watch", content=body, headers=JSON)
                codes[name] = response.status_code
                assert response.json()["error"], name
            good = await client.post("/v1/watch", json={"thread_id": "thread_ok"})
            scrape = await client.get("/metrics")
    finally:
        await server.shutdown()
    assert codes == {"brackets": 400, "nested": 400, "huge": 413, "chunked": 413, "newline id": 400}
    assert good.status_code == 202 and store.watched() == [("thread_ok", None)]
    assert scrape.status_code == 200
    assert 'stepscope_dropped_total{reason="watch_invalid"} 5.0' in scrape.text
