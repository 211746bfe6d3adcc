"""The proxy and Agents API traffic: events the upstream accepted for a session make discovery follow it at once."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from stepscope.protocols.agents.proxied import PROXY_EVENT, SessionFeed
from stepscope.receivers.proxy import ProxyApp, RecordingFeed

pytestmark = pytest.mark.anyio


@contextlib.contextmanager
def upstream(status: int) -> Iterator[str]:
    """A real HTTP upstream on 127.0.0.1 that reads each request and answers `status` with a small JSON body."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("content-length", "0")))
            body = b'{"ok": true}'
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()


async def call(app: ProxyApp, method: str, path: str) -> int:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://proxy") as client:
        response = await client.request(method, path, json={"events": []})
    return response.status_code


@pytest.mark.parametrize(("status", "told"), [(202, [("sess_1",)]), (404, []), (500, [])])
async def test_accepted_session_events_are_reported(status: int, told: list[tuple[str]]) -> None:
    """Only events the upstream accepted (2xx) report the session; the answer reaches the application either way."""
    feed = RecordingFeed()
    with upstream(status) as url:
        app = ProxyApp(url, feed)
        assert await call(app, "POST", "/v1/agents/sessions/sess_1/events") == status
        await app.aclose()
    assert feed.of("session_active") == told
    assert feed.of("run_created") == []


class Discovery:
    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []

    def session_event(self, session_id: str, event_type: str) -> None:
        self.events.append((session_id, event_type))


async def test_session_feed_hands_the_session_to_discovery_after_the_answer() -> None:
    """The Agents feed defers to the loop's next turn, then tells discovery, like a verified webhook would."""
    discovery = Discovery()
    with upstream(202) as url:
        app = ProxyApp(url, SessionFeed(discovery))
        assert await call(app, "POST", "/v1/agents/sessions/sess_9/events") == 202
        await app.aclose()
    assert discovery.events == [("sess_9", PROXY_EVENT)]
