"""The official openai SDK (3.57.0) talking to the simulator through the proxy, over real sockets on 127.0.0.1."""

from __future__ import annotations

import gc
import logging
import socket
import time
import tracemalloc
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import httpx
import openai
import pytest
from openai.types.beta import FunctionToolParam
from openai.types.beta.threads import Run
from openai.types.beta.threads.run_submit_tool_outputs_params import ToolOutput

from stepscope.core.records import UnitRef
from stepscope.simulator import FaultConfig, FaultSpec, SimClock, Simulator, SimulatorServer, scenario_named
from tests.kit.fakes import CallbackDrops
from tests.kit.proxy import CountingUpstream, ProxyThread, RecordingRuns, serve_in_thread
from tests.procs import free_port

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

KEY = "sk-sim-d0n0tl3akth1s"
FUNCTION_TOOL: FunctionToolParam = {
    "type": "function",
    "function": {"name": "get_weather", "parameters": {"type": "object"}},
}
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
HEADERS = {"Authorization": f"Bearer {KEY}", "OpenAI-Beta": "assistants=v2"}


@pytest.fixture
def sim() -> Iterator[SimulatorServer]:
    simulator = Simulator(scenario_named("quiet", step_seconds=(1.0, 2.0)), api_key=KEY, clock=SimClock(speed=40))
    with SimulatorServer(simulator) as server:
        yield server


@pytest.fixture
def feed() -> RecordingRuns:
    return RecordingRuns()


@pytest.fixture
def proxy(sim: SimulatorServer, feed: RecordingRuns) -> Iterator[ProxyThread]:
    with ProxyThread(sim.url, feed) as running:
        yield running


def _sdk(base_url: str, **headers: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=base_url, api_key=KEY, max_retries=0, timeout=20, default_headers=headers)


@pytest.fixture
def via(proxy: ProxyThread) -> Iterator[openai.OpenAI]:
    with _sdk(proxy.root + "/v1") as client:
        yield client


def _until(predicate: Callable[[], bool], what: str, limit_s: float = 5.0) -> None:
    deadline = time.monotonic() + limit_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


def _wait_status(client: openai.OpenAI, thread_id: str, run_id: str, statuses: set[str]) -> str:
    deadline = time.monotonic() + 20
    while (status := client.beta.threads.runs.retrieve(run_id, thread_id=thread_id).status) not in statuses:
        assert time.monotonic() < deadline, f"run stayed {status}"
        time.sleep(0.02)
    return status


def _same_answer(direct: httpx.Response, proxied: httpx.Response) -> None:
    assert proxied.status_code == direct.status_code
    assert proxied.content == direct.content
    varying = {"x-request-id", "openai-processing-ms", "date", "x-ratelimit-remaining-requests",
               "x-ratelimit-reset-requests"}  # fmt: skip
    assert [k for k, _ in proxied.headers.multi_items()] == [k for k, _ in direct.headers.multi_items()]
    assert {k: v for k, v in proxied.headers.items() if k not in varying} == {
        k: v for k, v in direct.headers.items() if k not in varying
    }


def test_plain_run_is_reported_and_answers_are_byte_identical(
    sim: SimulatorServer, proxy: ProxyThread, via: openai.OpenAI, feed: RecordingRuns
) -> None:
    """A run created through the proxy reaches the feed with the SDK's run; raw answers match the direct ones."""
    asst = via.beta.assistants.create(model="gpt-4o", tools=[{"type": "code_interpreter"}])
    thread = via.beta.threads.create()
    run = via.beta.threads.runs.create(thread_id=thread.id, assistant_id=asst.id)
    _until(lambda: len(feed.of("run_created")) == 1, "the created run")
    reported, traceparent = feed.of("run_created")[0]
    assert reported["id"] == run.id and reported["thread_id"] == thread.id and traceparent is None
    _wait_status(via, thread.id, run.id, {"completed"})
    with httpx.Client(headers=HEADERS) as raw:
        for path in (f"/threads/{thread.id}/runs/{run.id}", f"/threads/{thread.id}/runs/{run.id}/steps",
                     f"/assistants/{asst.id}", f"/threads/{thread.id}/runs?limit=5&order=asc"):  # fmt: skip
            _same_answer(raw.get(sim.url + path), raw.get(proxy.root + "/v1" + path))
    assert [name for name, _ in feed.calls] == ["run_created"]


def test_streamed_run_and_streamed_submit_reach_the_feed_in_order(via: openai.OpenAI, feed: RecordingRuns) -> None:
    """Every run and step event of a streamed run and of its streamed submit_tool_outputs reaches the feed, in
    the SDK's order, each stream ending complete, the run reported at creation and again at resumption."""
    asst = via.beta.assistants.create(model="gpt-4o", tools=[FUNCTION_TOOL, {"type": "code_interpreter"}])
    thread = via.beta.threads.create()
    first = list(via.beta.threads.runs.create(thread_id=thread.id, assistant_id=asst.id, stream=True))
    waiting = first[-1].data
    assert first[-1].event == "thread.run.requires_action"
    assert isinstance(waiting, Run) and waiting.required_action is not None
    calls = waiting.required_action.submit_tool_outputs.tool_calls
    outputs: list[ToolOutput] = [{"tool_call_id": c.id, "output": "sunny"} for c in calls]
    with via.beta.threads.runs.submit_tool_outputs_stream(
        run_id=waiting.id, thread_id=thread.id, tool_outputs=outputs
    ) as stream:
        second = list(stream)
    assert second[-1].event == "thread.run.completed"
    _until(lambda: len(feed.of("stream_ended")) == 2, "both streams to end")
    seen = [
        (e.event, e.data.model_dump(mode="json", exclude_unset=True))
        for e in first + second
        if e.event.startswith("thread.run.")
    ]
    assert [(name, data["id"]) for name, data in feed.of("stream_event")] == [(n, d["id"]) for n, d in seen]
    assert [data for _, data in feed.of("stream_event")] == [data for _, data in seen]
    assert [args[0]["status"] for args in feed.of("run_created")] == ["queued", "queued"]
    assert feed.of("stream_ended") == [(thread.id, waiting.id, True), (thread.id, waiting.id, True)]
    steps = [d for n, d in feed.of("stream_event") if n.startswith("thread.run.step.") and d["status"] != "in_progress"]
    assert [s["status"] for s in steps] == ["completed"] * len(steps) and len(steps) >= 2


def test_stream_cut_short_and_client_gone_end_incomplete(sim: SimulatorServer, via: openai.OpenAI,
                                                         feed: RecordingRuns) -> None:  # fmt: skip
    """A stream the upstream ends without `done`, and one the application abandons, end incomplete in the feed."""
    asst = via.beta.assistants.create(model="gpt-4o", tools=[{"type": "code_interpreter"}])
    sim.simulator.set_faults(FaultConfig(endpoints={"create_run": FaultSpec(truncate_rate=1.0)}))
    thread = via.beta.threads.create()
    events = list(via.beta.threads.runs.create(thread_id=thread.id, assistant_id=asst.id, stream=True))
    assert [e.event for e in events] == ["thread.run.created", "thread.run.queued"]
    created = events[0].data
    assert isinstance(created, Run)
    _until(lambda: len(feed.of("stream_ended")) == 1, "the cut stream to end")
    assert feed.of("stream_ended") == [(thread.id, created.id, False)]
    sim.simulator.set_faults(None)
    other = via.beta.threads.create()
    stream = via.beta.threads.runs.create(thread_id=other.id, assistant_id=asst.id, stream=True,
                                          metadata={"sim_step_seconds": "40"})  # fmt: skip
    assert next(iter(stream)).event == "thread.run.created"
    stream.close()
    _until(lambda: len(feed.of("stream_ended")) == 2, "the abandoned stream to end")
    assert feed.of("stream_ended")[1][0] == other.id and feed.of("stream_ended")[1][2] is False


def test_cancelled_run_and_traceparent(via: openai.OpenAI, proxy: ProxyThread, feed: RecordingRuns) -> None:
    """A cancel passes through unreported; a create's valid traceparent goes with the run unless its metadata
    has one, and an invalid one never does."""
    asst = via.beta.assistants.create(model="gpt-4o", tools=[{"type": "code_interpreter"}])
    traced = _sdk(proxy.root + "/v1", traceparent=TRACEPARENT)
    run = traced.beta.threads.create_and_run(assistant_id=asst.id, metadata={"sim_step_seconds": "40"})
    assert via.beta.threads.runs.cancel(run.id, thread_id=run.thread_id).status == "cancelling"
    assert _wait_status(via, run.thread_id, run.id, {"cancelled"}) == "cancelled"
    own = traced.beta.threads.create_and_run(assistant_id=asst.id, metadata={"traceparent": TRACEPARENT[:-1] + "0"})
    bad = _sdk(proxy.root + "/v1", traceparent="00-zz-yy-01").beta.threads.create_and_run(assistant_id=asst.id)
    _until(lambda: len(feed.of("run_created")) == 3, "three created runs")
    assert [(r["id"], tp) for r, tp in feed.of("run_created")] == [(run.id, TRACEPARENT), (own.id, None),
                                                                  (bad.id, None)]  # fmt: skip
    assert {name for name, _ in feed.calls} == {"run_created"}


def test_upstream_errors_pass_unchanged_and_unreachable_is_502(sim: SimulatorServer, proxy: ProxyThread,
                                                               feed: RecordingRuns) -> None:  # fmt: skip
    """4xx answers come back byte for byte with no feed call; an unreachable upstream is an OpenAI-shaped 502."""
    bad_key = {**HEADERS, "Authorization": "Bearer sk-wrong-key-1234"}
    with httpx.Client() as raw:
        for headers, path, body in (
            (HEADERS, "/threads/thread_nope/runs", {"assistant_id": "asst_x"}),
            (HEADERS, "/threads/runs", {"assistant_id": "asst_missing"}),
            (bad_key, "/threads/runs", {"assistant_id": "asst_x"}),
        ):
            direct = raw.post(sim.url + path, headers=headers, json=body)
            _same_answer(direct, raw.post(proxy.root + "/v1" + path, headers=headers, json=body))
            assert direct.status_code in (400, 401, 404)
    with pytest.raises(openai.NotFoundError):
        _sdk(proxy.root + "/v1").beta.threads.runs.create(thread_id="thread_nope", assistant_id="asst_x")
    assert feed.calls == []
    with ProxyThread(f"http://127.0.0.1:{free_port()}", feed) as dead:
        with pytest.raises(openai.InternalServerError) as info:
            _sdk(dead.root + "/v1").beta.threads.create()
        assert info.value.status_code == 502
        error = info.value.response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["code"] == "bad_gateway"


def _raw_exchange(port: int, request: bytes) -> bytes:
    """Send one raw request with `Connection: close` and read the answer to the end."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(request.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n"))
        answer = b""
        while part := sock.recv(65536):
            answer += part
        return answer


def test_absolute_form_and_connect_are_refused() -> None:
    """`GET http://host/...` gets 400 and `CONNECT host:443` 405; neither reaches the upstream."""
    upstream = CountingUpstream(0)
    root, stop = serve_in_thread(upstream)
    try:
        with ProxyThread(root, RecordingRuns()) as proxy:
            port = proxy.server.port
            absolute = _raw_exchange(port, b"GET http://example.com/v1/models HTTP/1.1\r\nHost: example.com\r\n\r\n")
            connect = _raw_exchange(port, b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n")
            normal = _raw_exchange(port, b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n")
    finally:
        stop()
    assert absolute.startswith(b"HTTP/1.1 400 ") and b"absolute_form_refused" in absolute
    assert connect.startswith(b"HTTP/1.1 405 ")
    assert normal.startswith(b"HTTP/1.1 200 ")
    assert [(method, path) for method, path, _ in upstream.requests] == [("GET", "/v1/models")]


def test_hop_by_hop_headers_stay_behind() -> None:
    """Connection-named, hop-by-hop and proxy headers are not forwarded; end-to-end ones are, in order."""
    upstream = CountingUpstream(0)
    root, stop = serve_in_thread(upstream)
    headers = [("Connection", "keep-alive, X-Hop"), ("X-Hop", "1"), ("Proxy-Authorization", "Basic eA=="),
               ("TE", "trailers"), ("Authorization", f"Bearer {KEY}"), ("X-Keep", "a"), ("X-Keep", "b")]  # fmt: skip
    try:
        with ProxyThread(root, RecordingRuns()) as proxy:
            assert httpx.get(proxy.root + "/v1/anything", headers=headers).status_code == 200
    finally:
        stop()
    (_, _, sent), = upstream.requests  # fmt: skip
    names = [k.decode() for k, _ in sent]
    assert not {"x-hop", "proxy-authorization", "te"} & set(names)
    assert [v for k, v in sent if k == b"x-keep"] == [b"a", b"b"] and (
        b"authorization",
        f"Bearer {KEY}".encode(),
    ) in sent


def test_fifty_megabytes_each_way_in_bounded_memory() -> None:
    """A 50 MB upload and a 50 MB answer pass through whole while the process allocates under 8 MB at peak."""
    size = 50 * 1024 * 1024
    upstream = CountingUpstream(size)
    root, stop = serve_in_thread(upstream)
    chunk = b"y" * 65536

    def upload() -> Iterator[bytes]:
        for _ in range(size // len(chunk)):
            yield chunk

    try:
        with ProxyThread(root, RecordingRuns()) as proxy, httpx.Client(timeout=60) as client:
            gc.collect()
            tracemalloc.start()
            try:
                received = 0
                with client.stream("POST", proxy.root + "/v1/files", content=upload(),
                                   headers={"content-length": str(size)}) as response:  # fmt: skip
                    for part in response.iter_raw():
                        received += len(part)
                _, peak = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
    finally:
        stop()
    assert upstream.received == [size] and received == size
    assert peak < 8 * 1024 * 1024, f"peak {peak / 1e6:.1f} MB"


class _Broken:
    """`RunEvents` that fail on every call."""

    def run_created(self, run: Mapping[str, Any], traceparent: str | None) -> None:
        raise RuntimeError("store is read-only")

    def stream_event(self, event: str, data: Mapping[str, Any]) -> None:
        raise RuntimeError("queue full")

    def stream_ended(self, ref: UnitRef, complete: bool) -> None:
        raise RuntimeError("exporter down")

    def submit_sent(self, ref: UnitRef) -> None:
        raise RuntimeError("exporter down")


def test_failing_feed_fails_open_and_the_key_never_shows(
    sim: SimulatorServer, caplog: pytest.LogCaptureFixture
) -> None:
    """With run events that raise on every call, runs and streams still complete through the proxy; failures are
    counted and logged once, and the application's key appears in no log line and no recorded call."""
    counted: list[str] = []
    for name in ("stepscope", "uvicorn"):
        caplog.set_level(logging.DEBUG, logger=name)
    recording = RecordingRuns()
    with ProxyThread(sim.url, _Broken(), drops=CallbackDrops(lambda reason, n: counted.extend([reason] * n))) as proxy:
        client = _sdk(proxy.root + "/v1")
        asst = client.beta.assistants.create(model="gpt-4o", tools=[{"type": "code_interpreter"}])
        run = client.beta.threads.create_and_run(assistant_id=asst.id)
        assert _wait_status(client, run.thread_id, run.id, {"completed"}) == "completed"
        events = list(client.beta.threads.runs.create(thread_id=run.thread_id, assistant_id=asst.id, stream=True))
        with openai.OpenAI(base_url=proxy.root + "/v1", api_key="sk-wrong-key-1234", max_retries=0) as wrong:
            with pytest.raises(openai.AuthenticationError):
                wrong.beta.threads.create()
        client.close()
    with ProxyThread(sim.url, recording) as proxy, _sdk(proxy.root + "/v1") as client:
        client.beta.threads.create_and_run(assistant_id=asst.id)
        _until(lambda: len(recording.calls) == 1, "the recorded run")
    assert events[-1].event == "thread.run.completed"
    # The JSON answer's run_created; the stream's run_created (its first event), then one stream_event per later
    # thread.run.* event; one stream_ended.
    run_events = sum(e.event.startswith("thread.run.") for e in events)
    assert set(counted) == {"proxy_observer_error"} and len(counted) == 1 + run_events + 1
    ours = [r for r in caplog.records if r.name.startswith(("stepscope", "uvicorn"))]
    failures = [r for r in ours if "observing an answer failed" in r.getMessage()]
    assert len(failures) == 1 and failures[0].exc_info is None
    text = "\n".join(r.getMessage() for r in ours)
    assert KEY not in text and "sk-wrong-key-1234" not in text and KEY not in repr(recording.calls)
