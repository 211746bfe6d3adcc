"""Scale: 10,000 concurrently active runs. CPU and peak RSS of `stepscope serve`, and p99 export lag.

Setup, all on loopback on this machine:

- The simulator runs in its own process (on the other core) at speed 1, so its timestamps are wall time. Its workload
  starts exactly 10,000 runs, one per thread, within the first ~5 s, and no more: each run has 10-14 steps of
  20-60 s (so every run stays active for 200 s or more, longer than the benchmark) and no run fails, is cancelled
  or expires. About 250 steps finish per second in steady state.
- `stepscope serve` runs as a subprocess pinned to the less busy core (`taskset`), so its CPU share is its own;
  `STEPSCOPE_POLL_INTERVAL` is the interval under test (10 s by default: the target, about 1,000 requests a
  second; see docs/performance.md), `STEPSCOPE_CONCURRENCY=32`, `STEPSCOPE_MAX_TRACKED_RUNS=12000`.
  The runs are registered the way an instrumented application announces the runs it creates: `POST /v1/watch`
  with thread and run id, 10,000 of them, so discovery lists nothing. (A static list of 10,000 threads needs a
  TOML `--config` file, as the ids are ~310 KB, beyond Linux's 128 KiB limit for one environment variable; then
  discovery lists every thread's runs once, one thread at a time, which here took minutes under polling load.)
- A minimal OTLP/HTTP receiver runs in a third process (other core); it stamps each step span with its arrival time.
  Its CPU and the simulator's are reported, so a saturated peer shows up in the figures instead of hiding.

The measurement window opens once every run is tracked and one poll interval has passed. CPU = CPU seconds of the
serve process / wall seconds over the window. Peak RSS = the kernel's high-water mark (VmHWM) of the serve process
over its whole life, ramp-up included. Lag = arrival at the receiver - the step's terminal timestamp, for every
step (from the simulator's ground truth) that ended in the window early enough to be due (at least 2x interval +
1 s before its end); a due step that never arrived counts as infinite lag. Terminal timestamps are whole seconds
(truncated), which adds 0-1 s to every lag. Targets: under one core, under 300 MB, p99 lag under 2x the interval.

CPU per API request = serve's CPU seconds / its API requests in the window; from it, the cores a 5 s poll would
take (twice the requests) are projected, as a 5 s run needs more than the one core under test.

Run: `.venv/bin/python -m tests.benchmarks.bench_scale [--poll 10] [--seconds 45] [--concurrency 32]`.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import multiprocessing as mp
import os
import re
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import psutil  # type: ignore[import-untyped]  # no stubs installed; only cpu_times and pid are used

from tests.procs import Proc, free_port, spawn, stepscope_cmd, wait_until

RUNS = 10_000
POLL_S = 10.0
SECONDS = 45.0
CONCURRENCY = 32
DISCOVERY_S = 30.0
MB = 2**20
TERMINAL_KEYS = ("completed_at", "failed_at", "cancelled_at", "expired_at")
Row = tuple[str, str, str, str]


def _pin(cpu: int) -> None:
    """Pin this process to `cpu` when the machine has more than one core (on one core pinning is moot)."""
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {cpu})


def _simulator(runs: int, cpu: int, ready: Any, ctl: Any) -> None:
    """Child process: serve the scale workload; on request, answer which steps ended within a time range."""
    _pin(cpu)
    from stepscope.simulator import Simulator, SimulatorServer  # noqa: PLC0415 - child process only
    from stepscope.simulator.scenario import Scenario, SimClock  # noqa: PLC0415

    scenario = Scenario(
        name="scale", runs_per_second=runs / 5.0, threads=runs, total_runs=runs, steps=(10, 14),
        step_seconds=(20.0, 60.0), queue_seconds=(0.5, 2.0), submit_delay_s=(0.5, 2.0), expires_after_s=3600.0,
        failure_rate=0.0, cancel_rate=0.0, expire_rate=0.0, incomplete_rate=0.0,
    )  # fmt: skip
    sim = Simulator(scenario, clock=SimClock(1.0), seed=31)
    with SimulatorServer(sim) as server:
        # The workload is evaluated lazily (by requests, and by housekeeping on the server's thread); once it has
        # created `runs` runs it creates no more, so the listing below cannot race with it.
        while len(sim.engine.runs) < runs:
            time.sleep(0.25)
        time.sleep(0.5)
        ready.send((server.url, [(r.thread_id, r.id) for r in sim.engine.runs.values()]))
        while (msg := ctl.recv()) is not None:
            low, high = msg
            ended = {}
            for run in sim.truth()["runs"]:
                for step in run["steps"]:
                    end = next((step[k] for k in TERMINAL_KEYS if isinstance(step.get(k), int)), None)
                    if end is not None and low <= end <= high:
                        ended[step["id"]] = end
            active = sum(1 for r in sim.engine.runs.values() if r.terminal_at > sim.engine.now())
            ctl.send((ended, active))


def _receiver(cpu: int, ready: Any, ctl: Any) -> None:
    """Child process: a minimal OTLP/HTTP receiver; records each step span's first arrival minus its end."""
    _pin(cpu)
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2  # noqa: PLC0415 - child process only

    lags: dict[str, float] = {}
    lock = threading.Lock()
    ok = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            now = time.time()
            request = trace_service_pb2.ExportTraceServiceRequest()
            request.ParseFromString(body)
            with lock:
                for rs in request.resource_spans:
                    for ss in rs.scope_spans:
                        for span in ss.spans:
                            if span.name.startswith("run_step "):
                                step = next(a.value.string_value for a in span.attributes
                                            if a.key == "openai.run_step.id")  # fmt: skip
                                lags.setdefault(step, now - span.end_time_unix_nano / 1e9)
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(ok)))
            self.end_headers()
            self.wfile.write(ok)

        def log_message(self, format: str, *args: Any) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    ready.send(f"http://127.0.0.1:{server.server_address[1]}/v1/traces")
    ctl.recv()
    with lock:
        ctl.send(dict(lags))
    server.shutdown()


@contextlib.contextmanager
def _child(target: Any, *args: Any) -> Iterator[tuple[Any, Any, mp.process.BaseProcess]]:
    """A spawned child process with a ready pipe (child -> us) and a duplex control pipe; stopped on exit."""
    ready_recv, ready_send = mp.Pipe(duplex=False)
    ctl, child_ctl = mp.Pipe()
    proc = mp.get_context("spawn").Process(target=target, args=(*args, ready_send, child_ctl), daemon=True)
    proc.start()
    try:
        if not ready_recv.poll(120):
            raise RuntimeError(f"{target.__name__} did not start")
        yield ready_recv.recv(), ctl, proc
    finally:
        with contextlib.suppress(OSError):
            ctl.send(None)
        proc.join(30)
        if proc.is_alive():
            proc.kill()


def _cpu(p: psutil.Process) -> float:
    t = p.cpu_times()
    return float(t.user + t.system)


def _metric_sum(text: str, name: str) -> float:
    return sum(float(v) for v in re.findall(rf"^{name}(?:\{{[^}}]*\}})? (\S+)$", text, re.M))


def _vm_hwm(pid: int) -> int:
    """Peak resident set size of `pid` in bytes, as the kernel tracks it (VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def _serve(
    tmp: Path, sim_url: str, otlp_url: str, poll_s: float, concurrency: int, cpu: int | None
) -> tuple[Proc, str]:
    listen = f"127.0.0.1:{free_port()}"
    env = {
        "OPENAI_BASE_URL": sim_url, "OPENAI_API_KEY": "sk-sim", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": otlp_url,
        "STEPSCOPE_POLL_INTERVAL": f"{poll_s:g}", "STEPSCOPE_CONCURRENCY": str(concurrency),
        "STEPSCOPE_DISCOVERY_INTERVAL": f"{DISCOVERY_S:g}", "STEPSCOPE_MAX_TRACKED_RUNS": str(RUNS + RUNS // 5),
        "STEPSCOPE_LISTEN": listen, "STEPSCOPE_STATE": str(tmp / "state.db"),
        # /v1/watch's bounds (1,000 registrations, 20 a second) are for applications; this benchmark registers all
        # 10,000 runs as fast as it can.
        "STEPSCOPE_MAX_WATCHED": str(2 * RUNS), "STEPSCOPE_WATCH_RATE": "100000",
    }  # fmt: skip
    taskset = ["taskset", "-c", str(cpu)] if cpu is not None else []
    return spawn([*taskset, *stepscope_cmd("serve")], tmp / "serve.log", env), f"http://{listen}"


def _cores() -> tuple[int | None, int]:
    """(core for serve, core for everything else): serve gets the less busy core, since other work may share it."""
    if not hasattr(os, "sched_setaffinity") or (os.cpu_count() or 1) < 2:
        return None, 0
    load = psutil.cpu_percent(interval=1.0, percpu=True)
    serve_cpu = min(range(2), key=lambda c: load[c])
    return serve_cpu, 1 - serve_cpu


def _busy() -> float:
    """CPU seconds the whole machine spent busy so far."""
    t = psutil.cpu_times()
    return float(sum(t) - t.idle - getattr(t, "iowait", 0.0))


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def main(poll_s: float = POLL_S, seconds: float = SECONDS, concurrency: int = CONCURRENCY) -> list[Row]:
    """Run the scale benchmark once; rows of (figure, value, target, verdict)."""
    affinity = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    serve_cpu, other_cpu = _cores()
    _pin(other_cpu)
    try:
        return _measure(poll_s, seconds, concurrency, serve_cpu, other_cpu)
    finally:
        if affinity is not None:
            os.sched_setaffinity(0, affinity)


def _register(base: str, refs: list[tuple[str, str]], connections: int = 32) -> float:
    """Announce every run through `POST /v1/watch`, as an instrumented application does; returns seconds taken.

    Sent over `connections` keep-alive connections at once: one POST answers in ~40 ms here (the latency of the
    endpoint, not CPU: serve stays mostly idle meanwhile), so one connection would need ~7 minutes.
    """
    host, port = base.removeprefix("http://").split(":")

    def post_all(chunk: list[tuple[str, str]]) -> None:
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        try:
            for thread_id, run_id in chunk:
                body = json.dumps({"thread_id": thread_id, "run_id": run_id}).encode()
                conn.request("POST", "/v1/watch", body, {"Content-Type": "application/json"})
                response = conn.getresponse()
                response.read()
                if response.status >= 300:
                    raise RuntimeError(f"/v1/watch answered {response.status}")
        finally:
            conn.close()

    t0 = time.monotonic()
    with ThreadPoolExecutor(connections) as pool:
        list(pool.map(post_all, [refs[i::connections] for i in range(connections)]))
    return time.monotonic() - t0


def _measure(poll_s: float, seconds: float, concurrency: int, serve_cpu: int | None, other_cpu: int) -> list[Row]:
    started = time.monotonic()
    with (
        tempfile.TemporaryDirectory() as tmp,
        _child(_simulator, RUNS, other_cpu) as ((sim_url, refs), sim_ctl, sim_proc),
        _child(_receiver, other_cpu) as (otlp_url, otlp_ctl, otlp_proc),
    ):
        proc, base = _serve(Path(tmp), sim_url, otlp_url, poll_s, concurrency, serve_cpu)
        ours = [psutil.Process(proc.popen.pid), psutil.Process(sim_proc.pid), psutil.Process(otlp_proc.pid),
                psutil.Process()]  # fmt: skip
        with httpx.Client(base_url=base, timeout=30) as client:
            try:
                wait_until(lambda: client.get("/readyz").status_code == 200, 60, "serve to be ready", proc)
                registration = _register(base, refs)
                time.sleep(poll_s)
                metrics0, cpu0, busy0 = client.get("/metrics").text, [_cpu(p) for p in ours], _busy()
                w0, m0 = time.time(), time.monotonic()
                tracked_min = RUNS
                while time.monotonic() - m0 < seconds:
                    time.sleep(1.0)
                    tracked_min = min(tracked_min, int(client.get("/v1/status").json()["tracked_runs"]))
                wall = time.monotonic() - m0
                cpu1, busy1, w1 = [_cpu(p) for p in ours], _busy(), time.time()
                metrics1, peak = client.get("/metrics").text, _vm_hwm(proc.popen.pid)
            finally:
                proc.stop()
        otlp_ctl.send(True)
        lags: dict[str, float] = otlp_ctl.recv()
        sim_ctl.send((int(w0), int(w1 - 2 * poll_s - 1)))
        due, active = sim_ctl.recv()
    used = [(b - a) / wall for a, b in zip(cpu0, cpu1, strict=True)]
    foreign = max(0.0, (busy1 - busy0) / wall - sum(used))
    api = _metric_sum(metrics1, "stepscope_api_requests_total") - _metric_sum(metrics0, "stepscope_api_requests_total")
    dropped = _metric_sum(metrics1, "stepscope_dropped_total")
    got = [lags[s] for s in due if s in lags]
    missing = len(due) - len(got)
    p99 = _pct(got + [float("inf")] * missing, 0.99)
    target = 2 * poll_s
    per_request = used[0] * wall / max(api, 1.0)
    return [
        ("scale: runs active (simulator) / tracked (min)",
         f"{active:,} / {tracked_min:,} (registered via /v1/watch in {registration:.0f} s)",
         f">= {RUNS:,}", "met" if min(active, tracked_min) >= RUNS else "MISSED"),
        (f"scale: API requests/s (10,000 runs / {poll_s:g} s)", f"{api / wall:,.0f}", f"~{RUNS / poll_s:,.0f}", ""),
        ("scale: CPU of serve (cores)",
         f"{used[0]:.2f} (simulator {used[1]:.2f}, receiver {used[2]:.2f}, other processes {foreign:.2f})",
         "< 1", "met" if used[0] < 1 else "MISSED"),
        ("scale: serve CPU per API request (us)", f"{per_request * 1e6:,.0f}", "", ""),
        ("scale: projected cores for 10,000 runs at a 5 s poll", f"{per_request * RUNS / 5.0:.2f}", "", ""),
        ("scale: peak RSS of serve (MB)", f"{peak / MB:.0f}", "< 300", "met" if peak < 300 * MB else "MISSED"),
        (f"scale: p99 lag (s), poll {poll_s:g} s", f"{p99:.1f} (p50 {_pct(got, 0.5):.1f}; {len(got):,} steps, "
         f"{missing:,} never exported, dropped {dropped:g})", f"< {target:g}", "met" if p99 < target else "MISSED"),
        ("scale: wall time (s)", f"{time.monotonic() - started:.0f}", "< 180", ""),
    ]  # fmt: skip


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--poll", type=float, default=POLL_S, help="STEPSCOPE_POLL_INTERVAL in seconds")
    parser.add_argument("--seconds", type=float, default=SECONDS, help="measurement window")
    parser.add_argument("--concurrency", type=int, default=CONCURRENCY, help="STEPSCOPE_CONCURRENCY")
    ns = parser.parse_args()
    for row in main(ns.poll, ns.seconds, ns.concurrency):
        print(" | ".join(row))
