"""A harness for the Assistants client: scripted answers over `httpx.MockTransport`, a fake clock and sleep, a
request observer, and builders of API JSON objects."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from stepscope.client import BearerAuth, RetryPolicy
from stepscope.core.records import UnitRef
from stepscope.errors import InvalidObject
from stepscope.protocols.assistants.client import AssistantsClient
from stepscope.testing import FakeClock

SECRET = "sk-live-SECRET-abcdef0123456789"
THREAD = "thread_abc"
REF = UnitRef(THREAD, "run_abc")
FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
NO_RETRY = RetryPolicy(max_retries=0)

Reply = httpx.Response | Exception | Callable[[httpx.Request], httpx.Response]


class Recorder:
    """A RequestObserver that remembers every call."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, float]] = []
        self.invalid: list[InvalidObject] = []

    def observe_request(self, endpoint: str, code: str, seconds: float) -> None:
        self.requests.append((endpoint, code, seconds))

    def observe_invalid(self, error: InvalidObject) -> None:
        self.invalid.append(error)


@dataclass
class Harness:
    client: AssistantsClient
    clock: FakeClock
    observer: Recorder
    requests: list[httpx.Request] = field(default_factory=list)
    sent_at: list[float] = field(default_factory=list)
    sleeps: list[float] = field(default_factory=list)

    @property
    def params(self) -> list[dict[str, str]]:
        return [dict(r.url.params) for r in self.requests]


def reply(body: Any = None, status: int = 200, headers: dict[str, str] | None = None) -> httpx.Response:
    """A JSON response (or raw bytes/str content when `body` is bytes or str)."""
    if isinstance(body, bytes | str):
        return httpx.Response(status, content=body, headers=headers)
    return httpx.Response(status, json=body if body is not None else {}, headers=headers)


def error_body(message: str, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": code}}


def page(items: Sequence[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    return {"object": "list", "data": list(items), "has_more": has_more}


def run_obj(run_id: str, status: str = "completed") -> dict[str, Any]:
    return {"id": run_id, "object": "thread.run", "created_at": 1, "thread_id": THREAD, "status": status}


def step_obj(step_id: str, run_id: str = "run_abc") -> dict[str, Any]:
    return {
        "id": step_id,
        "object": "thread.run.step",
        "created_at": 1,
        "run_id": run_id,
        "thread_id": THREAD,
        "type": "message_creation",
        "status": "completed",
    }


@contextlib.asynccontextmanager
async def harness(
    replies: Sequence[Reply], *, clock: FakeClock | None = None, **options: Any
) -> AsyncIterator[Harness]:
    """A client whose transport answers with `replies` in order (the last one repeats) on `clock` (a fresh
    `FakeClock` unless given), whose injected sleep advances that clock; `options` go to `AssistantsClient`."""
    clock = clock or FakeClock()
    queue = list(replies)
    state: dict[str, Harness] = {}

    def handler(request: httpx.Request) -> httpx.Response:
        h = state["h"]
        h.requests.append(request)
        h.sent_at.append(clock.monotonic())
        item = queue.pop(0) if len(queue) > 1 else queue[0]
        if isinstance(item, Exception):
            raise item
        if isinstance(item, httpx.Response):
            return item
        return item(request)

    async def sleep(seconds: float) -> None:
        state["h"].sleeps.append(seconds)
        clock.advance(seconds)

    options.setdefault("base_url", "https://api.example.test/v1/")
    options.setdefault("auth", BearerAuth(SECRET))
    options.setdefault("rng", lambda: 0.0)
    options.setdefault("sleep", sleep)
    observer = Recorder()
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as http:
        client = AssistantsClient(http, clock=clock, observer=observer, **options)
        h = Harness(client, clock, observer)
        state["h"] = h
        yield h


async def collect(iterator: AsyncIterator[Any]) -> list[Any]:
    """Every item of an async iterator, in order."""
    return [item async for item in iterator]
