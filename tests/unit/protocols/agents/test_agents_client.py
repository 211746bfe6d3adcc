"""AgentsClient over httpx.MockTransport: beta header, paths, paging (item ids and last_id cursors), the shared
retry, budget and bounds discipline, and invalid objects counted and skipped."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest

from stepscope.client import BearerAuth, RetryPolicy
from stepscope.errors import AuthError, InvalidObject, LimitExceeded, NotFound, RateLimited
from stepscope.protocols.agents import AgentsClient

SECRET = "sk-agents-SECRET-0123456789"
NOW = 1_780_000_000


class Clock:
    def __init__(self) -> None:
        self.now = float(NOW)

    def time(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.now - NOW


class Recorder:
    def __init__(self) -> None:
        self.requests: list[tuple[str, str]] = []
        self.invalid: list[InvalidObject] = []

    def observe_request(self, endpoint: str, code: str, seconds: float) -> None:
        self.requests.append((endpoint, code))

    def observe_invalid(self, error: InvalidObject) -> None:
        self.invalid.append(error)


@dataclass
class Harness:
    client: AgentsClient
    observer: Recorder
    requests: list[httpx.Request] = field(default_factory=list)
    sleeps: list[float] = field(default_factory=list)

    def query(self, i: int) -> dict[str, list[str]]:
        return parse_qs(self.requests[i].url.query.decode())


@contextlib.asynccontextmanager
async def harness(replies: Sequence[httpx.Response], **options: Any) -> AsyncIterator[Harness]:
    """A client whose transport answers `replies` in order (the last repeats), with fake time and sleep."""
    queue = list(replies)
    clock = Clock()
    state: dict[str, Harness] = {}

    def handler(request: httpx.Request) -> httpx.Response:
        state["h"].requests.append(request)
        return queue.pop(0) if len(queue) > 1 else queue[0]

    async def sleep(seconds: float) -> None:
        state["h"].sleeps.append(seconds)
        clock.now += seconds

    observer = Recorder()
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
        client = AgentsClient(
            http,
            base_url="https://api.example.test/v1",
            auth=BearerAuth(SECRET),
            clock=clock,
            observer=observer,
            rng=lambda: 0.0,
            sleep=sleep,
            **options,
        )
        state["h"] = Harness(client, observer)
        yield state["h"]


def ok(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.Response(status, json=body, headers=headers)


def turn(turn_id: str, **fields: Any) -> dict[str, Any]:
    return {
        "id": turn_id,
        "object": "agent.session.turn",
        "session_id": "sess_1",
        "agent_id": "agent_1",
        "status": "completed",
        "created_at": NOW,
        "completed_at": NOW + 5,
        **fields,
    }


def page(data: list[dict[str, Any]], has_more: bool = False, **extra: Any) -> dict[str, Any]:
    return {"object": "list", "data": data, "has_more": has_more, **extra}


async def collect(iterator: AsyncIterator[Any]) -> list[Any]:
    return [x async for x in iterator]


class TestRequests:
    @pytest.mark.anyio
    async def test_agents_beta_header_and_auth(self) -> None:
        """Every request carries OpenAI-Beta: agents=v1 and the bearer credential, at the SDK's path."""
        async with harness([ok(turn("turn_1"))], organization="org-1") as h:
            got = await h.client.get_turn("sess_1", "turn_1")
        request = h.requests[0]
        assert got.id == "turn_1"
        assert request.headers["OpenAI-Beta"] == "agents=v1"
        assert request.headers["Authorization"] == f"Bearer {SECRET}"
        assert request.headers["OpenAI-Organization"] == "org-1"
        assert request.url.path == "/v1/agents/sessions/sess_1/turns/turn_1"
        assert h.observer.requests == [("get_agent_turn", "200")]

    @pytest.mark.anyio
    async def test_ids_cannot_change_the_path(self) -> None:
        """An id with a slash or dots is one quoted path segment."""
        turn = {"object": "agent.session.turn", "id": "t", "session_id": "a/../b", "agent_id": "g", "status": "queued",
                "created_at": NOW}  # fmt: skip
        async with harness([ok(turn)]) as h:
            await h.client.get_turn("a/../b", "t")
        assert h.requests[0].url.raw_path == b"/v1/agents/sessions/a%2F..%2Fb/turns/t"

    @pytest.mark.anyio
    async def test_list_sessions_params_and_paging(self) -> None:
        """Sessions are listed newest first, filtered by agent, paging on the last session id."""
        s = {"object": "agent.session", "status": "idle", "created_at": NOW, "agent": {"id": "agent_1"}}
        replies = [ok(page([{**s, "id": "s3"}, {**s, "id": "s2"}], True)), ok(page([{**s, "id": "s1"}]))]
        async with harness(replies) as h:
            sessions = await collect(h.client.list_sessions(agent_id="agent_1", limit=500))
        assert [x.id for x in sessions] == ["s3", "s2", "s1"]
        assert h.query(0) == {"limit": ["100"], "order": ["desc"], "agent_id": ["agent_1"]}
        assert h.query(1)["after"] == ["s2"]
        assert h.requests[0].url.path == "/v1/agents/sessions"

    @pytest.mark.anyio
    async def test_turn_items_page_on_body_last_id(self) -> None:
        """Turn items page with the body's last_id, not the last item's id, oldest first."""
        first = page([{"type": "message", "id": "m1"}], True, last_id="cursor_a")
        second = page([{"type": "function_call", "id": "fc_1", "call_id": "c1", "name": "f"}], False)
        async with harness([ok(first), ok(second)]) as h:
            items = await collect(h.client.list_turn_items("sess_1", "turn_1", after="cursor_0"))
        assert [i.type for i in items] == ["message", "function_call"]
        assert h.query(0)["after"] == ["cursor_0"]
        assert h.query(0)["order"] == ["asc"]
        assert h.query(1)["after"] == ["cursor_a"]
        assert h.requests[0].url.path == "/v1/agents/sessions/sess_1/turns/turn_1/items"

    @pytest.mark.anyio
    async def test_item_content_only_when_asked(self) -> None:
        """Items come without content unless the caller asks for it."""
        body = page([{"type": "function_call", "id": "fc", "arguments": "{}", "name": "f"}])
        async with harness([ok(body)]) as h:
            plain = await collect(h.client.list_turn_items("sess_1", "turn_1"))
            full = await collect(h.client.list_turn_items("sess_1", "turn_1", content=True))
        assert plain[0].arguments is None
        assert full[0].arguments == "{}"

    @pytest.mark.anyio
    async def test_turns_traces_subagents_paths(self) -> None:
        """Turns, traces and subagent turns are read from their session's paths in ascending order."""
        trace = {"id": "turn_1", "session_id": "sess_1", "created_at": NOW, "otlp": {"resourceSpans": []}}
        async with harness([ok(page([turn("turn_1")])), ok(page([trace])), ok(page([turn("turn_2")]))]) as h:
            turns = await collect(h.client.list_turns("sess_1", after="turn_0"))
            traces = await collect(h.client.list_traces("sess_1"))
            sub_turns = await collect(h.client.list_subagent_turns("sess_1", "sa_1"))
        assert [t.id for t in turns] == ["turn_1"]
        assert traces[0].otlp == {"resourceSpans": []}
        assert [t.id for t in sub_turns] == ["turn_2"]
        paths = [r.url.path for r in h.requests]
        assert paths == [
            "/v1/agents/sessions/sess_1/turns",
            "/v1/agents/sessions/sess_1/traces",
            "/v1/agents/sessions/sess_1/subagents/sa_1/turns",
        ]
        assert h.query(0)["after"] == ["turn_0"]


class TestDiscipline:
    @pytest.mark.anyio
    async def test_invalid_objects_counted_and_skipped(self) -> None:
        """A turn with an absurd timestamp is skipped from a listing and counted; its neighbours still arrive."""
        body = page([turn("turn_1"), turn("turn_bad", created_at=10**12), turn("turn_3")])
        async with harness([ok(body)]) as h:
            turns = await collect(h.client.list_turns("sess_1"))
        assert [t.id for t in turns] == ["turn_1", "turn_3"]
        assert [(e.kind, e.object_id) for e in h.observer.invalid] == [("agent_turn", "turn_bad")]

    @pytest.mark.anyio
    async def test_invalid_single_object_raises_counted(self) -> None:
        """A single GET of an unreadable turn raises InvalidObject and counts it."""
        async with harness([ok({"id": "turn_1"})]) as h:
            with pytest.raises(InvalidObject):
                await h.client.get_turn("sess_1", "turn_1")
        assert len(h.observer.invalid) == 1

    @pytest.mark.anyio
    async def test_retry_after_honoured_then_success(self) -> None:
        """A 429 with retry-after: 2 is retried after 2 s, under the shared retry policy."""
        replies = [ok({"error": {"message": "slow down"}}, 429, {"retry-after": "2"}), ok(turn("turn_1"))]
        async with harness(replies) as h:
            got = await h.client.get_turn("sess_1", "turn_1")
        assert got.id == "turn_1"
        assert h.sleeps == [2.0]
        assert h.observer.requests == [("get_agent_turn", "429"), ("get_agent_turn", "200")]

    @pytest.mark.anyio
    async def test_rate_limit_gives_up_with_context(self) -> None:
        """Exhausted retries raise RateLimited carrying the session and turn ids as context."""
        async with harness([ok({}, 429)], retry=RetryPolicy(max_retries=0)) as h:
            with pytest.raises(RateLimited) as info:
                await h.client.get_turn("sess_1", "turn_1")
        assert (info.value.thread_id, info.value.run_id, info.value.endpoint) == ("sess_1", "turn_1", "get_agent_turn")

    @pytest.mark.anyio
    async def test_auth_and_not_found_are_fatal_and_secret_free(self) -> None:
        """401 is AuthError and 404 NotFound, not retried, and no message shows the key."""
        body = {"error": {"message": f"bad key {SECRET}", "code": "invalid_api_key"}}
        async with harness([ok(body, 401), ok({}, 404)]) as h:
            with pytest.raises(AuthError) as auth:
                await h.client.get_session("sess_1")
            with pytest.raises(NotFound):
                await h.client.get_session("sess_1")
        assert SECRET not in str(auth.value)
        assert len(h.requests) == 2

    @pytest.mark.anyio
    async def test_body_cap(self) -> None:
        """A trace listing past the body cap stops with LimitExceeded too_large."""
        big = page([{"id": "t", "session_id": "s", "created_at": NOW, "otlp": {"pad": "x" * 5000}}])
        async with harness([ok(big)], max_body=1024) as h:
            with pytest.raises(LimitExceeded) as info:
                await collect(h.client.list_traces("sess_1"))
        assert info.value.reason == "too_large"
        assert h.observer.requests == [("list_agent_traces", "too_large")]

    @pytest.mark.anyio
    async def test_repeated_cursor_ends_listing(self) -> None:
        """A server returning the same last_id again ends the item listing after what was read."""
        loop = page([{"type": "message", "id": "m1"}], True, last_id="same")
        async with harness([ok(loop)]) as h:
            items = h.client.list_turn_items("sess_1", "turn_1")
            first = await anext(items)
            with pytest.raises(LimitExceeded) as info:
                await anext(items)
        assert first.id == "m1"
        assert info.value.reason == "repeated_cursor"

    @pytest.mark.anyio
    async def test_repr_hides_credentials(self) -> None:
        """The client's repr shows the base URL without its userinfo and never the key."""
        async with httpx.AsyncClient() as http:
            url = "https://user:pw-secret@api.example.test/v1"
            text = repr(AgentsClient(http, base_url=url, auth=BearerAuth(SECRET)))
        assert "pw-secret" not in text
        assert SECRET not in text
        assert "https://api.example.test/v1" in text and "user" not in text.split("auth=")[0]
