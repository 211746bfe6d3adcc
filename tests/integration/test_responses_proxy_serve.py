"""`STEPSCOPE_PROTOCOL=responses stepscope serve` with the proxy end to end: the official openai SDK creates responses
through the proxy of a real serve process (JSON, SSE, background and WebSocket mode) against the simulated
Responses API, and a real OTLP receiver gets the spans.

The simulator accepts two keys: the application's (`APP_KEY`, sent by the SDK and forwarded by the proxy) and
stepscope's own (`OWN_KEY`, its reads), so its request log tells stepscope's requests from the application's.
OpenAI's flavour lists no responses: there the proxy is the only way serve learns of them.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import openai
import pytest

from stepscope.simulator import SimClock, Simulator, scenario_named
from stepscope.testing import OtlpReceiver, ReceivedSpan
from tests.integration._collectors import Samples, scrape, status, total, wait_for
from tests.integration._responses import (
    NS,
    RESPONSES,
    assert_response_span,
    one_span_each,
    requests_to,
    response_spans,
    responses_truth,
    serve_env,
    tool_spans,
)
from tests.kit.proxy import serve_in_thread
from tests.procs import Proc, free_port, serve

pytestmark = pytest.mark.slow

APP_KEY = "sk-app-R3sp0nses9x"
OWN_KEY = "sk-stepscope-own"
POLL_S = 0.2
CALM: dict[str, Any] = {"failure_rate": 0.0, "incomplete_rate": 0.0, "cancel_rate": 0.0}
TOOLS: Any = [{"type": "web_search"}, {"type": "code_interpreter", "container": {"type": "auto"}}]
TERMINAL_EVENTS = ("response.completed", "response.failed", "response.incomplete")
TRACE_ID, PARENT_ID = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"


# --- the simulator, recording every API request with whose key it came, and every WebSocket message it sent -------


@dataclass
class Request:
    method: str
    path: str
    own: bool  # sent with stepscope's key, not the application's
    at: float  # time.time() when it arrived
    answer: bytearray = field(default_factory=bytearray)  # the body answered to stepscope's own requests

    def status(self) -> str:
        """The `status` of the response object answered."""
        return str(json.loads(self.answer)["status"])


@dataclass
class Recorder:
    """ASGI middleware in front of the simulator (control paths not recorded)."""

    inner: Any
    requests: list[Request] = field(default_factory=list)
    frames: list[str] = field(default_factory=list)

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        inner_send = send
        if scope["type"] == "http" and not scope["path"].startswith("/_sim/"):
            auth = dict(scope["headers"]).get(b"authorization", b"")
            request = Request(scope["method"], scope["path"], auth == f"Bearer {OWN_KEY}".encode(), time.time())
            self.requests.append(request)

            async def send(message: MutableMapping[str, Any]) -> None:
                if request.own and message["type"] == "http.response.body":
                    request.answer += message.get("body", b"")
                await inner_send(message)

        elif scope["type"] == "websocket":

            async def send(message: MutableMapping[str, Any]) -> None:
                if message["type"] == "websocket.send":
                    self.frames.append(message["text"])
                await inner_send(message)

        await self.inner(scope, receive, send)

    def own(self, method: str, path_end: str) -> list[Request]:
        """stepscope's requests `method` to a path ending `path_end`."""
        return [r for r in list(self.requests) if r.own and r.method == method and r.path.endswith(path_end)]


# --- one stack and the application's work through the proxy -------------------------------------------------------


@dataclass
class Stack:
    sim: Simulator
    recorder: Recorder
    root: str  # the simulator's root URL
    receiver: OtlpReceiver
    proc: Proc
    base: str  # serve's HTTP listener
    proxy: str  # the API base URL through the proxy, as the application uses it
    direct: str  # the API base URL itself

    def client(self, base_url: str | None = None) -> openai.OpenAI:
        return openai.OpenAI(base_url=base_url or self.proxy, api_key=APP_KEY, max_retries=0, timeout=30)

    def committed(self, n: int) -> None:
        """Wait until `n` responses are counted and their spans arrived."""
        counted = wait_for(lambda: total(scrape(self.base), "stepscope_runs_total", **RESPONSES) == n, 20)
        assert counted, self.proc.output()
        assert wait_for(lambda: len(response_spans(list(self.receiver.spans))) >= n, 20), self.proc.output()


@dataclass
class Work:
    stack: Stack
    streamed: list[Any] = field(default_factory=list)  # the SSE events of the streamed response
    plain: str = ""  # created with a JSON answer and a traceparent, in `conversation`
    conversation: str = ""
    socket: list[bytes] = field(default_factory=list)  # every WebSocket message the SDK received, raw
    socket_events: list[Any] = field(default_factory=list)  # ... and as the SDK parsed it
    scrapes: dict[str, Samples] = field(default_factory=dict)
    background: str = ""
    answered: float = 0.0  # time.time() when the background create's answer was back

    def relayed(self) -> list[Any]:
        """The events of every response whose stream the proxy relayed (SSE, then WebSocket)."""
        return self.streamed + self.socket_events

    def relayed_ids(self) -> list[str]:
        return [e.response.id for e in self.relayed() if e.type in TERMINAL_EVENTS]


def _drive(stack: Stack) -> Work:
    """Through the proxy: a streamed and a JSON response, two on one WebSocket, then a background one nobody reads."""
    work = Work(stack)
    work.scrapes["start"] = scrape(stack.base)
    with stack.client() as client:
        stream = client.responses.create(model="gpt-4.1", input="Weather in Lisbon?", tools=TOOLS, stream=True)
        work.streamed = list(stream)
        conversation = client.conversations.create(items=[{"role": "user", "content": "hello"}])
        work.conversation = conversation.id
        plain = client.responses.create(model="gpt-5", input="Where is my order?", tools=TOOLS,
                                        conversation=conversation.id,
                                        extra_headers={"traceparent": TRACEPARENT})  # fmt: skip
        work.plain = plain.id
        stack.committed(2)
        work.scrapes["foreground"] = scrape(stack.base)
        with client.responses.connect() as connection:
            for model in ("gpt-5-mini", "gpt-4.1"):
                connection.response.create(model=model, input="hi", tools=TOOLS)
                while True:
                    work.socket.append(connection.recv_bytes())
                    work.socket_events.append(connection.parse_event(work.socket[-1]))
                    if work.socket_events[-1].type in TERMINAL_EVENTS:
                        break
        stack.committed(4)
        work.scrapes["socket"] = scrape(stack.base)
        background = client.responses.create(model="gpt-5", input="Summarise the handbook.", tools=TOOLS,
                                             background=True)  # fmt: skip
        work.answered = time.time()
        assert background.status == "queued"
        work.background = background.id
        stack.committed(5)
    assert wait_for(lambda: status(stack.base)["exporter"]["pending_spans"] == 0, 20), stack.proc.output()
    work.scrapes["end"] = scrape(stack.base)
    return work


@contextlib.contextmanager
def _stack(tmp: Path) -> Iterator[Stack]:
    """The simulated OpenAI Responses API (no workload of its own) behind a recorder, an OTLP receiver and
    `stepscope serve` with the proxy."""
    sim = Simulator(scenario_named("quiet", step_seconds=(0.3, 0.6), queue_seconds=(0.3, 0.5), **CALM),
                    api_key=APP_KEY, accepted_tokens=(OWN_KEY,), clock=SimClock(1.0), seed=21,
                    protocol="responses")  # fmt: skip
    recorder = Recorder(sim.app)
    root, stop_sim = serve_in_thread(recorder)
    proxy_port = free_port()
    try:
        with OtlpReceiver() as receiver:
            env = serve_env(root + sim.base_path, receiver.url, azure=False, OPENAI_API_KEY=OWN_KEY,
                            STEPSCOPE_PROXY_LISTEN=f"127.0.0.1:{proxy_port}",
                            STEPSCOPE_POLL_INTERVAL=str(POLL_S))  # fmt: skip
            with serve(tmp, env) as (proc, base):
                yield Stack(sim, recorder, root, receiver, proc, base, f"http://127.0.0.1:{proxy_port}{sim.base_path}",
                            root + sim.base_path)  # fmt: skip
    finally:
        stop_sim()


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Work]:
    with _stack(tmp_path_factory.mktemp("responses-proxy")) as stack:
        yield _drive(stack)


def _truth(work: Work) -> dict[str, dict[str, Any]]:
    return {r["id"]: r for r in responses_truth(work.stack.root)["responses"]}


def test_every_response_through_the_proxy_is_one_span_timed_by_the_server(work: Work) -> None:
    """Each response created through the proxy (streamed, JSON, on a WebSocket, in the background) arrives as one
    `chat {model}` span from its `created_at` to its `completed_at`; the one created with a `traceparent` header
    is a child of that span, the others start traces of their own."""
    truth = _truth(work)
    spans = one_span_each(list(work.stack.receiver.spans))
    assert sorted(spans) == sorted(truth) and len(truth) == 5
    for rid, response in truth.items():
        assert response["status"] == "completed"
        assert_response_span(spans[rid], response, provider="openai", seen_by=time.time())
    traced = spans.pop(work.plain)
    assert (traced.trace_id, traced.parent_span_id) == (TRACE_ID, PARENT_ID)
    assert all(s.trace_id != TRACE_ID and s.parent_span_id == "" for s in spans.values())


def test_streamed_tool_calls_become_timed_child_spans(work: Work) -> None:
    """Each tool-call item of a response streamed through the proxy (SSE or WebSocket) becomes one
    `execute_tool {tool}` child span of its response, flagged as observed, lasting from when the proxy saw it
    added to when it saw it done: neither before the simulator added, respectively finished, the item; a response
    answered in full has no tool spans, its items carry no times."""
    spans = list(work.stack.receiver.spans)
    responses = one_span_each(spans)
    tools: dict[str, ReceivedSpan] = {}
    for span in tool_spans(spans):
        assert span.attributes["openai.item.id"] not in tools, "a tool call arrived twice"
        tools[span.attributes["openai.item.id"]] = span
    engine = work.stack.sim.responses.engine  # type: ignore[union-attr]
    # When the simulator added and finished each item (simulated seconds, which are wall seconds at speed 1).
    timeline = {item.id: (item.added, item.done) for response in engine.order for item in response.output}
    calls = {e.item.id: e.item for e in work.relayed()
             if e.type == "response.output_item.done" and e.item.type.endswith("_call")}  # fmt: skip
    assert {item.type for item in calls.values()} == {"web_search_call", "code_interpreter_call"}
    assert sorted(tools) == sorted(calls), "one tool span per streamed tool call, and no other"
    truth = _truth(work)
    owner = {item["id"]: rid for rid, response in truth.items() for item in response["output"]}
    for item_id, item in calls.items():
        span, parent = tools[item_id], responses[owner[item_id]]
        assert span.name == f"execute_tool {item.type}"
        assert (span.trace_id, span.parent_span_id) == (parent.trace_id, parent.span_id)
        assert span.attributes["stepscope.time.observed"] is True
        assert span.end_ns > span.start_ns, "a positive duration"
        added, done = timeline[item_id]
        # 50 ms of slack: the simulated clock reads time.monotonic() from a time.time() start.
        assert (added - 0.05) * NS <= span.start_ns and (done - 0.05) * NS <= span.end_ns <= time.time() * NS
    plain = [item for item in truth[work.plain]["output"] if item["type"].endswith("_call")]
    assert plain and not {item["id"] for item in plain} & set(tools)


def test_a_response_streamed_or_answered_in_full_costs_no_request_of_stepscopes_own(work: Work) -> None:
    """Committing the streamed, the JSON and the WebSocket responses took no request of stepscope's own:
    `stepscope_api_requests_total{endpoint="get_response"}` did not move, and the simulator saw stepscope's key
    only on the credential check and one listing attempt, which answered 404 and was said once in the log."""
    reads = [requests_to(work.scrapes[phase], "get_response") for phase in ("start", "foreground", "socket")]
    assert reads == [1, 1, 1]  # the credential check's, before any response
    after = work.scrapes["socket"]
    assert requests_to(after, "list_responses", code="404") == requests_to(work.scrapes["end"], "list_responses") == 1
    foreground = [work.plain, *work.relayed_ids()]
    assert len(foreground) == 4
    own = [r for r in list(work.stack.recorder.requests) if r.own]
    assert not [r.path for r in own if any(rid in r.path for rid in foreground)]
    assert [r.path for r in own if r.at < work.answered] == ["/v1/responses/resp_stepscope_credential_check",
                                                             "/v1/responses"]  # fmt: skip
    assert work.stack.proc.output().count("this server lists no responses") == 1


def test_a_background_response_is_read_at_most_once_per_poll_interval_until_terminal(work: Work) -> None:
    """A background response created through the proxy, which the application never reads again, is read by
    stepscope with `GET /responses/{id}`, at most once per poll interval, until the read that finds it terminal,
    and then never again."""
    reads = work.stack.recorder.own("GET", f"/responses/{work.background}")
    assert len(reads) > 1 and reads[-1].status() == "completed", "read while it ran, and until it was terminal"
    assert {r.status() for r in reads[:-1]} <= {"queued", "in_progress"}, "no read after the terminal one"
    creates = [r for r in work.stack.recorder.requests if not r.own and r.method == "POST"]
    created = creates[-1].at  # the create's arrival: the proxy can have seen its answer no sooner
    assert creates[-1].path.endswith("/responses")
    times = [r.at for r in reads]
    gaps = [b - a for a, b in zip([created, *times], times, strict=False)]
    assert min(gaps) >= 0.9 * POLL_S, gaps
    assert len(reads) <= (times[-1] - created) / POLL_S + 1
    assert requests_to(work.scrapes["end"], "get_response", code="200") == len(reads)
    assert not [r for r in work.stack.recorder.requests if not r.own and work.background in r.path]


def test_websocket_mode_through_the_proxy_is_unchanged_and_committed(work: Work) -> None:
    """`client.responses.connect()` through the proxy gets every message the simulator sent on the socket,
    unchanged and in order, numbered from 0 up to one terminal event per response; each of the two responses
    created on the socket is committed as one span."""
    assert [m.decode() for m in work.socket] == work.stack.recorder.frames
    events = work.socket_events
    ends = [k for k, e in enumerate(events) if e.type in TERMINAL_EVENTS]
    assert len(ends) == 2
    for first, last in zip([0, ends[0] + 1], ends, strict=True):
        one = events[first : last + 1]
        assert one[0].type == "response.created" and one[-1].type == "response.completed"
        assert [e.sequence_number for e in one] == list(range(len(one)))
    spans = one_span_each(list(work.stack.receiver.spans))
    truth = _truth(work)
    for k in ends:
        rid = events[k].response.id
        assert_response_span(spans[rid], truth[rid], provider="openai", seen_by=time.time())
    assert {spans[events[k].response.id].name for k in ends} == {"chat gpt-5-mini", "chat gpt-4.1"}


def test_the_sdk_reads_the_same_through_the_proxy_as_directly(work: Work) -> None:
    """`responses.retrieve`, `responses.input_items.list` and `conversations.items.list` give the application the
    same objects through the proxy as from the API itself, and reading through the proxy commits nothing again."""
    stack = work.stack
    with stack.client() as proxied, stack.client(stack.direct) as direct:
        got = [
            (
                client.responses.retrieve(work.plain).model_dump(),
                [i.model_dump() for i in client.responses.input_items.list(work.plain, limit=2)],
                [i.model_dump() for i in client.conversations.items.list(work.conversation, limit=2)],
            )
            for client in (proxied, direct)
        ]
    assert got[0] == got[1]
    response, inputs, items = got[0]
    assert response["id"] == work.plain and response["status"] == "completed"
    assert [i["type"] for i in inputs] == ["message"]
    assert items[0]["id"] == response["output"][-1]["id"] and items[-1]["content"][0]["text"] == "hello"
    assert len(items) == len(response["output"]) + 2  # newest first: the output, the input, the first item
    samples = scrape(stack.base)
    assert total(samples, "stepscope_runs_total", **RESPONSES) == 5
    assert requests_to(samples, "get_response") == requests_to(work.scrapes["end"], "get_response")
