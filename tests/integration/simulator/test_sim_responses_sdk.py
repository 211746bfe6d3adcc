"""The official openai SDK (3.57.0) against the simulated Responses API over real HTTP and WebSocket: responses
in every mode, cancel, input items, conversations, Foundry's listing, and signed webhooks verified with
`client.webhooks.unwrap`."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import openai
import pytest
import websockets
from openai.types.conversations import Conversation
from openai.types.responses import Response, ResponseItem
from openai.types.webhooks import (
    ResponseCancelledWebhookEvent,
    ResponseCompletedWebhookEvent,
    ResponseFailedWebhookEvent,
    ResponseIncompleteWebhookEvent,
)
from pydantic import TypeAdapter

from stepscope.simulator import ManualClock, SimClock, Simulator, SimulatorServer, scenario_named
from stepscope.simulator.agents import WebhookTarget
from stepscope.simulator.responses import ResponseKnobs
from stepscope.simulator.responses.params import CreateParams
from tests.kit.waits import holds_within

SECRET = "whsec_c2ltdWxhdG9yLXdlYmhvb2stc2VjcmV0LWtleQ=="
CALM: dict[str, Any] = {"failure_rate": 0.0, "incomplete_rate": 0.0, "cancel_rate": 0.0}
TERMINAL = ("response.completed", "response.failed", "response.incomplete")


def _client(server: SimulatorServer, key: str = "sk-sim") -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url, api_key=key, max_retries=0, timeout=10)


@pytest.fixture
def fast() -> Iterator[tuple[Simulator, openai.OpenAI]]:
    """A simulator whose clock runs 200 times faster than the wall, so a response lasts some milliseconds."""
    sim = Simulator(scenario_named("quiet", **CALM), clock=SimClock(speed=200), seed=11, protocol="responses")
    with SimulatorServer(sim) as server, _client(server) as client:
        yield sim, client


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def manual(clock: ManualClock) -> Iterator[tuple[Simulator, openai.OpenAI]]:
    sim = Simulator(scenario_named("quiet", **CALM), clock=clock, seed=11, protocol="responses")
    with SimulatorServer(sim) as server, _client(server) as client:
        yield sim, client


def test_create_plain_and_streamed_responses_parse_as_the_sdk_declares(fast: tuple[Simulator, openai.OpenAI]) -> None:
    """A plain create returns the completed Response; a streamed one yields typed events from response.created to
    one response.completed; both validate strictly against the SDK's Response model."""
    sim, client = fast
    raw = client.responses.with_raw_response.create(
        model="gpt-5", input="Where is my order?", tools=[{"type": "web_search"}], metadata={"app": "test"}
    )
    body = raw.http_response.json()
    plain = Response.model_validate(body)
    assert plain.status == "completed" and plain.output_text and plain.usage is not None
    assert plain.completed_at is not None and plain.completed_at >= plain.created_at
    assert plain.output[0].type == "reasoning" and plain.metadata == {"app": "test"}
    assert raw.http_response.headers["x-request-id"].startswith("req_")
    tools: Any = [{"type": "code_interpreter", "container": {"type": "auto"}}]
    events = list(client.responses.create(model="gpt-4.1", input="hi", stream=True, tools=tools))
    types = [e.type for e in events]
    assert types[0] == "response.created" and types[-1] == "response.completed"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    final = events[-1]
    assert final.type == "response.completed"
    Response.model_validate(final.response.model_dump(mode="json", exclude_unset=True))
    assert {i.type for i in final.response.output} >= {"code_interpreter_call", "message"}
    stats = sim.truth()["responses"]["stats"]
    assert stats["terminal"]["completed"] == 2 and stats["usage"]["total_tokens"] > 0


def test_background_then_retrieve_until_terminal_and_cancel_rules(
    manual: tuple[Simulator, openai.OpenAI], clock: ManualClock
) -> None:
    """A background create answers queued; retrieving while the clock moves shows it reach completed; cancel ends
    another one cancelled, and cancelling a non-background response is a BadRequestError."""
    _, client = manual
    first = client.responses.create(model="gpt-5", input="bg", background=True)
    assert (first.status, first.usage, first.completed_at, first.output) == ("queued", None, None, [])
    seen = [first.status]
    current = first
    while current.status in ("queued", "in_progress"):
        clock.advance(0.5)
        current = client.responses.retrieve(first.id)
        seen.append(current.status)
    assert current.status == "completed" and "in_progress" in seen and current.completed_at is not None
    second = client.responses.create(model="gpt-5", input="bg", background=True)
    clock.advance(1)
    cancelled = client.responses.cancel(second.id)
    assert cancelled.status == "cancelled" and cancelled.completed_at is None and cancelled.usage is None
    assert client.responses.retrieve(second.id).status == "cancelled"
    plain = client.responses.create(model="gpt-5", input="x", background=True)
    client.responses.delete(plain.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(plain.id)
    foreground = manual[0].responses
    assert foreground is not None
    done = foreground.engine.create_response(clock.now(), CreateParams(model="gpt-5", input="fg"))
    with pytest.raises(openai.BadRequestError, match="background"):
        client.responses.cancel(done.id)


def test_input_items_and_conversation_items_auto_paginate(fast: tuple[Simulator, openai.OpenAI]) -> None:
    """input_items.list walks 45 input items in pages of 10, newest first; a conversation gathers a response's
    input and output, listed by the SDK's ConversationCursorPage and readable one by one."""
    _, client = fast
    messages: Any = [{"role": "user", "content": f"message {k}"} for k in range(45)]
    resp = client.responses.create(model="gpt-4.1", input=messages)
    items = list(client.responses.input_items.list(resp.id, limit=10))
    texts = [i.model_dump()["content"][0]["text"] for i in items]
    assert len(items) == 45 and texts == [f"message {k}" for k in range(44, -1, -1)]
    raw = client.responses.input_items.with_raw_response.list(resp.id, limit=3).http_response.json()
    TypeAdapter(list[ResponseItem]).validate_python(raw["data"])
    conv = client.conversations.create(metadata={"topic": "orders"}, items=[{"role": "user", "content": "hello"}])
    assert isinstance(conv, Conversation) and client.conversations.retrieve(conv.id) == conv
    answer = client.responses.create(model="gpt-5", input="Where is it?", conversation=conv.id)
    assert answer.conversation is not None and answer.conversation.id == conv.id
    listed = list(client.conversations.items.list(conv.id, limit=2))
    assert [i.type for i in listed] == ["message", "reasoning", "message", "message"]
    assert listed[0].id == answer.output[-1].id and listed[-1].model_dump()["content"][0]["text"] == "hello"
    one = client.conversations.items.retrieve(str(listed[1].id), conversation_id=conv.id)
    assert one.id == listed[1].id and one.type == "reasoning"
    with pytest.raises(openai.NotFoundError):
        client.conversations.retrieve("conv_unknown")


def test_foundry_listing_read_with_raw_gets(clock: ManualClock) -> None:
    """On azure the SDK, pointed at {project}/openai/v1, creates agent responses and reads the listing of all stored
    responses (newest first, filtered by agent and conversation) with raw GETs; the openai flavour has none."""
    sim = Simulator(scenario_named("lively", total_runs=130), clock=clock, seed=4, protocol="responses",
                    flavor="azure")  # fmt: skip
    clock.advance(200)
    with SimulatorServer(sim) as server:
        assert server.url.endswith("/api/projects/sim/openai/v1")
        client = _client(server)
        agent = sim.truth()["responses"]["agents"][0]
        mine = client.responses.create(input="hi", background=True,
                                       extra_body={"agent_reference": {"type": "agent_reference",
                                                                       "name": agent["name"]}})  # fmt: skip
        assert mine.model == agent["model"]
        assert mine.model_extra is not None and mine.model_extra["agent_reference"]["name"] == agent["name"]
        seen: list[dict[str, Any]] = []
        params: dict[str, Any] = {"limit": 100}
        while True:
            page: Any = client.get("/responses", cast_to=object, options={"params": params})
            seen += page["data"]
            if not page["has_more"]:
                break
            params["after"] = page["last_id"]
        by_agent: Any = client.get("/responses", cast_to=object,
                                   options={"params": {"agent_id": f"{agent['name']}:{agent['version']}"}})  # fmt: skip
        conversations: Any = client.get("/conversations", cast_to=object, options={"params": {"limit": 5}})
    assert seen[0]["id"] == mine.id and len(seen) == len({r["id"] for r in seen}) > 130
    assert all(r["agent_reference"]["name"] == agent["name"] for r in by_agent["data"]) and by_agent["data"]
    assert len(conversations["data"]) == 5 and conversations["has_more"]
    types = {i["type"] for r in seen for i in r["output"]}
    assert types & {"bing_grounding_call", "azure_ai_search_call", "openapi_call", "a2a_preview_call"}
    with SimulatorServer(Simulator(scenario_named("quiet"), protocol="responses")) as plain:
        with pytest.raises(openai.NotFoundError):
            _client(plain).get("/responses", cast_to=object)


class _Receiver:
    """A webhook receiver on 127.0.0.1 that records every delivery and answers 200."""

    def __init__(self) -> None:
        self.deliveries: list[tuple[dict[str, str], bytes]] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                with receiver.lock:
                    receiver.deliveries.append(({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                del format, args

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait_for(self, count: int, timeout: float = 10.0) -> list[tuple[dict[str, str], bytes]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.deliveries) >= count:
                    return list(self.deliveries)
            time.sleep(0.02)
        raise AssertionError(f"expected {count} deliveries, got {len(self.deliveries)}")


def test_webhooks_announce_background_responses_only_signed_as_openai_signs(clock: ManualClock) -> None:
    """Each background response's end is POSTed once as response.<status>, in time order, verified by the SDK's
    unwrap; foreground responses send none, and another secret fails verification."""
    receiver = _Receiver()
    target = WebhookTarget(receiver.url, SECRET, backoff_s=0.01)
    sim = Simulator(scenario_named("quiet"), clock=clock, seed=3, protocol="responses", webhooks=target)
    assert sim.responses is not None
    engine = sim.responses.engine
    ends = {}
    for k, outcome in enumerate(("completed", "failed", "incomplete")):
        knobs = ResponseKnobs(kinds=("file_search_call",), seconds=1.0 + k, outcome=outcome)
        resp = engine.create_response(clock.now(), CreateParams(model="gpt-5", input="x", background=True), knobs=knobs)
        ends[resp.id] = outcome
    engine.create_response(clock.now(), CreateParams(model="gpt-5", input="foreground"), knobs=ResponseKnobs())
    try:
        with SimulatorServer(sim) as server:
            client = _client(server)
            late = client.responses.create(model="gpt-5", input="cancel me", background=True)
            client.responses.cancel(late.id)
            ends[late.id] = "cancelled"
            clock.advance(60)
            deliveries = receiver.wait_for(4)
            # The simulator counts a delivery once it has read the receiver's answer, a moment after the receiver
            # got the request.
            assert holds_within(lambda: sim.truth()["responses"]["webhooks"]["delivered"] == 4, 5)
            webhooks = sim.truth()["responses"]["webhooks"]
    finally:
        receiver.server.shutdown()
        receiver.server.server_close()
    sdk = openai.OpenAI(api_key="sk-sim", webhook_secret=SECRET)
    events = [sdk.webhooks.unwrap(body, headers) for headers, body in deliveries]
    kinds = {ResponseCompletedWebhookEvent: "completed", ResponseFailedWebhookEvent: "failed",
             ResponseIncompleteWebhookEvent: "incomplete", ResponseCancelledWebhookEvent: "cancelled"}  # fmt: skip
    got = {e.data.id: kinds[type(e)] for e in events if isinstance(e, tuple(kinds))}  # type: ignore[union-attr]
    assert got == ends and len(receiver.deliveries) == 4
    assert [e.created_at for e in events] == sorted(e.created_at for e in events)
    assert all(e.object == "event" and e.id.startswith("evt_") for e in events)
    assert webhooks["delivered"] == 4 and {d["response_id"] for d in webhooks["deliveries"]} == set(ends)
    headers, body = deliveries[0]
    with pytest.raises(openai.InvalidWebhookSignatureError):
        sdk.webhooks.unwrap(body, headers, secret="whsec_" + "d3Jvbmctc2VjcmV0")


def test_websocket_mode_streams_the_same_events(fast: tuple[Simulator, openai.OpenAI]) -> None:
    """`responses.connect()` sends response.create and receives numbered events up to response.completed, twice on
    one socket; background is refused with an error event; a wrong key is refused at the handshake."""
    _, client = fast
    with client.responses.connect() as connection:
        runs = []
        for model in ("gpt-5", "gpt-4.1"):
            connection.response.create(model=model, input="hi", tools=[{"type": "web_search"}], stream_id="lane-1")
            events = []
            for event in connection:
                events.append(event)
                if event.type in TERMINAL:
                    break
            runs.append(events)
        connection.response.create(model="gpt-5", input="x", background=True)
        refused = connection.recv()
    for events in runs:
        assert events[0].type == "response.created" and events[-1].type == "response.completed"
        assert [e.sequence_number for e in events] == list(range(len(events)))
        assert all(e.stream_id == "lane-1" for e in events)
        assert "response.output_item.added" in [e.type for e in events]
    assert runs[0][-1].response.id != runs[1][-1].response.id  # type: ignore[union-attr]
    assert refused.type == "error" and refused.error.param == "background"
    wrong = openai.OpenAI(base_url=str(client.base_url), api_key="sk-wrong", max_retries=0)
    with pytest.raises(websockets.InvalidStatus) as denied, wrong.responses.connect():
        pass
    assert denied.value.response.status_code == 401
