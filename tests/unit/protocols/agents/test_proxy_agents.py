"""The proxy and Agents API traffic: events the upstream accepted for a session make discovery follow it at once."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from stepscope.protocols.agents.proxied import PROXY_EVENT, SessionObserver
from stepscope.receivers.proxy import ProxyApp
from tests.kit.fakes import Counters

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


class Discovery:
    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []

    def session_event(self, session_id: str, event_type: str) -> None:
        self.events.append((session_id, event_type))


@pytest.mark.parametrize(("status", "told"), [(202, [("sess_1", PROXY_EVENT)]), (404, []), (500, [])])
async def test_accepted_session_events_are_reported(status: int, told: list[tuple[str, str]]) -> None:
    """Only events the upstream accepted (2xx) hand the session to discovery, on the loop's next turn, as a verified
    webhook would; the answer reaches the application either way."""
    discovery = Discovery()
    with upstream(status) as url:
        app = ProxyApp(url, SessionObserver(discovery), drops=Counters())
        assert await call(app, "POST", "/v1/agents/sessions/sess_1/events") == status
        await app.aclose()
    assert discovery.events == told


def test_only_session_events_are_routed() -> None:
    """The observer routes a POST of events to a session, whatever the base path, and nothing else."""
    observer = SessionObserver(Discovery())
    assert observer.route("POST", "/v1/agents/sessions/sess_1/events") is not None
    assert observer.route("POST", "/api/x/agents/sessions/sess_1/events/") is not None
    assert observer.route("GET", "/v1/agents/sessions/sess_1/events") is None
    assert observer.route("POST", "/v1/threads/thread_1/runs") is None
