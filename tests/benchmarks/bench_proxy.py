"""Benchmark: latency and CPU the proxy adds to an API request, on loopback, against the simulator, beside a bare
forwarder.

Run: `.venv/bin/python -m tests.benchmarks.bench_proxy [--requests 2000]`. The simulator, the proxy (with a feed
that keeps nothing) and a bare forwarder each serve from a child process; this process sends requests one at a time
over one keep-alive connection to each (raw HTTP/1.1, far cheaper than a client library), rotating direct, proxied
and forwarded, so all see the same machine load. Requests: get a run, list its steps, and create a thread and run
(a run route: its answer is read for the feed). Added latency is the difference of the medians and of the 99th
percentiles. Targets: <= 2 ms at the median, <= 5 ms at p99.

The bare forwarder is the floor for relaying: uvicorn with httptools (the proxy runs on stepscope's own server,
`stepscope.receivers.server`, on the same parser) and httpx on aiohttp's transport upstream, relaying method, path,
headers and body and streaming the answer back, nothing else (no route matching, no hop-by-hop policy, no
cancellation when the client leaves, no observation queue). CPU per request is each child's CPU time over
the run divided by the requests it relayed; the proxy and the forwarder share one core, the simulator and this
process the other. Target: the proxy's CPU per request at most 2.5x the forwarder's.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import socket
import statistics
import time
from collections.abc import Mapping
from typing import Any

import psutil  # type: ignore[import-untyped]  # no stubs installed; only cpu_times is used

from stepscope.core.records import NO_DROPS, UnitRef
from stepscope.protocols.assistants.proxied import RunObserver
from stepscope.receivers.proxy import ProxyApp, ProxyServer
from stepscope.simulator import ManualClock, Simulator, SimulatorServer, scenario_named

HEAD = b"Authorization: Bearer sk-sim\r\nOpenAI-Beta: assistants=v2\r\nHost: bench\r\n"


class _NullRuns:
    """`RunEvents` that keep nothing: the proxy reads answers as in `serve`, without polling behind it."""

    def run_created(self, run: Mapping[str, Any], traceparent: str | None) -> None:
        pass

    def stream_event(self, event: str, data: Mapping[str, Any]) -> None:
        pass

    def stream_ended(self, ref: UnitRef, complete: bool) -> None:
        pass

    def submit_sent(self, ref: UnitRef) -> None:
        pass


def _pin(cpu: int) -> None:
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {cpu})


def _simulator(ready: Any, stop: Any) -> None:
    _pin(0)
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
    _pin(1)

    async def serve() -> None:
        observer = RunObserver(_NullRuns(), drops=NO_DROPS)
        server = ProxyServer(ProxyApp(upstream, observer, drops=NO_DROPS), "127.0.0.1", 0)
        await server.start()
        ready.send(server.port)
        await asyncio.get_running_loop().run_in_executor(None, stop.recv)
        await server.shutdown()

    asyncio.run(serve())


_HOP = frozenset({b"connection", b"keep-alive", b"transfer-encoding"})
_HOP_REQUEST = _HOP | {b"host", b"content-length"}  # set again for the upstream and the body relayed


def _forwarder(upstream: str, ready: Any, stop: Any) -> None:
    """The bare forwarder (see the module docstring), under uvicorn, until `stop` says so."""
    _pin(1)
    import httpx  # noqa: PLC0415 - child process only
    import uvicorn  # noqa: PLC0415

    from stepscope.client.connect import http_client  # noqa: PLC0415

    client = http_client(timeout=httpx.Timeout(60.0), limits=httpx.Limits(max_connections=64))

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body, more = b"", True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        query = scope["query_string"]
        url = upstream.rstrip("/") + scope["raw_path"].decode() + (f"?{query.decode()}" if query else "")
        headers = [(k, v) for k, v in scope["headers"] if k not in _HOP_REQUEST]
        async with client.stream(scope["method"], url, headers=headers, content=body) as answer:
            out = [(k, v) for k, v in answer.headers.raw if k.lower() not in _HOP]
            await send({"type": "http.response.start", "status": answer.status_code, "headers": out})
            async for chunk in answer.aiter_raw():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def serve() -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        config = uvicorn.Config(app, host="127.0.0.1", port=port, http="httptools", lifespan="off",
                                log_level="warning", access_log=False)  # fmt: skip
        server = uvicorn.Server(config)
        task = asyncio.create_task(server.serve())
        while not server.started:  # noqa: ASYNC110 - uvicorn offers no event for it
            await asyncio.sleep(0.05)
        ready.send(port)
        await asyncio.get_running_loop().run_in_executor(None, stop.recv)
        server.should_exit = True
        await task
        await client.aclose()

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


Added = dict[str, tuple[float, float]]  # request kind -> added (median, p99) seconds


def measure(requests: int = 2000) -> tuple[Added, Added, float, float]:
    """(added by the proxy, added by the bare forwarder, proxy's CPU seconds per request, forwarder's)."""
    _pin(0)
    ctx = mp.get_context("spawn")
    sim_ready_r, sim_ready_s = ctx.Pipe(duplex=False)
    sim_stop_r, sim_stop_s = ctx.Pipe(duplex=False)
    px_ready_r, px_ready_s = ctx.Pipe(duplex=False)
    px_stop_r, px_stop_s = ctx.Pipe(duplex=False)
    fw_ready_r, fw_ready_s = ctx.Pipe(duplex=False)
    fw_stop_r, fw_stop_s = ctx.Pipe(duplex=False)
    sim_proc = ctx.Process(target=_simulator, args=(sim_ready_s, sim_stop_r))
    sim_proc.start()
    port, asst, thread, run = sim_ready_r.recv()
    upstream = f"http://127.0.0.1:{port}"
    px_proc = ctx.Process(target=_proxy, args=(upstream, px_ready_s, px_stop_r))
    px_proc.start()
    fw_proc = ctx.Process(target=_forwarder, args=(upstream, fw_ready_s, fw_stop_r))
    fw_proc.start()
    proxy_added: Added = {}
    bare_added: Added = {}
    relayed = 0
    try:
        proxy_port, forward_port = px_ready_r.recv(), fw_ready_r.recv()
        conns = {"direct": _Conn(port), "proxied": _Conn(proxy_port), "forwarded": _Conn(forward_port)}
        order = list(conns)
        cpu = [psutil.Process(px_proc.pid), psutil.Process(fw_proc.pid)]
        cpu0: list[float] = []
        for name, request in _requests(asst, thread, run).items():
            for _ in range(100):  # warm up every path (connection pools, code paths)
                for conn in conns.values():
                    conn.exchange(request)
            if not cpu0:
                cpu0 = [_cpu(p) for p in cpu]
            took: dict[str, list[float]] = {k: [] for k in conns}
            for i in range(requests):
                for k in order[i % 3 :] + order[: i % 3]:  # rotate who goes first
                    took[k].append(conns[k].exchange(request))
            relayed += requests
            d = took["direct"]
            for added, key in ((proxy_added, "proxied"), (bare_added, "forwarded")):
                added[name] = (statistics.median(took[key]) - statistics.median(d), _p99(took[key]) - _p99(d))
        proxy_cpu, forward_cpu = (_cpu(p) - c for p, c in zip(cpu, cpu0, strict=True))
        for conn in conns.values():
            conn.close()
    finally:
        px_stop_s.send(True)
        fw_stop_s.send(True)
        sim_stop_s.send(True)
        px_proc.join(15)
        fw_proc.join(15)
        sim_proc.join(15)
    return proxy_added, bare_added, proxy_cpu / relayed, forward_cpu / relayed


def _cpu(p: psutil.Process) -> float:
    t = p.cpu_times()
    return float(t.user + t.system)


def main(requests: int = 2000) -> list[tuple[str, str, str, str]]:
    """Rows (figure, value, target, verdict)."""
    proxy, bare, proxy_cpu, bare_cpu = measure(requests)
    rows = []
    for name, (median, p99) in proxy.items():
        ok = median <= 0.002 and p99 <= 0.005
        b_median, b_p99 = bare[name]
        rows.append((f"proxy added latency, {name}",
                     f"median {median * 1000:.2f} ms, p99 {p99 * 1000:.2f} ms (bare forwarder "
                     f"{b_median * 1000:.2f} ms, {b_p99 * 1000:.2f} ms)",
                     "<= 2 ms, <= 5 ms", "met" if ok else "MISSED"))  # fmt: skip
    ratio = proxy_cpu / bare_cpu
    rows.append(("proxy CPU per request / bare forwarder's",
                 f"{ratio:.2f} ({proxy_cpu * 1e6:,.0f} us vs {bare_cpu * 1e6:,.0f} us)",
                 "<= 2.5", "met" if ratio <= 2.5 else "MISSED"))  # fmt: skip
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=2000)
    for row in main(parser.parse_args().requests):
        print("  ".join(row))
