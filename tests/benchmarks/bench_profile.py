"""CPU per API request: `stepscope serve` against a bare client on the same simulator in the same run, and where
serve's CPU goes (a profile of its event loop).

Workload: the simulator's `steady` scenario with 200 threads and a run every 12 s on each (16.7 runs/s),
its own process on one core; `stepscope serve` with those 200 threads configured, a 1 s poll and spans exported to a
real OTLP receiver, pinned (`taskset`) to the other core, so that core's CPU is serve's. This process (receiver,
scrapes) stays on the simulator's core.

1. serve: after a warm-up, its CPU time (every thread) over the window divided by the API requests it made in the
   window (`stepscope_api_requests_total`), plus the share of its event-loop thread.
2. bare client: a child process on serve's core, against the same simulator, running at the same concurrency and
   poll interval the GETs serve makes and parsing every body with `json.loads`, nothing else: list a thread's runs
   (limit 20, newest first) every 2 s while it has no live run; for a live run, list its steps after a cursor moved
   over the finished prefix (limit 100, oldest first), and read the run when no step is open. httpx on the aiohttp
   transport by default (`--bare-transport httpx` for httpx's own): the floor this compares against.
3. `--profile`: serve again, under cProfile, for `--profile-seconds`; prints the functions with the most own time
   and the own time per library. cProfile sees the event loop's thread only (the delivery thread's share is in 1)
   and slows what it profiles about 2x: read it for proportions, not for totals.

Target: serve's CPU per request at most 2.5x the bare client's.

Run: `.venv/bin/python -m tests.benchmarks.bench_profile [--seconds 30] [--profile] [--env STEPSCOPE_X=Y ...]`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pstats
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import psutil  # type: ignore[import-untyped]  # no stubs installed; only cpu_times, threads and pids are used

from stepscope.testing import OtlpReceiver
from tests.procs import Proc, free_port, spawn, stepscope_cmd, wait_until

THREADS = 200
RUNS_PER_SECOND = THREADS / 12.0
POLL_S = 1.0
CONCURRENCY = 16  # serve's default STEPSCOPE_CONCURRENCY
DISCOVERY_S = 2.0  # serve's default STEPSCOPE_DISCOVERY_INTERVAL
WARMUP_S = 10.0
HEADERS = {"Authorization": "Bearer sk-sim", "OpenAI-Beta": "assistants=v2"}
RUN_TERMINAL = frozenset({"completed", "failed", "cancelled", "expired", "incomplete"})
STEP_TERMINAL = frozenset({"completed", "failed", "cancelled", "expired"})
_URL = re.compile(r"url=(http://127\.0\.0\.1:(\d+)\S*)")
Row = tuple[str, str, str, str]


def cores() -> tuple[list[str], list[str]]:
    """taskset prefixes (serve's core, everything else's); both empty on one core."""
    if not hasattr(os, "sched_setaffinity") or (os.cpu_count() or 1) < 2:
        return [], []
    load = psutil.cpu_percent(interval=0.5, percpu=True)
    serve = min(range(2), key=lambda c: load[c])
    os.sched_setaffinity(0, {1 - serve})
    return ["taskset", "-c", str(serve)], ["taskset", "-c", str(1 - serve)]


def _cpu(p: psutil.Process) -> float:
    t = p.cpu_times()
    return float(t.user + t.system)


def _main_thread_cpu(p: psutil.Process) -> float:
    for t in p.threads():
        if t.id == p.pid:
            return float(t.user_time + t.system_time)
    return 0.0


def _requests(metrics: str) -> Counter[str]:
    out: Counter[str] = Counter()
    for labels, value in re.findall(r"^stepscope_api_requests_total\{(.*)\} (\S+)$", metrics, re.M):
        endpoint = re.search(r'endpoint="([^"]*)"', labels)
        out[endpoint.group(1) if endpoint else "?"] += int(float(value))
    return out


def _simulator(tmp: Path, pin: list[str]) -> tuple[Proc, str, str]:
    args = ["--scenario", "steady", "--seed", "21", "--threads", str(THREADS), "--runs-per-second",
            f"{RUNS_PER_SECOND:.4f}", "--port", "0"]  # fmt: skip
    proc = spawn([*pin, *stepscope_cmd("simulate", *args)], tmp / "simulator.log")
    wait_until(lambda: _URL.search(proc.output()) is not None, 20, "the simulator to listen", proc)
    found = _URL.search(proc.output())
    assert found is not None
    return proc, found.group(1), f"http://127.0.0.1:{found.group(2)}"


def _serve(tmp: Path, name: str, pin: list[str], env: dict[str, str], profile: Path | None = None) -> tuple[Proc, str]:
    listen = f"127.0.0.1:{free_port()}"
    full = {**env, "STEPSCOPE_LISTEN": listen, "STEPSCOPE_STATE": str(tmp / f"{name}.db")}
    cmd = stepscope_cmd("serve")
    if profile is not None:
        cmd = [sys.executable, "-m", "cProfile", "-o", str(profile), "-m", "stepscope", "serve"]
    proc = spawn([*pin, *cmd], tmp / f"{name}.log", full)
    base = f"http://{listen}"
    wait_until(lambda: httpx.get(f"{base}/readyz", timeout=2).status_code == 200, 60, "serve to be ready", proc)
    return proc, base


def measure_serve(tmp: Path, pin: list[str], env: dict[str, str], seconds: float) -> dict[str, Any]:
    proc, base = _serve(tmp, "serve", pin, env)
    try:
        p = psutil.Process(proc.popen.pid)
        time.sleep(WARMUP_S)
        m0, c0, l0, t0 = _requests(httpx.get(f"{base}/metrics").text), _cpu(p), _main_thread_cpu(p), time.monotonic()
        time.sleep(seconds)
        m1, c1, l1, t1 = _requests(httpx.get(f"{base}/metrics").text), _cpu(p), _main_thread_cpu(p), time.monotonic()
        rss = p.memory_info().rss
    finally:
        proc.stop()
    by_endpoint = m1 - m0
    return {"cpu": c1 - c0, "loop_cpu": l1 - l0, "wall": t1 - t0, "requests": sum(by_endpoint.values()),
            "by_endpoint": dict(by_endpoint), "rss": rss}  # fmt: skip


def measure_bare(pin: list[str], url: str, threads: list[str], seconds: float, transport: str) -> dict[str, Any]:
    cmd = [*pin, sys.executable, "-m", "tests.benchmarks.bench_profile", "--bare-client", url, "--seconds",
           str(seconds), "--bare-transport", transport]  # fmt: skip
    done = subprocess.run(cmd, input=json.dumps(threads), capture_output=True, text=True, check=True, timeout=300)
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def profile_serve(tmp: Path, pin: list[str], env: dict[str, str], seconds: float) -> str:
    out = tmp / "serve.prof"
    proc, _ = _serve(tmp, "profiled", pin, env, profile=out)
    time.sleep(seconds)
    proc.stop()
    stats = pstats.Stats(str(out))
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]  # (file, line, name) -> (cc, nc, tt, ct, callers)
    total = sum(v[2] for v in raw.values()) or 1.0
    by_lib: Counter[str] = Counter()
    for (file, _, _), v in raw.items():
        by_lib[_library(file)] += v[2]
    lines = [f"own time by library ({total:.1f} s of the event loop's thread under cProfile):"]
    lines += [f"  {share / total:6.1%}  {lib}" for lib, share in by_lib.most_common(14)]
    lines.append("functions with the most own time:")
    top = sorted(raw.items(), key=lambda kv: kv[1][2], reverse=True)[:25]
    for (file, line, name), v in top:
        lines.append(f"  {v[2] / total:6.1%}  {v[1]:>8} calls  {_library(file)}: {name} ({Path(file).name}:{line})")
    lines.append("stepscope's functions by time spent in them and what they call:")
    ours = [kv for kv in raw.items() if _library(kv[0][0]).startswith("stepscope")]
    for (file, line, name), v in sorted(ours, key=lambda kv: kv[1][3], reverse=True)[:20]:
        lines.append(f"  {v[3] / total:6.1%}  {v[1]:>8} calls  {_library(file)}: {name} ({Path(file).name}:{line})")
    return "\n".join(lines)


def _library(file: str) -> str:
    """The library a profiled function belongs to: `stepscope.client`, `httpx`, `asyncio`, `~builtins`..."""
    if file == "~" or not file:
        return "~builtins"
    parts = Path(file).parts
    if "site-packages" in parts:
        rest = parts[parts.index("site-packages") + 1 :]
        return rest[0].removesuffix(".py") if rest else file
    if "stepscope" in parts:
        rest = parts[len(parts) - 1 - parts[::-1].index("stepscope") :]
        return ".".join(rest[:2]).removesuffix(".py") if len(rest) > 2 else "stepscope"
    stem = Path(file).parent.name if Path(file).parent.name not in ("lib", "python3.11") else Path(file).stem
    return stem or file


# --- the bare client (child process) --------------------------------------------------------------------------


class BarePoller:
    """The GETs serve makes, at the same concurrency and poll interval, each body parsed and nothing else done."""

    def __init__(self, client: httpx.AsyncClient, url: str, threads: list[str]) -> None:
        self.client, self.url, self.threads = client, url, threads
        self.sem = asyncio.Semaphore(CONCURRENCY)
        self.requests: Counter[str] = Counter()
        self.finished: set[str] = set()

    async def get(self, endpoint: str, path: str, params: dict[str, str | int]) -> Any:
        async with self.sem:
            response = await self.client.get(f"{self.url}/{path}", params=params, headers=HEADERS)
            body = json.loads(await response.aread())
        self.requests[endpoint] += 1
        return body

    async def thread(self, thread_id: str) -> None:
        while True:
            listed = await self.get("list_runs", f"threads/{thread_id}/runs", {"limit": 20, "order": "desc"})
            live = [r for r in listed["data"] if r["status"] not in RUN_TERMINAL and r["id"] not in self.finished]
            if not live:
                await asyncio.sleep(DISCOVERY_S)
                continue
            await self.run(thread_id, live[0]["id"])

    async def run(self, thread_id: str, run_id: str) -> None:
        cursor: str | None = None
        run_path = f"threads/{thread_id}/runs/{run_id}"
        status, open_steps = "queued", 0
        while True:
            if open_steps == 0 or status != "in_progress":
                status = (await self.get("get_run", run_path, {}))["status"]
            params: dict[str, str | int] = {"limit": 100, "order": "asc"}
            if cursor is not None:
                params["after"] = cursor
            steps = (await self.get("list_steps", f"{run_path}/steps", params))["data"]
            open_steps = 0
            for step in steps:
                if step["status"] in STEP_TERMINAL and open_steps == 0:
                    cursor = step["id"]
                elif step["status"] not in STEP_TERMINAL:
                    open_steps += 1
            if status in RUN_TERMINAL and open_steps == 0:
                self.finished.add(run_id)
                return
            await asyncio.sleep(POLL_S)


def _bare_client(transport: str) -> httpx.AsyncClient:
    timeout = httpx.Timeout(30.0, connect=5.0)
    limits = httpx.Limits(max_connections=CONCURRENCY + 4)
    if transport == "aiohttp":
        from httpx_aiohttp import HttpxAiohttpClient  # noqa: PLC0415 - only this child needs it

        return HttpxAiohttpClient(timeout=timeout, limits=limits)
    return httpx.AsyncClient(timeout=timeout, limits=limits)


async def bare_main(url: str, threads: list[str], seconds: float, transport: str) -> dict[str, Any]:
    async with _bare_client(transport) as client:
        poller = BarePoller(client, url, threads)
        tasks = [asyncio.create_task(poller.thread(t)) for t in threads]
        await asyncio.sleep(WARMUP_S)
        r0, c0, t0 = sum(poller.requests.values()), time.process_time(), time.monotonic()
        before = Counter(poller.requests)
        await asyncio.sleep(seconds)
        r1, c1, t1 = sum(poller.requests.values()), time.process_time(), time.monotonic()
        by_endpoint = poller.requests - before
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return {"cpu": c1 - c0, "wall": t1 - t0, "requests": r1 - r0, "by_endpoint": dict(by_endpoint)}


# --- the report -----------------------------------------------------------------------------------------------


def main(
    seconds: float = 30.0,
    bare_seconds: float = 20.0,
    profile: float | None = None,
    env: dict[str, str] | None = None,
    bare_transport: str = "aiohttp",
) -> list[Row]:
    """Rows (figure, value, target, verdict); prints the profile when `profile` (seconds) is set."""
    affinity = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    try:
        return _main(seconds, bare_seconds, profile, env, bare_transport)
    finally:
        if affinity is not None:
            os.sched_setaffinity(0, affinity)


def _main(
    seconds: float, bare_seconds: float, profile: float | None, env: dict[str, str] | None, bare_transport: str
) -> list[Row]:
    serve_pin, other_pin = cores()
    with tempfile.TemporaryDirectory() as tmp_dir, OtlpReceiver() as receiver:
        tmp = Path(tmp_dir)
        sim, url, root = _simulator(tmp, other_pin)
        try:
            threads = httpx.get(f"{root}/_sim/truth", timeout=10).json()["threads"]
            serve_env = {"OPENAI_BASE_URL": url, "OPENAI_API_KEY": "sk-sim", "STEPSCOPE_THREADS": ",".join(threads),
                         "STEPSCOPE_POLL_INTERVAL": f"{POLL_S:g}", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": receiver.url,
                         **(env or {})}  # fmt: skip
            ours = measure_serve(tmp, serve_pin, serve_env, seconds)
            bare = measure_bare(serve_pin, url, threads, bare_seconds, bare_transport)
            report = profile_serve(tmp, serve_pin, serve_env, profile) if profile else None
        finally:
            sim.stop()
    ours_us = ours["cpu"] / max(ours["requests"], 1) * 1e6
    bare_us = bare["cpu"] / max(bare["requests"], 1) * 1e6
    ratio = ours_us / bare_us
    if report:
        print(report)
    mix = ", ".join(f"{k} {v / ours['wall']:.0f}/s" for k, v in sorted(ours["by_endpoint"].items()))
    bare_mix = ", ".join(f"{k} {v / bare['wall']:.0f}/s" for k, v in sorted(bare["by_endpoint"].items()))
    return [
        ("profile: serve CPU per API request (us)",
         f"{ours_us:,.0f} ({ours['requests'] / ours['wall']:,.0f} requests/s: {mix}; {ours['cpu'] / ours['wall']:.0%} "
         f"of a core, event loop thread {ours['loop_cpu'] / max(ours['cpu'], 1e-9):.0%}; RSS {ours['rss'] >> 20} MB)",
         "", ""),
        (f"profile: bare client CPU per request (us), httpx on {bare_transport}",
         f"{bare_us:,.0f} ({bare['requests'] / bare['wall']:,.0f} requests/s: {bare_mix})", "", ""),
        ("profile: serve / bare CPU per request", f"{ratio:.2f}", "<= 2.5", "met" if ratio <= 2.5 else "MISSED"),
    ]  # fmt: skip


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=30.0, help="serve's measurement window")
    parser.add_argument("--bare-seconds", type=float, default=20.0, help="the bare client's measurement window")
    parser.add_argument("--profile", action="store_true", help="also profile serve with cProfile")
    parser.add_argument("--profile-seconds", type=float, default=20.0)
    parser.add_argument("--env", action="append", default=[], help="KEY=VALUE for serve (repeatable)")
    parser.add_argument("--bare-transport", choices=("aiohttp", "httpx"), default="aiohttp")
    parser.add_argument("--bare-client", metavar="URL", help=argparse.SUPPRESS)  # the child process's mode
    ns = parser.parse_args()
    if ns.bare_client:
        result = asyncio.run(bare_main(ns.bare_client, json.loads(sys.stdin.read()), ns.seconds, ns.bare_transport))
        print(json.dumps(result))
        sys.exit(0)
    extra = dict(item.split("=", 1) for item in ns.env)
    for row in main(ns.seconds, ns.bare_seconds, ns.profile_seconds if ns.profile else None, extra, ns.bare_transport):
        print(" | ".join(row))
