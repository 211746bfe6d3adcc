"""Benchmark: latency the proxy adds to an API request, on loopback, against the simulator.

Run: `.venv/bin/python -m tests.benchmarks.bench_proxy [--requests 2000]`. The simulator and the proxy (with a
feed that keeps nothing) each serve from a child process; this process sends requests one at a time over one
keep-alive connection to each (raw HTTP/1.1, far cheaper than a client library), alternating direct and
proxied, so both see the same machine load. Requests: get a run, list its steps, and create a thread and run (a
run route: its answer is read for the feed). Added latency is the difference of the medians and of the 99th
percentiles. Targets: <= 2 ms at the median, <= 5 ms at p99.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import socket
import statistics
import time
from collections.abc import Mapping
from typing import Any

from stepscope.proxy import ProxyApp, ProxyServer
from stepscope.simulator import ManualClock, Simulator, SimulatorServer, scenario_named

HEAD = b"Authorization: Bearer sk-sim\r\nOpenAI-Beta: assistants=v2\r\nHost: bench\r\n"


class _NullFeed:
    def run_created(self, run: Mapping[str, Any], traceparent: str | None) -> None:
        pass

    def stream_event(self, event: str, data: Mapping[str, Any]) -> None:
        pass

    def stream_ended(self, thread_id: str | None, run_id: str | None, complete: bool) -> None:
        pass


def _simulator(ready: Any, stop: Any) -> None:
    clock = ManualClock()
    sim = Simulator(scenario_named("quiet", expires_after_s=3600.0), clock=clock)
    eng = sim.engine
    asst = eng.create_assistant({"model": "gpt-4o", "tools": [{"type": "code_interpreter"}]}, clock.now())
    thread = eng.create_thread({}, clock.now())
    run = eng.create_run(thread, asst, {"metadata": {"sim_steps": "20"}}, clock.now())
    clock.advance(30)
    with SimulatorServer(sim) as server:
        ready.send((server.port, asst["id"], thread.id, run.id))
        stop.recv()


def _proxy(upstream: str, ready: Any, stop: Any) -> None:
    async def serve() -> None:
        server = ProxyServer(ProxyApp(upstream, _NullFeed()), "127.0.0.1", 0)
        await server.start()
        ready.send(server.port)
        await asyncio.get_running_loop().run_in_executor(None, stop.recv)
        await server.shutdown()

    asyncio.run(serve())


class _Conn:
    """One keep-alive HTTP/1.1 connection: `exchange()` sends a request and reads its whole answer."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.file = self.sock.makefile("rb")

    def exchange(self, request: bytes) -> float:
        started = time.perf_counter()
        self.sock.sendall(request)
        status = self.file.readline()
        length = 0
        while (line := self.file.readline()) not in (b"\r\n", b""):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        self.file.read(length)
        elapsed = time.perf_counter() - started
        assert status.split(b" ", 2)[1] == b"200", status
        return elapsed

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def _requests(asst: str, thread: str, run: str) -> dict[str, bytes]:
    body = b'{"assistant_id":"' + asst.encode() + b'"}'
    create = (b"POST /v1/threads/runs HTTP/1.1\r\n" + HEAD + b"Content-Type: application/json\r\nContent-Length: "
              + str(len(body)).encode() + b"\r\n\r\n" + body)  # fmt: skip
    base = f"/v1/threads/{thread}/runs/{run}".encode()
    return {
        "get run": b"GET " + base + b" HTTP/1.1\r\n" + HEAD + b"\r\n",
        "list 20 steps": b"GET " + base + b"/steps?limit=20 HTTP/1.1\r\n" + HEAD + b"\r\n",
        "create thread and run (answer observed)": create,
    }


def _p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[98]


def measure(requests: int = 2000) -> dict[str, tuple[float, float]]:
    """Added (median, p99) seconds per request kind."""
    ctx = mp.get_context("spawn")
    sim_ready_r, sim_ready_s = ctx.Pipe(duplex=False)
    sim_stop_r, sim_stop_s = ctx.Pipe(duplex=False)
    px_ready_r, px_ready_s = ctx.Pipe(duplex=False)
    px_stop_r, px_stop_s = ctx.Pipe(duplex=False)
    sim_proc = ctx.Process(target=_simulator, args=(sim_ready_s, sim_stop_r))
    sim_proc.start()
    port, asst, thread, run = sim_ready_r.recv()
    px_proc = ctx.Process(target=_proxy, args=(f"http://127.0.0.1:{port}", px_ready_s, px_stop_r))
    px_proc.start()
    results: dict[str, tuple[float, float]] = {}
    try:
        proxy_port = px_ready_r.recv()
        direct, proxied = _Conn(port), _Conn(proxy_port)
        for name, request in _requests(asst, thread, run).items():
            for _ in range(100):  # warm up both paths (connection pool, code paths)
                direct.exchange(request)
                proxied.exchange(request)
            d, p = [], []
            for i in range(requests):
                first, second = (direct, proxied) if i % 2 else (proxied, direct)
                a, b = first.exchange(request), second.exchange(request)
                d.append(a if first is direct else b)
                p.append(b if first is direct else a)
            results[name] = (statistics.median(p) - statistics.median(d), _p99(p) - _p99(d))
        direct.close()
        proxied.close()
    finally:
        px_stop_s.send(True)
        sim_stop_s.send(True)
        px_proc.join(15)
        sim_proc.join(15)
    return results


def main(requests: int = 2000) -> list[tuple[str, str, str, str]]:
    """Rows (figure, value, target, verdict)."""
    rows = []
    for name, (median, p99) in measure(requests).items():
        ok = median <= 0.002 and p99 <= 0.005
        rows.append((f"proxy added latency, {name}", f"median {median * 1000:.2f} ms, p99 {p99 * 1000:.2f} ms",
                     "<= 2 ms, <= 5 ms", "met" if ok else "MISSED"))  # fmt: skip
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=2000)
    for row in main(parser.parse_args().requests):
        print("  ".join(row))
