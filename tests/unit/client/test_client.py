"""AssistantsClient over httpx.MockTransport: headers, paths, paging, status mapping, parsing and secrecy."""

from __future__ import annotations

import base64
import json
import logging
from pathlib import Path

import httpx
import pytest

from stepscope.client import ApiKeyAuth, BearerAuth, RetryPolicy, TokenFileAuth
from stepscope.client.auth import Auth
from stepscope.core.records import UnitRef
from stepscope.errors import (
    AuthError,
    BadRequest,
    ConfigError,
    InvalidObject,
    LimitExceeded,
    NotFound,
    RateLimited,
    SourceError,
    Unavailable,
)
from stepscope.protocols.assistants.client import AssistantsClient
from stepscope.testing import FakeClock
from tests.kit.client import (
    FIXTURES,
    NO_RETRY,
    REF,
    SECRET,
    THREAD,
    Reply,
    collect,
    error_body,
    harness,
    page,
    reply,
    run_obj,
    step_obj,
)


class TestRequests:
    @pytest.mark.anyio
    async def test_openai_headers(self) -> None:
        """Every request carries beta, user-agent, organisation, project and bearer headers."""
        async with harness([reply(run_obj("run_abc"))], organization="org-1", project="proj_1") as h:
            await h.client.get_run(REF)
        headers = h.requests[0].headers
        assert headers["OpenAI-Beta"] == "assistants=v2"
        assert headers["User-Agent"].startswith("stepscope/")
        assert headers["OpenAI-Organization"] == "org-1"
        assert headers["OpenAI-Project"] == "proj_1"
        assert headers["Authorization"] == f"Bearer {SECRET}"
        assert "api-version" not in h.requests[0].url.params
        assert str(h.requests[0].url) == "https://api.example.test/v1/threads/thread_abc/runs/run_abc"

    @pytest.mark.anyio
    async def test_no_org_or_project_by_default(self) -> None:
        """Organisation and project headers are omitted when not configured."""
        async with harness([reply(run_obj("run_abc"))]) as h:
            await h.client.get_run(REF)
        assert "OpenAI-Organization" not in h.requests[0].headers
        assert "OpenAI-Project" not in h.requests[0].headers

    @pytest.mark.anyio
    async def test_azure_paths_and_api_version(self) -> None:
        """Azure requests go under the project endpoint without /v1, with `api-version` and an api-key."""
        base = "https://acct.services.ai.azure.com/api/projects/p1"
        async with harness(
            [reply(step_obj("step_1"))],
            base_url=base,
            api_version="2025-05-01",
            flavor="azure",
            auth=ApiKeyAuth(SECRET),
        ) as h:
            step = await h.client.get_step(REF, "step_1")
        request = h.requests[0]
        assert step.id == "step_1"
        assert request.url.path == "/api/projects/p1/threads/thread_abc/runs/run_abc/steps/step_1"
        assert request.url.params["api-version"] == "2025-05-01"
        assert request.headers["api-key"] == SECRET
        assert "Authorization" not in request.headers

    @pytest.mark.anyio
    async def test_token_file_auth(self, tmp_path: Path) -> None:
        """A token-file credential is sent as a bearer token."""
        path = tmp_path / "token"
        path.write_text("from-file\n")
        async with harness([reply({"id": "asst_1", "name": "helper"})], auth=TokenFileAuth(path)) as h:
            assistant = await h.client.get_assistant("asst_1")
        assert assistant.name == "helper"
        assert h.requests[0].headers["Authorization"] == "Bearer from-file"
        assert h.requests[0].url.path == "/v1/assistants/asst_1"

    def test_azure_needs_api_version(self) -> None:
        """The azure flavor without api-version, or an unknown flavor, is a configuration error."""
        http = httpx.AsyncClient()
        with pytest.raises(ConfigError, match="api_version"):
            AssistantsClient(http, base_url="https://x", auth=BearerAuth("k" * 8), flavor="azure")
        with pytest.raises(ConfigError, match="flavor"):
            AssistantsClient(http, base_url="https://x", auth=BearerAuth("k" * 8), flavor="bedrock")

    @pytest.mark.anyio
    async def test_ids_are_quoted(self) -> None:
        """An id containing a slash cannot change the request path."""
        async with harness([reply(run_obj("run_abc"))]) as h:
            await h.client.get_run(UnitRef("thread_a/../x", "run_abc"))
        assert h.requests[0].url.raw_path.startswith(b"/v1/threads/thread_a%2F..%2Fx/runs/")

    @pytest.mark.anyio
    async def test_observer_sees_each_request(self) -> None:
        """Each request is reported with its endpoint name, status code and duration on the client's clock."""
        clock = FakeClock()

        def taking(seconds: float, response: httpx.Response) -> Reply:
            def answer(request: httpx.Request) -> httpx.Response:
                clock.advance(seconds)
                return response

            return answer

        replies = [taking(0.25, reply(run_obj("run_abc"))), taking(1.5, reply(error_body("gone"), 404))]
        async with harness(replies, clock=clock, retry=NO_RETRY) as h:
            await h.client.get_run(REF)
            with pytest.raises(NotFound):
                await h.client.get_step(REF, "step_x")
        assert h.observer.requests == [("get_run", "200", 0.25), ("get_step", "404", 1.5)]


class TestPaging:
    @pytest.mark.anyio
    async def test_runs_newest_first_across_pages(self) -> None:
        """Runs are listed with order=desc and the previous page's last id as `after` until has_more is false."""
        replies = [
            reply(page([run_obj("run_5"), run_obj("run_4")], True)),
            reply(page([run_obj("run_3"), run_obj("run_2")], True)),
            reply(page([run_obj("run_1")], False)),
        ]
        async with harness(replies) as h:
            runs = await collect(h.client.list_runs(THREAD, limit=2))
        assert [r.id for r in runs] == ["run_5", "run_4", "run_3", "run_2", "run_1"]
        assert h.params == [
            {"limit": "2", "order": "desc"},
            {"limit": "2", "order": "desc", "after": "run_4"},
            {"limit": "2", "order": "desc", "after": "run_2"},
        ]
        assert h.requests[0].url.path == "/v1/threads/thread_abc/runs"

    @pytest.mark.anyio
    async def test_steps_ascending_from_cursor(self) -> None:
        """Steps are listed with order=asc, limit 100 and `after` starting at the caller's cursor."""
        replies = [reply(page([step_obj("step_3")], True)), reply(page([step_obj("step_4")], False))]
        async with harness(replies, api_version="v1") as h:
            steps = await collect(h.client.list_steps(REF, after="step_2"))
        assert [s.id for s in steps] == ["step_3", "step_4"]
        assert h.params == [
            {"limit": "100", "order": "asc", "after": "step_2", "api-version": "v1"},
            {"limit": "100", "order": "asc", "after": "step_3", "api-version": "v1"},
        ]
        assert h.requests[0].url.path == "/v1/threads/thread_abc/runs/run_abc/steps"

    @pytest.mark.anyio
    async def test_fixture_pages(self) -> None:
        """Recorded OpenAI and Azure step pages page through, skipping the two unreadable OpenAI items."""
        openai = json.loads((FIXTURES / "openai_steps_page.json").read_text())
        azure = json.loads((FIXTURES / "azure_steps_page.json").read_text())
        openai["has_more"] = True
        async with harness([reply(openai), reply(azure), reply(page([], False))]) as h:
            steps = await collect(h.client.list_steps(REF))
        assert len(steps) == 4 + 3
        assert h.params[1]["after"] == "step_Lk8Jh7Gf6Ds5Ap4Oi3Uy2Tr1"
        assert h.params[2]["after"] == "step_Az0000000000000000000003"
        assert len(h.observer.invalid) == 2

    @pytest.mark.anyio
    async def test_limit_clamped_to_api_range(self) -> None:
        """Page sizes outside 1..100 are clamped instead of earning a 400."""
        async with harness([reply(page([], False))]) as h:
            await collect(h.client.list_steps(REF, limit=500))
            await collect(h.client.list_runs(THREAD, limit=0))
        assert [p["limit"] for p in h.params] == ["100", "1"]

    @pytest.mark.anyio
    async def test_caller_may_stop_early(self) -> None:
        """Breaking out of the iteration sends no further page request."""
        async with harness([reply(page([run_obj("run_2"), run_obj("run_1")], True))]) as h:
            async for _run in h.client.list_runs(THREAD):
                break
        assert len(h.requests) == 1

    @pytest.mark.anyio
    async def test_repeated_cursor_stops(self) -> None:
        """A server that keeps returning the same last id ends the listing with a retryable LimitExceeded."""
        async with harness([reply(page([step_obj("step_1")], True))]) as h:
            steps = h.client.list_steps(REF, after="step_0")
            first = await anext(steps)
            with pytest.raises(LimitExceeded, match="cursor step_1 again") as info:
                await anext(steps)
        assert first.id == "step_1"
        assert len(h.requests) == 2
        assert info.value.reason == "repeated_cursor"


class TestParsing:
    @pytest.mark.anyio
    async def test_invalid_items_reported_and_logged_once(self, caplog: pytest.LogCaptureFixture) -> None:
        """Invalid list items are skipped, reported every time and logged once per object id."""
        bad = {"id": "step_bad", "object": "thread.run.step"}
        body = page([step_obj("step_1"), bad, step_obj("step_2")], False)
        caplog.set_level(logging.WARNING, logger="stepscope.client")
        async with harness([reply(body)]) as h:
            first = await collect(h.client.list_steps(REF))
            second = await collect(h.client.list_steps(REF))
        assert [s.id for s in first] == [s.id for s in second] == ["step_1", "step_2"]
        assert [e.object_id for e in h.observer.invalid] == ["step_bad", "step_bad"]
        assert sum("step_bad" in r.getMessage() for r in caplog.records) == 1

    @pytest.mark.anyio
    async def test_logged_ids_are_bounded(self, caplog: pytest.LogCaptureFixture) -> None:
        """Only recent ids are remembered: once 1024 newer ones were logged, an old bad id is logged again."""
        caplog.set_level(logging.WARNING, logger="stepscope.client")
        bad = [{"id": f"step_bad{i}"} for i in range(1025)]
        async with harness([reply(page(bad, False)), reply(page(bad[:1], False))]) as h:
            await collect(h.client.list_steps(REF))
            await collect(h.client.list_steps(REF))
        assert sum("step_bad0:" in r.getMessage() for r in caplog.records) == 2
        assert len(h.observer.invalid) == 1026

    @pytest.mark.anyio
    async def test_invalid_single_object_raises(self) -> None:
        """A single GET whose object cannot be parsed raises InvalidObject after reporting it."""
        async with harness([reply({"id": "run_abc", "status": "completed"})]) as h:
            with pytest.raises(InvalidObject, match="run_abc"):
                await h.client.get_run(REF)
        assert len(h.observer.invalid) == 1

    @pytest.mark.anyio
    async def test_malformed_envelope_is_unavailable(self) -> None:
        """A list body without `data` is reported and raised as Unavailable."""
        async with harness([reply({"object": "list"})]) as h:
            with pytest.raises(Unavailable, match="malformed list") as info:
                await collect(h.client.list_runs(THREAD))
        assert info.value.thread_id == THREAD
        assert h.observer.invalid[0].kind == "list"

    @pytest.mark.parametrize("content", [b'{"data": [{"id": "run_1"', b"<html>bad gateway</html>", b"\xff\xfe"])
    @pytest.mark.anyio
    async def test_unreadable_body_is_unavailable(self, content: bytes) -> None:
        """A truncated, non-JSON or undecodable 200 body is Unavailable and counted as `invalid_body`, not 200."""
        async with harness([reply(content)], retry=NO_RETRY) as h:
            with pytest.raises(Unavailable, match="unreadable JSON body"):
                await h.client.get_run(REF)
        assert [(e, c) for e, c, _ in h.observer.requests] == [("get_run", "invalid_body")]


class FlakyAuth:
    """An Auth that counts invalidations, or fails outright."""

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.invalidated = 0

    async def headers(self) -> dict[str, str]:
        if self.fail:
            raise AuthError("token file /var/run/token is empty")
        return {"Authorization": f"Bearer {SECRET}"}

    def invalidate(self) -> None:
        self.invalidated += 1


class TestStatusMapping:
    @pytest.mark.parametrize(
        ("status", "error"),
        [
            (400, BadRequest),
            (401, AuthError),
            (403, AuthError),
            (404, NotFound),
            (422, BadRequest),
            (302, BadRequest),
            (429, RateLimited),
            (408, Unavailable),
            (409, Unavailable),
            (500, Unavailable),
            (503, Unavailable),
        ],
    )
    @pytest.mark.anyio
    async def test_status_to_exception(self, status: int, error: type[SourceError]) -> None:
        """Each status maps to its exception, carrying status, endpoint, ids and the server's message."""
        body = error_body("No run found with id 'run_abc'.", code="not_found")
        async with harness([reply(body, status)], retry=NO_RETRY) as h:
            with pytest.raises(error) as info:
                await h.client.get_run(REF)
        exc = info.value
        assert type(exc) is error
        assert (exc.status_code, exc.endpoint, exc.thread_id, exc.run_id) == (status, "get_run", THREAD, "run_abc")
        assert str(exc) == f"get_run: HTTP {status}: No run found with id 'run_abc'. (not_found)"

    @pytest.mark.anyio
    async def test_long_message_truncated(self) -> None:
        """The server's message is cut to about 200 characters."""
        async with harness([reply(error_body("x" * 5000), 400)]) as h:
            with pytest.raises(BadRequest) as info:
                await h.client.get_run(REF)
        assert len(str(info.value)) < 260

    @pytest.mark.parametrize("body", [b"", b"oops", b'{"message": "not implemented"}', b'["x"]'])
    @pytest.mark.anyio
    async def test_odd_error_bodies(self, body: bytes) -> None:
        """Error bodies that are empty, non-JSON or differently shaped still give a clean message."""
        async with harness([reply(body, 501)], retry=NO_RETRY) as h:
            with pytest.raises(Unavailable) as info:
                await h.client.get_run(REF)
        assert str(info.value).startswith("get_run: HTTP 501")
        assert ("not implemented" in str(info.value)) == (b"message" in body)

    @pytest.mark.anyio
    async def test_401_invalidates_credential(self) -> None:
        """A 401 tells the credential to refresh before the next request."""
        auth = FlakyAuth()
        async with harness([reply(error_body("expired"), 401)], auth=auth) as h:
            with pytest.raises(AuthError):
                await h.client.get_run(REF)
        assert auth.invalidated == 1
        assert len(h.requests) == 1

    @pytest.mark.anyio
    async def test_credential_failure_sends_nothing(self) -> None:
        """A credential that cannot produce headers raises AuthError with context and sends no request."""
        async with harness([reply(run_obj("run_abc"))], auth=FlakyAuth(fail=True)) as h:
            with pytest.raises(AuthError, match="get_run: token file") as info:
                await h.client.get_run(REF)
        assert info.value.run_id == "run_abc"
        assert h.requests == []

    @pytest.mark.parametrize(
        ("exc", "text"),
        [
            (httpx.ConnectError("boom"), r"^get_run: cannot reach https://api\.example\.test/v1 \(boom\)$"),
            (httpx.ReadTimeout("slow"), r"^get_run: timed out waiting for https://api\.example\.test/v1$"),
        ],
    )
    @pytest.mark.anyio
    async def test_transport_errors(self, exc: Exception, text: str) -> None:
        """Connection failures and timeouts are Unavailable and observed with code `error`."""
        async with harness([exc], retry=NO_RETRY) as h:
            with pytest.raises(Unavailable, match=text) as info:
                await h.client.get_run(REF)
        assert info.value.status_code is None
        assert h.observer.requests[0][:2] == ("get_run", "error")


class TestSecrets:
    @pytest.mark.parametrize("auth", [BearerAuth(SECRET), ApiKeyAuth(SECRET)])
    @pytest.mark.anyio
    async def test_secret_never_in_errors_logs_or_reprs(self, auth: Auth, caplog: pytest.LogCaptureFixture) -> None:
        """A key echoed by the server or a transport error never reaches messages, logs or reprs."""
        caplog.set_level(logging.DEBUG)
        replies: list[Reply] = [
            reply(error_body(f"Incorrect API key provided: {SECRET}."), 401),
            httpx.ConnectError(f"proxy rejected Bearer {SECRET}"),
            reply(error_body(f"bad key {SECRET}"), 503),
        ]
        errors: list[SourceError] = []
        async with harness(replies, auth=auth, retry=RetryPolicy(max_retries=1)) as h:
            for _ in range(2):
                with pytest.raises(SourceError) as info:
                    await h.client.get_run(REF)
                errors.append(info.value)
            text = " ".join([*(str(e) for e in errors), *(repr(e) for e in errors), repr(h.client)])
        assert "<redacted>" in text
        assert SECRET not in text
        assert caplog.records
        assert all(SECRET not in r.getMessage() for r in caplog.records)

    @pytest.mark.anyio
    async def test_a_key_echoed_in_base64_is_redacted(self) -> None:
        """A server that echoes the key base64-encoded (as Basic auth would carry it, or URL-safe) gets neither form
        into the error's message."""
        standard = base64.b64encode(SECRET.encode()).decode()
        urlsafe = base64.urlsafe_b64encode(f"Bearer {SECRET}".encode()).decode().rstrip("=")
        replies: list[Reply] = [reply(error_body(f"Basic {standard} refused; header was {urlsafe}"), 401)]
        async with harness(replies, auth=BearerAuth(SECRET)) as h:
            with pytest.raises(SourceError) as info:
                await h.client.get_run(REF)
        assert standard not in str(info.value) and urlsafe not in str(info.value)
        assert str(info.value).count("<redacted>") == 2
