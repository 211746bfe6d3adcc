"""The `/v1/watch` control plane under hostile input: closed off loopback, rate- and count-bounded, strict bodies."""

from __future__ import annotations

import json
import logging
from collections.abc import MutableMapping
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from stepscope.commands.logs import DuplicateFilter
from stepscope.core.store import SqliteStore
from stepscope.export.selfmetrics import SelfMetrics
from stepscope.protocols.assistants.discovery import Discovery
from stepscope.receivers.http import HttpApp, HttpServer
from stepscope.receivers.watch import TokenBucket, is_loopback
from tests.kit.fakes import DiscoveryService, FakeSource, RecordingTracker, make_discovery

pytestmark = pytest.mark.anyio
JSON = {"content-type": "application/json"}


class Clock:
    """A monotonic clock moved by hand."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def rig(
    *, listen_host: str | None = "127.0.0.1", token: str = "", rate: float = 20.0, max_registered: int = 1000
) -> tuple[HttpApp, DiscoveryService, SqliteStore, CollectorRegistry, Clock]:
    store = SqliteStore(":memory:")
    store.open()
    registry = CollectorRegistry()
    metrics = SelfMetrics(registry, version="test")
    clock = Clock()
    discovery = make_discovery(
        Discovery,
        FakeSource(),
        store,
        RecordingTracker(),
        max_registered=max_registered,
        drops=metrics,
        wall=lambda: 1e9,
    )
    service = DiscoveryService(discovery)
    app = HttpApp(
        service,
        registry,
        token=token,
        listen_host=listen_host,
        watch_rate=rate,
        drops=metrics,
        clock=clock,
        registrations=service,
    )
    return app, service, store, registry, clock


async def call(
    app: HttpApp, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], Any]:
    """One request through the ASGI interface: (status, response headers, decoded body). A JSON content type is
    sent unless `headers` name another (or none, as an empty string)."""
    sent_headers = {"content-type": "application/json", **(headers or {})}
    scope = {
        "type": "http",
        "method": method,
        "path": path,
        "headers": [(k.lower().encode(), v.encode()) for k, v in sent_headers.items() if v],
    }
    sent = False
    out: list[MutableMapping[str, Any]] = []

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: MutableMapping[str, Any]) -> None:
        out.append(message)

    await app(scope, receive, send)
    start = out[0]
    payload = b"".join(m.get("body", b"") for m in out[1:])
    response_headers = {k.decode(): v.decode() for k, v in start["headers"]}
    ctype = response_headers.get("content-type", "")
    return start["status"], response_headers, json.loads(payload) if "json" in ctype else payload.decode()


def watch_body(thread_id: str, run_id: str | None = None) -> bytes:
    return json.dumps({"thread_id": thread_id, **({"run_id": run_id} if run_id else {})}).encode()


def dropped(registry: CollectorRegistry, reason: str) -> float:
    return registry.get_sample_value("stepscope_dropped_total", {"reason": reason}) or 0.0


class TestBounds:
    async def test_twenty_thousand_rapid_posts_are_rate_limited(self) -> None:
        """20,000 POSTs within 20 s at 20/s (bursts of 40) register 40 + 20 x 20 threads; the rest get 429 with
        Retry-After, counted as watch_rate."""
        app, _, store, registry, clock = rig(rate=20.0)
        codes: dict[int, int] = {}
        retry_after: set[str] = set()
        for i in range(20_000):
            clock.now = i * 0.001
            status, headers, _ = await call(app, "POST", "/v1/watch", watch_body(f"thread_r{i}"), JSON)
            codes[status] = codes.get(status, 0) + 1
            if status == 429:
                retry_after.add(headers["retry-after"])
        accepted = codes.get(202, 0)
        assert 439 <= accepted <= 441
        assert codes == {202: accepted, 429: 20_000 - accepted}
        assert retry_after == {"1"}
        assert len(store.watched()) == accepted
        assert dropped(registry, "watch_rate") == 20_000 - accepted

    async def test_twenty_thousand_posts_stop_at_the_registration_limit(self, caplog: pytest.LogCaptureFixture) -> None:
        """Past max_registered (1,000) every new registration is refused with 429 and counted as watch_limit, the
        store holds exactly 1,000, and the refusal is logged once, not per request."""
        app, _, store, registry, clock = rig(rate=20.0, max_registered=1000)
        codes: dict[int, int] = {}
        caplog.set_level(logging.INFO)
        for i in range(20_000):
            clock.now = float(i)  # one a second: the rate never binds here
            status, _, body = await call(app, "POST", "/v1/watch", watch_body(f"thread_c{i}"), JSON)
            codes[status] = codes.get(status, 0) + 1
            if status == 429:
                assert "maximum" in body["error"]
        assert codes == {202: 1000, 429: 19_000}
        assert len(store.watched()) == 1000
        assert dropped(registry, "watch_limit") == 19_000
        assert sum("refusing /v1/watch registrations" in r.getMessage() for r in caplog.records) == 1
        # Re-registering a held thread is still accepted; dropping one frees a slot.
        assert (await call(app, "POST", "/v1/watch", watch_body("thread_c5"), JSON))[0] == 202
        assert (await call(app, "DELETE", "/v1/watch", watch_body("thread_c5"), JSON))[0] == 200
        assert (await call(app, "POST", "/v1/watch", watch_body("thread_new"), JSON))[0] == 202

    def test_token_bucket_refills_at_its_rate(self) -> None:
        """A bucket of rate 2/s and burst 4 lets 4 through at once, then one every half second."""
        clock = Clock()
        bucket = TokenBucket(2.0, 4.0, clock)
        assert [bucket.take() for _ in range(4)] == [0.0] * 4
        assert bucket.take() == pytest.approx(0.5)
        clock.now = 0.5
        assert bucket.take() == 0.0
        assert bucket.take() > 0.0


class TestListener:
    @pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.20", "10.0.0.7", "stepscope.example", "fe80::1"])
    async def test_non_loopback_without_token_refuses_registration(self, host: str) -> None:
        """Listening beyond loopback with no token, /v1/watch answers 403 saying how to enable it; metrics and
        health stay open."""
        app, service, store, _, _ = rig(listen_host=host)
        status, _, body = await call(app, "POST", "/v1/watch", watch_body("thread_abc"), JSON)
        assert status == 403
        assert "STEPSCOPE_WATCH_TOKEN" in body["error"]
        assert (await call(app, "DELETE", "/v1/watch", watch_body("thread_abc"), JSON))[0] == 403
        assert service.calls == 0 and store.watched() == []
        assert (await call(app, "GET", "/metrics"))[0] == 200
        assert (await call(app, "GET", "/healthz"))[0] == 200
        assert (await call(app, "GET", "/readyz"))[0] == 200

    @pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.53", "::1", "[::1]", "localhost", "::ffff:127.0.0.1"])
    async def test_loopback_without_token_accepts_registration(self, host: str) -> None:
        """A loopback-only listener accepts registrations without a token."""
        app, _, store, _, _ = rig(listen_host=host)
        assert (await call(app, "POST", "/v1/watch", watch_body("thread_abc"), JSON))[0] == 202
        assert store.watched() == [("thread_abc", None)]

    async def test_non_loopback_with_token_needs_the_token(self) -> None:
        """With a token set, a wildcard listener accepts registrations that carry it and refuses the rest."""
        app, _, store, _, _ = rig(listen_host="0.0.0.0", token="s3cret")
        assert (await call(app, "POST", "/v1/watch", watch_body("thread_abc"), JSON))[0] == 401
        auth = {**JSON, "authorization": "Bearer s3cret"}
        assert (await call(app, "POST", "/v1/watch", watch_body("thread_abc"), auth))[0] == 202
        assert store.watched() == [("thread_abc", None)]

    async def test_startup_logs_why_registration_is_disabled(self, caplog: pytest.LogCaptureFixture) -> None:
        """ASGI start-up logs one line saying registration is disabled, where it listens and how to enable it."""
        app, _, _, _, _ = rig(listen_host="0.0.0.0")
        messages = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
        sent: list[MutableMapping[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return messages.pop(0)

        async def send(message: MutableMapping[str, Any]) -> None:
            sent.append(message)

        with caplog.at_level(logging.INFO, logger="stepscope.receivers.http"):
            await app({"type": "lifespan"}, receive, send)
        lines = [r.getMessage() for r in caplog.records if r.name == "stepscope.receivers.http"]
        assert len(lines) == 1
        assert "disabled" in lines[0] and "0.0.0.0" in lines[0] and "STEPSCOPE_WATCH_TOKEN" in lines[0]
        assert [m["type"] for m in sent] == ["lifespan.startup.complete", "lifespan.shutdown.complete"]

    def test_http_server_tells_the_app_where_it_listens(self) -> None:
        """An HttpApp built without a listen address learns it from HttpServer, so a wildcard bind is closed."""
        app, _, _, _, _ = rig(listen_host=None)
        assert not app.registration_open
        HttpServer(app, "0.0.0.0", 0)
        assert app.listen_host == "0.0.0.0" and not app.registration_open
        local, _, _, _, _ = rig(listen_host=None)
        HttpServer(local, "127.0.0.1", 0)
        assert local.registration_open

    def test_loopback_detection(self) -> None:
        """Only loopback addresses and localhost count as loopback; wildcards and names do not."""
        assert all(map(is_loopback, ["127.0.0.1", "::1", "localhost", "LOCALHOST.", "::ffff:127.0.0.1"]))
        assert not any(
            map(is_loopback, ["0.0.0.0", "::", "", "192.168.0.1", "localhost.evil.example", "::ffff:0.0.0.0"])
        )


MALFORMED: list[tuple[str, bytes, dict[str, str]]] = [
    ("5,000 brackets", b"[" * 5_000, JSON),
    ("brackets inside the object", b'{"thread_id": ' + b"[" * 5_000, JSON),
    ("nested object", b'{"thread_id": {"$ne": null}}', JSON),
    ("nested deep", b'{"thread_id": "thread_a", "run_id": ' + b'{"a": ' * 900 + b"1" + b"}" * 901, JSON),
    ("number id", b'{"thread_id": 42}', JSON),
    ("null id", b'{"thread_id": null}', JSON),
    ("list id", b'{"thread_id": ["thread_a"]}', JSON),
    ("NaN id", b'{"thread_id": NaN}', JSON),
    ("unknown key", b'{"thread_id": "thread_a", "admin": "true"}', JSON),
    ("repeated key", b'{"thread_id": "thread_a", "thread_id": "thread_b"}', JSON),
    ("not utf-8", b'\xff\xfe{"thread_id": "thread_a"}', JSON),
    ("utf-16", '{"thread_id": "thread_a"}'.encode("utf-16"), JSON),
    ("array", b'["thread_a"]', JSON),
    ("string", b'"thread_a"', JSON),
    ("empty", b"", JSON),
    ("truncated", b'{"thread_id": ', JSON),
    ("trailing newline id", b'{"thread_id": "thread_ok\\n"}', JSON),
    ("newline inside id", b'{"thread_id": "thread_ok\\nINFO forged line"}', JSON),
    ("bad run id", b'{"thread_id": "thread_a", "run_id": "run_x\\n"}', JSON),
    ("long id", json.dumps({"thread_id": "thread_" + "a" * 65}).encode(), JSON),
    ("huge", b'{"thread_id": "' + b"a" * 2_000_000 + b'"}', JSON),
    ("huge declared", b"{}", {**JSON, "content-length": "99999999"}),
    ("form content type", b"thread_id=thread_a", {"content-type": "application/x-www-form-urlencoded"}),
    ("text content type", watch_body("thread_a"), {"content-type": "text/plain"}),
]


class TestBodies:
    @pytest.mark.parametrize(("name", "body", "headers"), MALFORMED, ids=[m[0] for m in MALFORMED])
    async def test_malformed_body_is_a_4xx_json_error(
        self, name: str, body: bytes, headers: dict[str, str], caplog: pytest.LogCaptureFixture
    ) -> None:
        """Anything but a small flat JSON object of string ids gets a 4xx JSON error, no traceback, no registration."""
        app, service, store, registry, _ = rig()
        caplog.set_level(logging.DEBUG)
        for method in ("POST", "DELETE"):
            status, _, answer = await call(app, method, "/v1/watch", body, headers)
            assert 400 <= status < 500, (name, status)
            assert isinstance(answer, dict) and answer["error"]
        assert service.calls == 0 and store.watched() == []
        assert not [r for r in caplog.records if r.exc_info]
        assert dropped(registry, "watch_invalid") == 2

    async def test_status_codes_name_the_problem(self) -> None:
        """Oversized bodies are 413, foreign content types 415, bad JSON and bad ids 400."""
        app, _, _, _, _ = rig()
        codes = {name: (await call(app, "POST", "/v1/watch", body, headers))[0] for name, body, headers in MALFORMED}
        assert codes["huge"] == codes["huge declared"] == 413
        assert codes["form content type"] == codes["text content type"] == 415
        assert {
            c for n, c in codes.items() if n not in ("huge", "huge declared", "form content type", "text content type")
        } == {400}

    async def test_thread_id_with_a_trailing_newline_is_refused(self) -> None:
        """ "thread_ok\\n" is not a thread id (a `$` pattern would accept it and split a log line)."""
        app, _, store, _, _ = rig()
        status, _, answer = await call(app, "POST", "/v1/watch", watch_body("thread_ok\n"), JSON)
        assert status == 400 and "thread_id" in answer["error"]
        assert (await call(app, "POST", "/v1/watch", watch_body("thread_ok"), JSON))[0] == 202
        assert store.watched() == [("thread_ok", None)]

    async def test_a_body_without_content_type_is_refused(self) -> None:
        """A JSON body sent without a content-type header (what a browser page can post cross-site without a
        preflight) is a 415 and registers nothing."""
        app, service, store, _, _ = rig()
        assert (await call(app, "POST", "/v1/watch", watch_body("thread_a", "run_b"), {"content-type": ""}))[0] == 415
        assert store.watched() == [] and service.calls == 0

    async def test_a_flood_of_bad_bodies_logs_a_few_lines(self) -> None:
        """1,000 malformed requests produce at most a handful of log lines under the duplicate filter."""
        app, _, _, _, clock = rig(rate=1e6)
        lines: list[str] = []

        class Collect(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                lines.append(record.getMessage())

        handler = Collect()
        handler.addFilter(DuplicateFilter(60.0, burst=5))
        logger = logging.getLogger("stepscope.receivers.http")
        logger.addHandler(handler)
        try:
            logger.setLevel(logging.INFO)
            for i in range(1_000):
                clock.now = i * 0.01
                await call(app, "POST", "/v1/watch", b"[" * (i + 1), JSON)
        finally:
            logger.removeHandler(handler)
            logger.setLevel(logging.NOTSET)
        assert 1 <= len(lines) <= 5
        assert all("\n" not in line for line in lines)

    async def test_store_failure_is_a_503_json_error(self, caplog: pytest.LogCaptureFixture) -> None:
        """A store that cannot record a registration answers 503 with a JSON error and logs one plain line."""
        app, service, _, _, _ = rig()
        service.fail_store = True
        status, _, answer = await call(app, "POST", "/v1/watch", watch_body("thread_a"), JSON)
        assert status == 503 and answer == {"error": "checkpoint store unavailable"}
        assert not [r for r in caplog.records if r.exc_info]
