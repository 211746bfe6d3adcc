"""API efficiency and freshness: stepscope against a naive poller on the same workload, at the same time.

Run: `.venv/bin/python -m tests.benchmarks.bench_api [--modes threads,proxy,proxy-stream] [--seconds 60]`.

The workload is an application of fixed cadence: 40 threads, a run every 12 s on each (phases spread evenly, so a
run starts every 0.3 s), each run 4 steps of 2 s after 2 s queued; the simulator (speed 1, no workload of its own)
runs in a child process. The application runs for `--seconds`, then the bench waits for every run to end and its
steps to arrive (at most `DRAIN_S`), and counts requests over the whole time on both sides. Modes:

- `threads`: the application talks to the simulator; stepscope is told the 40 threads (`STEPSCOPE_THREADS`) and
  discovers the runs by listing them.
- `proxy`: the application creates its runs through stepscope's proxy (`STEPSCOPE_PROXY_LISTEN`, no thread
  configured), so no run needs discovering; stepscope polls them.
- `proxy-stream`: the same, with `stream: true` (the application reads each run's events to the end), so steps
  come from the events and stepscope only makes a final check per run.
- `back-to-back`: each of the 40 threads runs one run after another (4 steps of 2 s after 2 s queued; the next run
  is created the moment the previous one's stream ends; the threads' first runs are spread over one run's length);
  the application streams from the simulator directly, stepscope is told the threads and discovers the runs. On
  Assistants a thread has at most one active run, so a thread whose run stepscope follows needs no listing until
  that run ends, and one listing then both confirms the end and finds the next run.
- `steady`: the simulator's own random `steady` workload (40 threads, 2 runs/s, 2 to 6 steps), threads configured.

The naive poller (written here) does, every second: list the runs of every thread, then for every run not yet
seen finished, retrieve it and list all its steps; a step counts as exported when first seen terminal. stepscope
(`stepscope serve`, 1 s poll interval, its defaults otherwise) exports to a real OTLP receiver; a step counts as
exported when its span arrives. stepscope's requests are its own `stepscope_api_requests_total` (what it proxies
for the application is not counted there).

Lag is measured from the step's exact end (the simulator's truth keeps it unrounded, `sim_ended_at`), not from the
API's whole-second timestamp: against a truncated timestamp a poller that happens to tick at a fixed phase just
after each second boundary sees lags of either `phase` or `1 + phase`, so its p99 swings from run to run while its
real freshness does not change.
Targets: stepscope's requests per exported step at most 0.5x the naive poller's with configured threads and at
most 0.35x through the proxy; p99 lag no worse than the naive poller's (back to back: at most 0.5x its requests
per step, p99 lag within `BACK_TO_BACK_LAG_S` of its p99); no terminal step missed or exported twice.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import re
import statistics
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from stepscope.testing import OtlpReceiver, ReceivedSpan
from tests.procs import Sim, free_port, serve, simulator

SECONDS = 60.0
DRAIN_S = 30.0  # after the application stops: wait this long at most for its runs to end and be exported
THREADS = 40
PERIOD_S = 12.0  # a run per thread this often
STEPS, STEP_S = 4, 2.0
RUN_S = STEP_S + STEPS * STEP_S  # queued for one step's time, then the steps
MODES = ("threads", "proxy", "proxy-stream", "back-to-back")
HEADERS = {"Authorization": "Bearer sk-sim", "OpenAI-Beta": "assistants=v2"}
TERMINAL = frozenset({"completed", "failed", "cancelled", "expired"})
RUN_TERMINAL = TERMINAL | {"incomplete"}
BACK_TO_BACK_LAG_S = 0.5
TARGETS = {"threads": 0.5, "proxy": 0.35, "proxy-stream": 0.35, "back-to-back": 0.5, "steady": 0.5}


def _ended(step: dict[str, Any]) -> float:
    for key in ("completed_at", "failed_at", "cancelled_at", "expired_at"):
        if isinstance(step.get(key), int):
            return float(step[key])
    return float("nan")


class NaivePoller:
    """Every second: list each thread's runs; retrieve every unfinished run and list all its steps."""

    def __init__(self, url: str, threads: list[str]) -> None:
        self.url, self.threads = url, threads
        self.requests: collections.Counter[str] = collections.Counter()
        self.lags: dict[str, float] = {}  # against the whole-second timestamp
        self.seen_at: dict[str, float] = {}  # when the step was first seen terminal
        self.finished: set[str] = set()
        self.stop = threading.Event()

    def _get(self, client: httpx.Client, endpoint: str, path: str) -> Any:
        self.requests[endpoint] += 1
        return client.get(f"{self.url}/{path}", headers=HEADERS).json()

    def run(self) -> None:
        with httpx.Client(timeout=10) as client:
            while not self.stop.is_set():
                tick = time.monotonic()
                for thread in self.threads:
                    runs = self._get(client, "list_runs", f"threads/{thread}/runs?limit=20&order=desc")["data"]
                    for listed in runs:
                        if listed["id"] in self.finished:
                            continue
                        run = self._get(client, "get_run", f"threads/{thread}/runs/{listed['id']}")
                        steps = self._get(client, "list_steps",
                                          f"threads/{thread}/runs/{run['id']}/steps?limit=100&order=asc")  # fmt: skip
                        now = time.time()
                        for step in steps["data"]:
                            if step["status"] in TERMINAL and step["id"] not in self.lags:
                                self.lags[step["id"]] = now - _ended(step)
                                self.seen_at[step["id"]] = now
                        if run["status"] in RUN_TERMINAL:
                            self.finished.add(str(run["id"]))
                self.stop.wait(max(0.0, 1.0 - (time.monotonic() - tick)))


class Application:
    """The workload's application: creates its threads, then a run on each every `PERIOD_S`, streamed or not; or,
    `chained`, one streamed run after another on each thread, the first ones spread over `RUN_S`."""

    def __init__(self, base_url: str, *, stream: bool, chained: bool = False) -> None:
        self.base_url, self.stream, self.chained = base_url, stream or chained, chained
        self.threads: list[str] = []
        self.assistant = ""
        self.created = 0
        self.failures: collections.Counter[str] = collections.Counter()

    def setup(self) -> None:
        with httpx.Client(base_url=self.base_url, headers=HEADERS, timeout=10) as client:
            body = {"model": "gpt-4o", "name": "bench", "tools": [{"type": "code_interpreter"}]}
            self.assistant = client.post("/assistants", json=body).raise_for_status().json()["id"]
            self.threads = [client.post("/threads", json={}).raise_for_status().json()["id"] for _ in range(THREADS)]

    def run(self, seconds: float) -> None:
        asyncio.run(self._run(seconds))

    async def _run(self, seconds: float) -> None:
        limits = httpx.Limits(max_connections=THREADS + 8, max_keepalive_connections=THREADS + 8)
        async with httpx.AsyncClient(base_url=self.base_url, headers=HEADERS, timeout=60, limits=limits) as client:
            if self.chained:
                await asyncio.gather(*(self._chain(client, i, seconds) for i in range(len(self.threads))))
                return
            tasks: set[asyncio.Task[None]] = set()
            started = time.monotonic()
            gap = PERIOD_S / len(self.threads)
            n = 0
            while (due := started + n * gap) < started + seconds:
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                task = asyncio.create_task(self._create(client, self.threads[n % len(self.threads)]))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                n += 1
            await asyncio.gather(*tasks)

    async def _chain(self, client: httpx.AsyncClient, n: int, seconds: float) -> None:
        """Thread `n`'s runs back to back: the next is created as soon as the previous run's stream ends."""
        started = time.monotonic()
        await asyncio.sleep(n * RUN_S / len(self.threads))
        while time.monotonic() < started + seconds:
            await self._create(client, self.threads[n])

    async def _create(self, client: httpx.AsyncClient, thread: str) -> None:
        body: dict[str, Any] = {"assistant_id": self.assistant,
                                "metadata": {"sim_steps": str(STEPS), "sim_step_seconds": str(STEP_S)}}  # fmt: skip
        try:
            if self.stream:
                body["stream"] = True
                async with client.stream("POST", f"/threads/{thread}/runs", json=body) as response:
                    async for _ in response.aiter_raw():
                        pass
                    status = response.status_code
            else:
                status = (await client.post(f"/threads/{thread}/runs", json=body)).status_code
        except httpx.HTTPError as exc:
            self.failures[type(exc).__name__] += 1
            return
        if status == 200:
            self.created += 1
        else:
            self.failures[str(status)] += 1


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def _by_endpoint(metrics: str) -> collections.Counter[str]:
    out: collections.Counter[str] = collections.Counter()
    for labels, value in re.findall(r"^stepscope_api_requests_total\{(.*)\} (\S+)$", metrics, re.M):
        endpoint = re.search(r'endpoint="([^"]*)"', labels)
        out[endpoint.group(1) if endpoint else "?"] += int(float(value))
    return out


@dataclass
class Result:
    mode: str
    seconds: float
    ours: collections.Counter[str]  # stepscope's requests by endpoint
    naive: collections.Counter[str]
    exported: dict[str, float]  # step id -> arrival instant (wall)
    duplicates: int
    naive_seen: dict[str, float]
    naive_whole: list[float]
    ours_whole: list[float]
    truth_steps: dict[str, dict[str, Any]] = field(default_factory=dict)  # terminal steps by id
    runs: int = 0
    app: str = ""
    load: str = ""

    def rows(self) -> list[tuple[str, str, str, str]]:
        ours_n, naive_n = len(self.exported), len(self.naive_seen)
        ours_rps = sum(self.ours.values()) / max(ours_n, 1)
        naive_rps = sum(self.naive.values()) / max(naive_n, 1)
        ratio = ours_rps / naive_rps if naive_rps else float("nan")
        exact = {k: s["sim_ended_at"] for k, s in self.truth_steps.items() if s.get("sim_ended_at") is not None}
        ours_lag = [t - exact[k] for k, t in self.exported.items() if k in exact]
        naive_lag = [t - exact[k] for k, t in self.naive_seen.items() if k in exact]
        missed = len(self.truth_steps.keys() - self.exported.keys())
        naive_missed = len(self.truth_steps.keys() - self.naive_seen.keys())
        target = TARGETS[self.mode]
        slack = BACK_TO_BACK_LAG_S if self.mode == "back-to-back" else 0.0
        per_step, naive_per_step = _per_step(self.ours, ours_n), _per_step(self.naive, naive_n)
        m = f"[{self.mode}] "
        return [
            (m + "API requests per exported step: stepscope / naive",
             f"{ours_rps:.3f} / {naive_rps:.3f} = {ratio:.3f}x ({ours_n} / {naive_n} steps, {self.runs} runs)",
             f"<= {target} x naive", "met" if ratio <= target else "MISSED"),
            (m + "stepscope requests per step by endpoint", per_step, "", ""),
            (m + "naive requests per step by endpoint", naive_per_step, "", ""),
            (m + "lag p50 stepscope / naive (s)",
             f"{statistics.median(ours_lag):.2f} / {statistics.median(naive_lag):.2f}", "", ""),
            (m + "lag p99 stepscope / naive (s)", f"{_pct(ours_lag, 0.99):.2f} / {_pct(naive_lag, 0.99):.2f}",
             f"<= naive + {slack:g}" if slack else "<= naive",
             "met" if _pct(ours_lag, 0.99) <= _pct(naive_lag, 0.99) + slack else "MISSED"),
            (m + "lag p50 / p99 vs whole-second timestamps, stepscope / naive (s)",
             f"{statistics.median(self.ours_whole):.2f} / {_pct(self.ours_whole, 0.99):.2f}, "
             f"{statistics.median(self.naive_whole):.2f} / {_pct(self.naive_whole, 0.99):.2f}", "", ""),
            (m + "terminal steps missed / exported twice, stepscope (naive missed)",
             f"{missed} / {self.duplicates} of {len(self.truth_steps)} ({naive_missed})", "0 / 0",
             "met" if missed == 0 and self.duplicates == 0 else "MISSED"),
            (m + "application / machine", f"{self.app}; {self.load}", "", ""),
        ]  # fmt: skip


_BREAKDOWN = ("list_runs", "get_run", "list_steps")
"""Always shown, 0 included: thread listings, run reads, step listings."""


def _per_step(requests: collections.Counter[str], steps: int) -> str:
    """Requests per exported step by endpoint: `_BREAKDOWN` first, then any other endpoint used."""
    endpoints = [*_BREAKDOWN, *(e for e, _ in requests.most_common() if e not in _BREAKDOWN)]
    return ", ".join(f"{e} {requests[e] / max(steps, 1):.3f}" for e in endpoints)


def _load() -> str:
    one, five, _ = os.getloadavg()
    return f"load {one:.1f} / {five:.1f} on {os.cpu_count()} cores"


@dataclass
class _Arrivals:
    """Step spans as they arrive at the receiver: first arrival instant per step id, and copies past the first."""

    receiver: OtlpReceiver
    at: dict[str, float] = field(default_factory=dict)
    whole: dict[str, float] = field(default_factory=dict)  # lag against the whole-second end timestamp
    duplicates: int = 0
    _seen: int = 0

    def take(self) -> None:
        spans = self.receiver.spans[self._seen :]
        self._seen += len(spans)
        now = time.time()
        for s in spans:
            if s.name.startswith("run_step "):
                step_id = str(s.attributes["openai.run_step.id"])
                if step_id in self.at:
                    self.duplicates += 1
                    continue
                self.at[step_id] = now
                self.whole[step_id] = now - s.end_ns / 1e9

    def watch(self, seconds: float) -> None:
        """Take spans the moment they arrive, for `seconds`: an arrival is timed as promptly as the naive poller
        times what it sees, so neither side's lag carries a sampling delay the other does not."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            self.receiver.wait_for(self._more, left)
            self.take()

    def _more(self, spans: list[ReceivedSpan]) -> bool:
        return len(spans) > self._seen


def _terminal_steps(sim: Sim) -> tuple[dict[str, dict[str, Any]], bool, int]:
    """(every terminal step by id, whether every run has ended, runs)."""
    runs = sim.truth()["runs"]
    steps = {s["id"]: s for r in runs for s in r["steps"] if s["status"] in TERMINAL}
    return steps, all(r["status"] in RUN_TERMINAL for r in runs), len(runs)


def measure(mode: str, seconds: float = SECONDS, poll_interval: str | None = None) -> Result:
    """One side-by-side run of stepscope and the naive poller in `mode` (see the module docstring)."""
    with tempfile.TemporaryDirectory() as tmp, OtlpReceiver() as receiver:
        tmp_path = Path(tmp)
        args: tuple[str, ...]
        if mode == "steady":
            args = ("--scenario", "steady", "--runs-per-second", "2", "--threads", str(THREADS))
        else:
            args = ("--scenario", "quiet")
        with simulator(tmp_path, "--speed", "1", "--seed", "21", *args) as sim:
            env = {"OPENAI_BASE_URL": sim.url, "OPENAI_API_KEY": "sk-sim",
                   "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": receiver.url}  # fmt: skip
            if poll_interval is not None:
                env["STEPSCOPE_POLL_INTERVAL"] = poll_interval
            proxied = mode.startswith("proxy")
            app = Application(sim.url, stream=mode == "proxy-stream", chained=mode == "back-to-back")
            if mode == "steady":
                threads = list(sim.truth()["threads"])
                env["STEPSCOPE_THREADS"] = ",".join(threads)
            elif proxied:
                port = free_port()
                env["STEPSCOPE_PROXY_LISTEN"] = f"127.0.0.1:{port}"
                app.base_url = f"http://127.0.0.1:{port}/v1"
            else:
                app.setup()
                env["STEPSCOPE_THREADS"] = ",".join(app.threads)
            with serve(tmp_path, env) as (proc, base):
                if proxied:
                    app.setup()
                if mode != "steady":
                    threads = app.threads
                naive = NaivePoller(sim.url, threads)
                arrivals = _Arrivals(receiver)
                workers = [threading.Thread(target=naive.run, daemon=True)]
                if mode != "steady":
                    workers.append(threading.Thread(target=app.run, args=(seconds,), daemon=True))
                load_before = _load()
                for worker in workers:
                    worker.start()
                arrivals.watch(seconds)
                if mode != "steady":
                    _drain(sim, workers[-1], arrivals)
                arrivals.watch(1.0)  # a late duplicate or request would show by now
                if proc.popen.poll() is not None:
                    tail = "\n".join(proc.output().splitlines()[-30:])
                    raise RuntimeError(f"stepscope serve exited ({proc.popen.returncode}) during the run:\n{tail}")
                metrics = httpx.get(f"{base}/metrics", timeout=10).text
                naive.stop.set()
                workers[0].join(10)
                steps, _, runs = _terminal_steps(sim)
                load = f"{load_before} before, {_load()} after"
                proc.stop()
    if mode == "steady":  # the workload never stops: judge only steps that ended before the measuring stopped
        steps = {k: v for k, v in steps.items() if k in arrivals.at or k in naive.seen_at}
    app_note = (f"{app.created} runs created ({dict(app.failures) or 'no failures'})"
                if mode != "steady" else "simulator workload")  # fmt: skip
    return Result(mode, seconds, _by_endpoint(metrics), naive.requests, arrivals.at, arrivals.duplicates,
                  naive.seen_at, list(naive.lags.values()), list(arrivals.whole.values()), steps, runs,
                  app_note, load)  # fmt: skip


def _drain(sim: Sim, application: threading.Thread, arrivals: _Arrivals) -> None:
    """Wait for the application to stop, its runs to end and their terminal steps to arrive, `DRAIN_S` at most."""
    deadline = time.monotonic() + DRAIN_S
    while time.monotonic() < deadline:
        application.join(0.05)
        arrivals.take()
        if application.is_alive():
            continue
        steps, ended, _ = _terminal_steps(sim)
        if ended and steps.keys() <= arrivals.at.keys():
            return
        arrivals.watch(0.5)


def main(
    seconds: float = SECONDS, poll_interval: str | None = None, modes: tuple[str, ...] = MODES
) -> list[tuple[str, str, str, str]]:
    """Every mode in turn; the rows of each (figure, value, target, verdict)."""
    rows: list[tuple[str, str, str, str]] = []
    for mode in modes:
        print(f"bench_api: {mode} ({seconds:g} s + drain) ...", flush=True)
        rows += measure(mode, seconds, poll_interval).rows()
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, of {(*MODES, 'steady')}")
    parser.add_argument("--seconds", type=float, default=SECONDS, help="how long the application runs")
    parser.add_argument("--poll-interval", default=None, help="STEPSCOPE_POLL_INTERVAL (default: its own, 1 s)")
    options = parser.parse_args()
    for row in main(options.seconds, options.poll_interval, tuple(options.modes.split(","))):
        print(" | ".join(row))
