"""Benchmark: list-steps requests per second from the simulator under uvicorn, on one core, 10,000 live runs.

Run: `.venv/bin/python tests/benchmarks/bench_simulator.py [--runs 10000] [--seconds 5] [--connections 16]`.
The server runs in a child process pinned to CPU 0; the load generator (raw keep-alive HTTP/1.1 on asyncio, far
cheaper than an HTTP client library) runs in this process, pinned to CPU 1 when there is one. Each request lists
20 steps of a random live run. The target is >= 2,000 requests/s.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import random
import time
from typing import Any

from stepscope.simulator import ManualClock, Simulator, SimulatorServer, scenario_named


def _serve(runs: int, ready: Any, stop: Any) -> None:
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {0})
    clock = ManualClock()
    sim = Simulator(scenario_named("quiet", step_seconds=(20.0, 120.0), expires_after_s=3600.0), clock=clock)
    eng = sim.engine
    asst = eng.create_assistant({"model": "gpt-4o", "tools": [{"type": "code_interpreter"}]}, clock.now())
    paths = []
    for i in range(runs):
        thread = eng.create_thread({}, clock.now())
        run = eng.create_run(thread, asst, {"metadata": {"sim_steps": str(20 + i % 30)}}, clock.now())
        paths.append(f"/v1/threads/{thread.id}/runs/{run.id}/steps?limit=20&order=asc")
    clock.advance(300)  # a mix of finished and in-progress steps; every run is still live
    live = sum(1 for r in eng.runs.values() if r.terminal_at > clock.now())
    with SimulatorServer(sim) as server:
        ready.send((server.port, paths, live))
        stop.recv()


async def _worker(port: int, paths: list[str], deadline: float, counts: list[int], rng: random.Random) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    auth = b"Authorization: Bearer sk-sim\r\nOpenAI-Beta: assistants=v2\r\nHost: bench\r\n\r\n"
    while time.perf_counter() < deadline:
        writer.write(b"GET " + rng.choice(paths).encode() + b" HTTP/1.1\r\n" + auth)
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), head[:80]
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        await reader.readexactly(length)
        counts[0] += 1
    writer.close()


async def _load(port: int, paths: list[str], seconds: float, connections: int) -> float:
    counts = [0]
    warm = time.perf_counter() + 0.5
    await asyncio.gather(*(_worker(port, paths, warm, [0], random.Random(i)) for i in range(connections)))
    start = time.perf_counter()
    deadline = start + seconds
    await asyncio.gather(*(_worker(port, paths, deadline, counts, random.Random(i)) for i in range(connections)))
    return counts[0] / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=16)
    args = parser.parse_args()
    ready_recv, ready_send = mp.Pipe(duplex=False)
    stop_recv, stop_send = mp.Pipe(duplex=False)
    proc = mp.get_context("spawn").Process(target=_serve, args=(args.runs, ready_send, stop_recv))
    proc.start()
    try:
        port, paths, live = ready_recv.recv()
        if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
            os.sched_setaffinity(0, {1})
        rate = asyncio.run(_load(port, paths, args.seconds, args.connections))
        print(f"list_steps: {rate:,.0f} requests/s on one server core ({live:,} live runs, "
              f"{args.connections} keep-alive connections, {args.seconds:g} s, limit=20)")  # fmt: skip
    finally:
        stop_send.send(True)
        proc.join(15)


if __name__ == "__main__":
    main()
