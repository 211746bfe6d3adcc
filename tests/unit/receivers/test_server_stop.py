"""A listener's stop takes at most its own `stop_timeout`, whatever budget the process's shutdown hands it: answers
that would never end (an event stream left open) cannot take the budget of what stops after the listener."""

from __future__ import annotations

import asyncio
import time

import pytest

from stepscope.receivers.server import PROXY_LIMITS, AsgiServer, ServerLimits
from tests.kit.proxy import RawClient
from tests.unit.receivers.apps import Recorder

pytestmark = pytest.mark.anyio
HOLD = b"GET /hold HTTP/1.1\r\nHost: t\r\n\r\n"


async def test_a_stop_given_the_whole_shutdown_budget_takes_its_stop_timeout() -> None:
    """With answers in progress that never end, a stop given 8 s returns after about its `stop_timeout` (0.4 s
    here), their tasks cancelled and their connections closed."""
    app = Recorder()
    server = AsgiServer(app, "127.0.0.1", 0, setting="test.listen", fix="-", name="test",
                        limits=ServerLimits(stop_timeout=0.4))  # fmt: skip
    await server.start()
    clients = [await RawClient.open(server.port) for _ in range(3)]
    for client in clients:
        await client.send(HOLD)
    await asyncio.sleep(0.05)
    assert app.running == 3
    started = time.monotonic()
    await server.stop(8.0)
    took = time.monotonic() - started
    print(f"a stop given 8 s with 3 answers that never end: {took:.2f}s")
    assert 0.25 <= took < 0.8, took
    assert [await c.closed(within_s=1) for c in clients] == [True, True, True]
    assert app.running == 0


def test_the_listeners_keep_most_of_the_shutdown_budget_for_the_rest() -> None:
    """Both listeners stop within 2 s, a quarter of the 8 s shutdown budget."""
    assert ServerLimits().stop_timeout == PROXY_LIMITS.stop_timeout == 2.0
