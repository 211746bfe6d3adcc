"""Issue 20's hostile neighbours around the process: SIGTERM with everything around stepscope hostile at once, and a
disk that takes no writes for a while.

Each test runs `stepscope serve` as a subprocess against the simulator over real HTTP, asserts its figure and prints
it (`pytest -s` shows the lines).
"""

from __future__ import annotations

import json
import resource
import socket
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from stepscope.commands.sidecar import SHUTDOWN_BUDGET_S
from stepscope.receivers.asgi import Receive, Scope, Send
from stepscope.simulator import SimClock, Simulator, SimulatorServer, scenario_named
from stepscope.testing import OtlpReceiver
from tests.faults.neighbours import (
    TERMINAL_RUN,
    Handler,
    Hanger,
    Sampler,
    Upstream,
    counts_of,
    hang,
    piped_serve,
    read_request_body,
    scrape,
    truth_counts,
)
from tests.kit.proxy import serve_in_thread
from tests.procs import free_port, serve, wait_until

pytestmark = pytest.mark.slow

KEY = "sk-sim"
HEADERS = {"Authorization": f"Bearer {KEY}", "OpenAI-Beta": "assistants=v2"}
STREAMS = 10
PARTIAL = 50


# --- SIGTERM with everything hostile ------------------------------------------------------------------------------


class Hostile:
    """What the upstream does once `on`: a run create answers the head of an event stream and one event, then stays
    open; every other request is read and never answered."""

    def __init__(self) -> None:
        self.on = False
        self.template: dict[str, Any] = {}

    def intercept(self, scope: Scope) -> Handler | None:
        if not self.on:
            return None
        if scope["method"] == "POST" and scope["path"].endswith("/runs"):
            return self._stream
        return hang(scope)

    async def _stream(self, scope: Scope, receive: Receive, send: Send) -> None:
        await read_request_body(receive)
        thread = scope["path"].split("/")[3]
        run = {**self.template, "id": f"run_open{time.monotonic_ns():x}", "thread_id": thread, "status": "queued"}
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream; charset=utf-8")]})  # fmt: skip
        event = b"event: thread.run.created\ndata: " + json.dumps(run).encode() + b"\n\n"
        await send({"type": "http.response.body", "body": event, "more_body": True})
        while (await receive())["type"] != "http.disconnect":
            pass


def _open_stream(port: int, thread: str, assistant: str) -> socket.socket:
    """A run create with `stream: true` sent to the proxy, read up to its first event; the connection stays open."""
    body = json.dumps({"assistant_id": assistant, "stream": True}).encode()
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(f"POST /v1/threads/{thread}/runs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n"
                 f"OpenAI-Beta: assistants=v2\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {len(body)}\r\n\r\n".encode() + body)  # fmt: skip
    seen = b""
    while b"thread.run.created" not in seen:
        part = sock.recv(65536)
        assert part, f"the proxy closed the stream: {seen!r}"
        seen += part
    return sock


def test_sigterm_with_everything_hostile_exits_within_the_budget(tmp_path: Path) -> None:
    """With the API accepting requests and never answering (from just after serve started: the start-up credential
    check is not this probe's), the OTLP collector accepting and never answering, ten event streams open through the
    proxy and fifty half-sent requests on it, SIGTERM ends serve within its 8 s budget with exit code 0, no traceback,
    and a line naming the spans kept."""
    sim = Simulator(scenario_named("quiet", step_seconds=(20.0, 40.0)), clock=SimClock(20))
    hostile = Hostile()
    upstream = Upstream(sim.app, hostile.intercept)
    root, stop = serve_in_thread(upstream)
    proxy_port = free_port()
    held: list[socket.socket] = []
    try:
        with Hanger() as collector:
            env = {"OPENAI_BASE_URL": root + "/v1", "OPENAI_API_KEY": KEY, "STEPSCOPE_POLL_INTERVAL": "0.2",
                   "STEPSCOPE_PROXY_LISTEN": f"127.0.0.1:{proxy_port}",
                   "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": collector.url + "/v1/traces",
                   "OTEL_BSP_SCHEDULE_DELAY": "100"}  # fmt: skip
            with serve(tmp_path, env) as (proc, base):
                with httpx.Client(base_url=f"http://127.0.0.1:{proxy_port}/v1", headers=HEADERS, timeout=10) as app:
                    assistant = app.post("/assistants", json={"model": "gpt-4o"}).json()["id"]
                    threads = [app.post("/threads", json={}).json()["id"] for _ in range(STREAMS + 4)]
                    for thread in threads[STREAMS:]:  # runs that finish, so spans wait for the collector ...
                        app.post(f"/threads/{thread}/runs", json={"assistant_id": assistant,
                                                                   "metadata": {"sim_step_seconds": "1"}})  # fmt: skip
                    for _ in range(4):  # ... and runs still going when the API stops answering
                        app.post(f"/threads/{app.post('/threads', json={}).json()['id']}/runs",
                                 json={"assistant_id": assistant}).raise_for_status()  # fmt: skip
                    hostile.template = app.get(f"/threads/{threads[-1]}/runs").json()["data"][0]
                wait_until(lambda: collector.accepted > 0, 20, "an export to the collector", proc)
                hostile.on = True
                held += [_open_stream(proxy_port, thread, assistant) for thread in threads[:STREAMS]]
                for _ in range(PARTIAL):
                    sock = socket.create_connection(("127.0.0.1", proxy_port), timeout=10)
                    sock.sendall(b"POST /v1/threads HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer x\r\n")
                    held.append(sock)
                time.sleep(1.5)  # polls, discovery and the streams' runs now wait on the API
                status = httpx.get(f"{base}/v1/status", timeout=5).json()
                started = time.monotonic()
                code = proc.stop(timeout=20)
                took = time.monotonic() - started
                output = proc.output()
    finally:
        for sock in held:
            sock.close()
        stop()
    last = next((line for line in output.splitlines() if "stepscope stopped in" in line), "")
    print(f"SIGTERM with everything hostile: exit {code} in {took:.2f}s (budget {SHUTDOWN_BUDGET_S:.0f}s); "
          f"{status['tracked_runs']} runs tracked, {status['exporter']['pending_spans']} spans pending, "
          f"{collector.accepted} collector connection(s); {last.split(': ', 1)[-1]!r}")  # fmt: skip
    assert code == 0, output[-3000:]
    assert took <= SHUTDOWN_BUDGET_S, f"exit took {took:.2f}s (was 9.35 s)"
    assert "Traceback" not in output, output[-5000:]
    assert status["tracked_runs"] >= 1 and status["exporter"]["pending_spans"] > 0, status
    assert "span(s) kept in the backlog for the next start" in last, output[-3000:]


# --- the disk full for a while ------------------------------------------------------------------------------------

CAPPED_S = 8.0
RUNS = 30


def test_a_disk_full_for_a_while_is_one_episode_and_loses_nothing(tmp_path: Path) -> None:
    """With no file of serve's able to grow (RLIMIT_FSIZE at 1 byte: every write to the state files fails, as on a full
    disk) for 8 s while runs keep finishing, the log holds at most four records about the store for the whole
    episode and no traceback, `/readyz` answers 503 while it lasts and 200 after, and once the runs are done every
    run, step, tool call and token is counted as the simulator says."""
    scenario = scenario_named("steady", runs_per_second=0.15, threads=8, total_runs=RUNS)
    sim = Simulator(scenario, seed=20, clock=SimClock(20))
    with SimulatorServer(sim) as server, OtlpReceiver() as receiver:
        env = {"OPENAI_BASE_URL": server.url, "OPENAI_API_KEY": KEY, "STEPSCOPE_THREADS": ",".join(sim.thread_ids),
               "STEPSCOPE_POLL_INTERVAL": "0.2", "STEPSCOPE_DISCOVERY_INTERVAL": "1",
               "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": receiver.url, "OTEL_BSP_SCHEDULE_DELAY": "100"}  # fmt: skip
        with piped_serve(tmp_path, env) as (proc, base):
            wait_until(lambda: counts_of(scrape(base), ())["steps"] > 0, 20, "the first steps counted")
            pid = proc.popen.pid
            before = resource.prlimit(pid, resource.RLIMIT_FSIZE)
            lines_before = len(proc.lines)
            steps_before = counts_of(scrape(base), ())["steps"]
            readiness = Sampler(lambda: httpx.get(f"{base}/readyz", timeout=5).status_code)
            with readiness:
                resource.prlimit(pid, resource.RLIMIT_FSIZE, (1, before[1]))
                capped_at = time.monotonic()
                time.sleep(CAPPED_S)
                steps_during = counts_of(scrape(base), ())["steps"]
            during = readiness.values
            resource.prlimit(pid, resource.RLIMIT_FSIZE, before)
            wait_until(lambda: httpx.get(f"{base}/readyz", timeout=5).status_code == 200, 10, "ready again")
            lifted_s = time.monotonic() - capped_at

            def done() -> bool:
                truth = httpx.get(f"{server.root_url}/_sim/truth", timeout=10).json()
                return len(truth["runs"]) == RUNS and all(r["status"] in TERMINAL_RUN for r in truth["runs"])

            wait_until(done, 30, "the workload to end")
            want = truth_counts(httpx.get(f"{server.root_url}/_sim/truth", timeout=10).json())
            statuses = [k.removesuffix(" runs") for k in want if k.endswith(" runs")]
            wait_until(lambda: counts_of(scrape(base), statuses) == want, 30, "every step counted")
            got = counts_of(scrape(base), statuses)
            ready_after = httpx.get(f"{base}/readyz", timeout=5).status_code
            episode = proc.lines[lines_before:]
    about_store = [line.rstrip() for line in episode if "store" in line or "state.db" in line]
    print(f"disk full for {CAPPED_S:.0f}s (ready again {lifted_s - CAPPED_S:.1f}s after the lift): "
          f"{len(about_store)} log record(s) about the store, {len(episode)} in all; /readyz during: "
          f"{dict(Counter(during))}; steps counted before/during/after: {steps_before:.0f}/{steps_during:.0f}/"
          f"{got['steps']:.0f}; {about_store}")  # fmt: skip
    assert 503 in during, f"/readyz while the disk was full: {Counter(during)}"
    assert set(during[during.index(503) :]) == {503}, f"readiness flapped while the disk was full: {during}"
    assert ready_after == 200
    assert 1 <= len(about_store) <= 4, about_store
    assert "Traceback" not in "".join(episode), "".join(episode)[-5000:]
    assert got == want
    assert want["steps"] > steps_during, "no step finished after the episode: the probe proved too little"
