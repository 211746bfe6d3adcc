"""`stepscope serve` in proxy mode end to end: the official openai SDK drives the simulator through the proxy of a
real serve process with no thread configured, and a real OTLP receiver gets the spans.

The simulator accepts two keys: the application's (`APP_KEY`, sent by the SDK and forwarded by the proxy) and
stepscope's own (`OWN_KEY`, its polling), so the simulator-side request log tells the application's requests from
stepscope's. The SDK's transport keeps the bytes it received, so every answer the SDK saw is compared byte for byte
with the one the simulator sent, matched by `x-request-id`.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import struct
import threading
import time
from collections.abc import Callable, Iterator, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import httpx2
import openai
import pytest
from prometheus_client import CollectorRegistry

from stepscope.commands.wiring import Seams, build
from stepscope.config import load
from stepscope.protocols.assistants.proxied import ProxyFeed
from stepscope.protocols.assistants.reader import StepReader
from stepscope.simulator import FaultConfig, FaultSpec, SimClock, Simulator, scenario_named
from stepscope.testing import OtlpReceiver, ReceivedSpan
from tests.kit.fakes import CallbackDrops
from tests.kit.proxy import ProxyThread, serve_in_thread
from tests.procs import Proc, free_port, serve

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::DeprecationWarning")]

APP_KEY = "sk-app-Zq8v3kLmN0pXw7"
OWN_KEY = "sk-stepscope-own"
NS = 1_000_000_000
SPEED = 20.0  # simulated seconds per wall second
TRACE_ID, PARENT_ID = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"
FUNCTION_TOOL: Any = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
RUN_TERMINAL = frozenset({"completed", "failed", "cancelled", "expired", "incomplete"})


# --- the simulator, recording every API request with whose key it came and the bytes it answered ---------------


@dataclass
class Exchange:
    """One API request as the simulator answered it."""

    method: str
    path: str
    own: bool  # sent with stepscope's key (its polling), not the application's
    request_id: str
    status: int
    body: bytes
    arrived: float  # time.monotonic() when the request arrived
    answered: float  # ... and when its answer started


@dataclass
class RecordingSim:
    """ASGI middleware in front of the simulator: records every API request (control paths excluded)."""

    inner: Any
    log: list[Exchange] = field(default_factory=list)

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"].startswith("/_sim/"):
            await self.inner(scope, receive, send)
            return
        arrived = time.monotonic()
        auth = dict(scope["headers"]).get(b"authorization", b"")
        seen: dict[str, Any] = {"body": bytearray()}

        async def recording_send(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                seen["status"] = message["status"]
                seen["answered"] = time.monotonic()
                seen["rid"] = dict(message.get("headers") or []).get(b"x-request-id", b"").decode()
            elif message["type"] == "http.response.body":
                seen["body"] += message.get("body", b"")
            await send(message)

        try:
            await self.inner(scope, receive, recording_send)
        finally:
            if "status" in seen:
                own = auth == f"Bearer {OWN_KEY}".encode()
                self.log.append(Exchange(scope["method"], scope["path"], own, seen["rid"], seen["status"],
                                         bytes(seen["body"]), arrived, seen["answered"]))  # fmt: skip


# --- the SDK's side: its transport keeps the raw bytes of every answer ------------------------------------------


@dataclass
class Received:
    status: int
    request_id: str
    body: bytearray


class _TeeStream(httpx2.SyncByteStream):
    def __init__(self, inner: httpx2.SyncByteStream, into: bytearray) -> None:
        self._inner, self._into = inner, into

    def __iter__(self) -> Iterator[bytes]:
        for part in self._inner:
            self._into += part
            yield part

    def close(self) -> None:
        self._inner.close()


class TeeTransport(httpx2.BaseTransport):
    """The SDK's real HTTP transport, keeping each answer's status, request id and raw body bytes."""

    def __init__(self) -> None:
        self._inner = httpx2.HTTPTransport()
        self.received: list[Received] = []

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        response = self._inner.handle_request(request)
        seen = Received(response.status_code, response.headers.get("x-request-id", ""), bytearray())
        self.received.append(seen)
        assert isinstance(response.stream, httpx2.SyncByteStream)
        stream = _TeeStream(response.stream, seen.body)
        return httpx2.Response(response.status_code, headers=response.headers, stream=stream,
                               extensions=response.extensions)  # fmt: skip

    def close(self) -> None:
        self._inner.close()


def _sdk(base_url: str, transport: httpx2.BaseTransport | None = None) -> openai.OpenAI:
    http = httpx2.Client(transport=transport or httpx2.HTTPTransport(), timeout=30)
    return openai.OpenAI(base_url=base_url, api_key=APP_KEY, max_retries=0, http_client=http)


# --- one stack: simulator, receiver, serve with the proxy -------------------------------------------------------


@dataclass
class Stack:
    sim: Simulator
    recorder: RecordingSim
    root: str  # the simulator's root URL
    receiver: OtlpReceiver
    proc: Proc
    base: str  # serve's HTTP listener
    proxy: str  # the proxy's API base URL, as the application uses it
    state: Path

    def truth(self) -> dict[str, Any]:
        truth: dict[str, Any] = httpx.get(f"{self.root}/_sim/truth", timeout=10).json()
        return truth

    def run_truth(self, run_id: str) -> dict[str, Any]:
        (run,) = [r for r in self.truth()["runs"] if r["id"] == run_id]
        assert isinstance(run, dict)
        return run


@contextlib.contextmanager
def _stack(tmp: Path, otlp_url: str | None = None) -> Iterator[Stack]:
    """The simulator (no workload of its own), an OTLP receiver and `stepscope serve` with only the proxy to find
    runs; `otlp_url` points serve at another collector (e.g. one that is down)."""
    sim = Simulator(scenario_named("quiet", step_seconds=(1.0, 3.0), queue_seconds=(0.5, 1.0)), api_key=APP_KEY,
                    accepted_tokens=(OWN_KEY,), clock=SimClock(SPEED))  # fmt: skip
    recorder = RecordingSim(sim.app)
    root, stop_sim = serve_in_thread(recorder)
    proxy_port = free_port()
    try:
        with OtlpReceiver() as receiver:
            env = {"OPENAI_BASE_URL": root + "/v1", "OPENAI_API_KEY": OWN_KEY,
                   "STEPSCOPE_PROXY_LISTEN": f"127.0.0.1:{proxy_port}", "STEPSCOPE_POLL_INTERVAL": "0.2",
                   "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": otlp_url or receiver.url, "OTEL_BSP_SCHEDULE_DELAY": "50",
                   "STEPSCOPE_LOG_LEVEL": "DEBUG"}  # fmt: skip
            with serve(tmp, env) as (proc, base):
                yield Stack(sim, recorder, root, receiver, proc, base, f"http://127.0.0.1:{proxy_port}/v1",
                            tmp / "state.db")  # fmt: skip
    finally:
        stop_sim()


def _until(predicate: Callable[[], bool], what: str, limit_s: float = 20.0) -> None:
    deadline = time.monotonic() + limit_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def _assert_same_answers(received: list[Received], recorder: RecordingSim) -> None:
    """Each answer the SDK received has the status and bytes the simulator sent with its request id. The recorder
    logs a request once its handler returns, which can be just after the client has the last byte: wait for it."""
    wanted = {r.request_id for r in received}
    _until(lambda: wanted <= {e.request_id for e in list(recorder.log)}, "the simulator's record of each request")
    upstream = {e.request_id: e for e in list(recorder.log)}
    for answer in received:
        sent = upstream[answer.request_id]
        assert not sent.own
        assert (answer.status, bytes(answer.body)) == (sent.status, sent.body), sent.path


def _step_spans(spans: list[ReceivedSpan]) -> list[ReceivedSpan]:
    return [s for s in spans if s.name.startswith("run_step ")]


def _run_spans(spans: list[ReceivedSpan]) -> list[ReceivedSpan]:
    return [s for s in spans if s.kind == "client" and "openai.run.id" in s.attributes]


def _run_end(run: dict[str, Any]) -> int:
    key = {"completed": "completed_at", "failed": "failed_at", "cancelled": "cancelled_at",
           "incomplete": "incomplete_at"}.get(run["status"], "expires_at")  # fmt: skip
    end = run.get(key) or run.get("completed_at") or run.get("failed_at")
    assert isinstance(end, int), run
    return end


# --- the workload the application runs through the proxy --------------------------------------------------------


@dataclass
class Workload:
    stack: Stack
    tee: TeeTransport
    plain: list[str] = field(default_factory=list)  # run ids created and polled with create_and_poll
    streamed: list[str] = field(default_factory=list)  # run ids streamed from creation to the end
    resumed: str = ""  # a streamed run that waited for tool outputs, resumed by a streamed submit
    cancelled: str = ""
    traced: str = ""  # created with a traceparent header
    errors: list[int] = field(default_factory=list)  # statuses of the upstream errors the SDK got

    @property
    def runs(self) -> list[str]:
        return [*self.plain, *self.streamed, self.resumed, self.cancelled]


def _drive(stack: Stack) -> Workload:
    """Plain, streamed, resumed, cancelled and traced runs and two upstream errors, all through the proxy."""
    tee = TeeTransport()
    work = Workload(stack, tee)
    client = _sdk(stack.proxy, tee)
    runs = client.beta.threads.runs
    asst = client.beta.assistants.create(model="gpt-4o", tools=[{"type": "code_interpreter"}])
    tooled = client.beta.assistants.create(model="gpt-4o", tools=[FUNCTION_TOOL])
    thread = client.beta.threads.create()
    for metadata in ({"sim_steps": "3"}, {"sim_steps": "2", "sim_outcome": "failed"}):
        run = runs.create_and_poll(thread_id=thread.id, assistant_id=asst.id, metadata=metadata, poll_interval_ms=50)
        assert run.status in RUN_TERMINAL
        work.plain.append(run.id)
    traced = runs.create_and_poll(thread_id=thread.id, assistant_id=asst.id, extra_headers={"traceparent": TRACEPARENT},
                                  poll_interval_ms=50)  # fmt: skip
    work.plain.append(traced.id)
    work.traced = traced.id
    for _ in range(2):
        streamed = client.beta.threads.create()
        with runs.stream(thread_id=streamed.id, assistant_id=asst.id, metadata={"sim_steps": "4"}) as stream:
            stream.until_done()
            final = stream.get_final_run()
        assert final.status == "completed"
        work.streamed.append(final.id)
    waits = client.beta.threads.create()
    with runs.stream(thread_id=waits.id, assistant_id=tooled.id, metadata={"sim_steps": "3"}) as stream:
        stream.until_done()
        waiting = stream.get_final_run()
    assert waiting.status == "requires_action" and waiting.required_action is not None
    outputs: Any = [{"tool_call_id": c.id, "output": "sunny"}
                    for c in waiting.required_action.submit_tool_outputs.tool_calls]  # fmt: skip
    with runs.submit_tool_outputs_stream(run_id=waiting.id, thread_id=waits.id, tool_outputs=outputs) as stream:
        stream.until_done()
        assert stream.get_final_run().status == "completed"
    work.resumed = waiting.id
    slow = client.beta.threads.create()
    run = runs.create(thread_id=slow.id, assistant_id=asst.id, metadata={"sim_steps": "2", "sim_step_seconds": "30"})
    _until(lambda: bool(runs.steps.list(run.id, thread_id=slow.id).data), "the slow run's first step")
    assert runs.cancel(run.id, thread_id=slow.id).status in ("cancelling", "cancelled")
    assert runs.poll(run.id, thread_id=slow.id, poll_interval_ms=50).status == "cancelled"
    work.cancelled = run.id
    with pytest.raises(openai.NotFoundError) as missing:
        runs.create(thread_id="thread_missing", assistant_id=asst.id)
    stack.sim.set_faults(FaultConfig(endpoints={"create_run": FaultSpec(error_rate=1.0, error_statuses=(500,))}))
    try:
        with pytest.raises(openai.InternalServerError) as failing:
            runs.create(thread_id=thread.id, assistant_id=asst.id)
    finally:
        stack.sim.set_faults(None)
    work.errors = [missing.value.status_code, failing.value.status_code]
    client.close()
    return work


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workload]:
    with _stack(tmp_path_factory.mktemp("proxy-serve")) as stack:
        done = _drive(stack)
        expected = sum(len(stack.run_truth(r)["steps"]) for r in done.runs)
        _until(lambda: len(_step_spans(stack.receiver.spans)) >= expected
               and len(_run_spans(stack.receiver.spans)) >= len(done.runs), "every run and step exported")  # fmt: skip
        time.sleep(0.5)  # a duplicate, or a late request of stepscope's own, would show by now
        yield done


def test_the_sdk_gets_the_upstreams_bytes_and_statuses(work: Workload) -> None:
    """Every answer the SDK got through the proxy (JSON, event streams, 404 and 500) has the status and the exact
    bytes the simulator sent, and every request the application made reached the simulator once."""
    got = work.tee.received
    _assert_same_answers(got, work.stack.recorder)
    upstream = {e.request_id: e for e in list(work.stack.recorder.log) if not e.own}
    assert len(got) == len(upstream) and len({r.request_id for r in got}) == len(got)
    assert work.errors == [404, 500]
    statuses = {e.status for e in upstream.values()}
    assert {200, 404, 500} <= statuses
    assert sum(1 for r in got if b"event: thread.run.step.completed" in r.body) == 3  # two streamed runs, one resumed


def test_every_step_is_exported_once_with_the_servers_times(work: Workload) -> None:
    """Each run created through the proxy, polled or streamed, gives one run span and one span per step, timed
    exactly by the simulator's timestamps and parented under its run."""
    spans = list(work.stack.receiver.spans)
    runs = {s.attributes["openai.run.id"]: s for s in _run_spans(spans)}
    steps = _step_spans(spans)
    assert len({s.span_id for s in spans}) == len(spans)
    assert sorted(runs) == sorted(work.runs) and len(_run_spans(spans)) == len(work.runs)
    by_step = {s.attributes["openai.run_step.id"]: s for s in steps}
    assert len(by_step) == len(steps), "a step was exported twice"
    statuses = set()
    for run_id in work.runs:
        truth = work.stack.run_truth(run_id)
        statuses.add(truth["status"])
        span = runs[run_id]
        assert (span.start_ns, span.end_ns) == (truth["created_at"] * NS, _run_end(truth) * NS), run_id
        assert span.attributes["openai.run.status"] == truth["status"]
        assert truth["steps"], run_id
        for step in truth["steps"]:
            got = by_step.pop(step["id"])
            assert got.start_ns == step["created_at"] * NS
            assert got.end_ns == step[f"{step['status']}_at"] * NS
            assert (got.trace_id, got.parent_span_id) == (span.trace_id, span.span_id)
    assert by_step == {}
    assert statuses == {"completed", "failed", "cancelled"}


def test_a_streamed_run_costs_stepscope_at_most_two_requests(work: Workload) -> None:
    """A run streamed from creation to its end costs at most two requests of stepscope's own, and so does a
    streamed submit from its start; while the run waits for the application, only the run is re-read; no run
    created through the proxy needs a run listing."""
    own = [e for e in list(work.stack.recorder.log) if e.own]
    per_run = {run_id: [e for e in own if f"/runs/{run_id}" in e.path] for run_id in work.runs}
    # Polled runs show requests of stepscope's own: the recorder tells them apart, so the bound below is not vacuous.
    assert all(per_run[run_id] for run_id in work.plain), {r: len(per_run[r]) for r in work.plain}
    for run_id in work.streamed:
        assert len(per_run[run_id]) <= 2, [e.path for e in per_run[run_id]]
    # How often the waiting run is read depends on how soon the application submits: one read per poll interval.
    # The submit's stream reports the run from the moment the upstream answers it; a poll that started before
    # then is a waiting read.
    resumed = per_run[work.resumed]
    (submit,) = [e for e in work.stack.recorder.log if e.path.endswith(f"/runs/{work.resumed}/submit_tool_outputs")]
    waiting = [e for e in resumed if e.arrived < submit.answered]
    assert {e.path for e in waiting} <= {f"/v1/threads/{work.stack.run_truth(work.resumed)['thread_id']}/runs/"
                                         f"{work.resumed}"}  # fmt: skip
    assert len(resumed) - len(waiting) <= 2, [e.path for e in resumed]
    assert not [e.path for e in own if e.path.endswith("/runs")], "a run listing: discovery ran"
    assert sum(1 for e in own if "/assistants/" in e.path) <= 3  # the credential check and each assistant's name


def test_a_traceparent_on_create_parents_the_run_span(work: Workload) -> None:
    """A `traceparent` header on the create request puts the run span in that trace, as a child of that span."""
    spans = list(work.stack.receiver.spans)
    (run,) = [s for s in _run_spans(spans) if s.attributes["openai.run.id"] == work.traced]
    assert (run.trace_id, run.parent_span_id) == (TRACE_ID, PARENT_ID)
    others = [s for s in _run_spans(spans) if s is not run]
    assert all(s.trace_id != TRACE_ID for s in others)


def test_the_applications_key_shows_nowhere(work: Workload) -> None:
    """The application's key appears in no log line, no metric, no span and not in the store."""
    stack = work.stack
    metrics = httpx.get(f"{stack.base}/metrics", timeout=5).text
    status = httpx.get(f"{stack.base}/v1/status", timeout=5).text
    assert "stepscope_api_requests_total" in metrics
    assert "proxying" in stack.proc.output()  # the log is there to search, at DEBUG
    for text in (stack.proc.output(), metrics, status, repr(list(stack.receiver.spans))):
        assert APP_KEY not in text and APP_KEY[3:] not in text
    for path in stack.state.parent.glob("state.db*"):
        assert APP_KEY.encode() not in path.read_bytes()


# --- fail-open ---------------------------------------------------------------------------------------------------

# The immutable flag (chattr +i) by its ioctl: root ignores file modes. Values of <linux/fs.h>.
_FS_IOC_GETFLAGS, _FS_IOC_SETFLAGS, _FS_IMMUTABLE_FL = 0x80086601, 0x40086602, 0x10


def _set_immutable(path: Path, on: bool) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        (flags,) = struct.unpack("i", fcntl.ioctl(fd, _FS_IOC_GETFLAGS, struct.pack("i", 0)))
        new = flags | _FS_IMMUTABLE_FL if on else flags & ~_FS_IMMUTABLE_FL
        fcntl.ioctl(fd, _FS_IOC_SETFLAGS, struct.pack("i", new))
    finally:
        os.close(fd)


@contextlib.contextmanager
def _unwritable_store(state: Path) -> Iterator[None]:
    """The store's database and write-ahead log become unwritable under the running process: its writes fail
    with a disk I/O error. (The shared-memory index stays writable: it is mapped, and a write there would crash.)"""
    files = [state, state.with_name(state.name + "-wal")]
    if os.geteuid() != 0:
        for path in files:
            path.chmod(0o444)
    else:
        for path in files:
            _set_immutable(path, True)
    try:
        yield
    finally:
        for path in files:
            if os.geteuid() == 0:
                _set_immutable(path, False)
            path.chmod(0o644)


def _run_through(proxy: str) -> tuple[openai.types.beta.threads.Run, list[str], TeeTransport]:
    """A polled run and a streamed run through the proxy: (the polled run, the streamed run's events, the tee)."""
    tee = TeeTransport()
    with _sdk(proxy, tee) as client:
        asst = client.beta.assistants.create(model="gpt-4o", tools=[{"type": "code_interpreter"}])
        thread = client.beta.threads.create()
        run = client.beta.threads.runs.create_and_poll(thread_id=thread.id, assistant_id=asst.id, poll_interval_ms=50)
        events: list[str] = [e.event for e in client.beta.threads.runs.create(thread_id=thread.id, assistant_id=asst.id,
                                                                    stream=True)]  # fmt: skip
    return run, events, tee


def test_the_proxy_serves_with_the_collector_down_and_the_store_unwritable(tmp_path: Path) -> None:
    """With nothing listening at the collector's address and the store failing every write, runs and streams
    through the proxy complete with the upstream's exact answers, and stepscope reports the store unhealthy."""
    dead = f"http://127.0.0.1:{free_port()}/v1/traces"
    with _stack(tmp_path, otlp_url=dead) as stack:
        _until(lambda: stack.state.with_name("state.db-wal").exists(), "the store's write-ahead log")
        with _unwritable_store(stack.state):
            run, events, tee = _run_through(stack.proxy)
            _until(lambda: not httpx.get(f"{stack.base}/v1/status", timeout=5).json()["store"]["healthy"],
                   "the store's failure to show")  # fmt: skip
            again, _, tee_again = _run_through(stack.proxy)
        _assert_same_answers([*tee.received, *tee_again.received], stack.recorder)
    assert run.status == again.status == "completed"
    assert events[0] == "thread.run.created" and events[-1] == "thread.run.completed"


def test_the_proxy_serves_with_the_feed_queue_full(tmp_path: Path) -> None:
    """With the feed's queue at its bound (its applier stalled), runs and streams through the proxy complete with
    the upstream's exact answers, and what did not fit is counted as `proxy_feed_full`."""
    sim = Simulator(scenario_named("quiet", step_seconds=(1.0, 3.0)), api_key=APP_KEY, clock=SimClock(SPEED))
    recorder = RecordingSim(sim.app)
    root, stop_sim = serve_in_thread(recorder)
    config = load(env={"OPENAI_BASE_URL": root + "/v1", "OPENAI_API_KEY": OWN_KEY,
                       "STEPSCOPE_STATE": str(tmp_path / "state.db")})  # fmt: skip
    parts = build(config, Seams(registry=CollectorRegistry()))
    assert isinstance(parts.reader, StepReader)
    dropped: list[str] = []
    lock = threading.Lock()

    def count(reason: str, n: int) -> None:
        with lock:
            dropped.extend([reason] * n)

    # Never started: nothing drains the queue, so after one item every call finds it full.
    feed = ProxyFeed(parts.poller, parts.reader, drops=CallbackDrops(count), queue_max=1)
    try:
        with ProxyThread(root + "", feed, drops=CallbackDrops(count)) as proxy:
            run, events, tee = _run_through(proxy.root + "/v1")
    finally:
        stop_sim()
    assert run.status == "completed" and events[-1] == "thread.run.completed"
    _assert_same_answers(tee.received, recorder)
    assert set(dropped) == {"proxy_feed_full"} and len(dropped) >= sum(e.startswith("thread.run.") for e in events)
