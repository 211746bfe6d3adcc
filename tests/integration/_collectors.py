"""Helpers for trace-backend outage tests: a collector on a reserved port, the simulator's truth, metric scrapes.

`Collector` reserves its port at construction by binding a socket without listening, so the port is refused (nothing
listens) yet no other test can take it; `listen()` later serves OTLP/HTTP on that very port. `OtlpReceiver` picks its
own port when it starts, so it cannot play a collector that comes up late on an address `serve` already uses.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from prometheus_client.parser import text_string_to_metric_families

from stepscope.simulator import SimClock, Simulator, SimulatorServer, scenario_named
from stepscope.testing import ReceivedSpan, decode_request
from tests.kit.waits import holds_within

TERMINAL_RUN = frozenset({"completed", "failed", "cancelled", "expired", "incomplete"})
DOMAIN_SAMPLES = (
    "stepscope_run_steps_total",
    "stepscope_tokens_total",
    "stepscope_runs_total",
    "stepscope_tool_calls_total",
    "stepscope_run_step_duration_seconds_count",
    "stepscope_run_duration_seconds_count",
)
"""Every domain series a committed step or run moves; none may move once all of them are counted."""


class Collector:
    """An OTLP/HTTP trace collector on 127.0.0.1 whose port exists (refusing connections) before it listens.

    After `listen()`: `refuse_status` set answers that status and keeps nothing; `hang` reads each request and never
    answers (until `close()`); otherwise spans are decoded and kept. `requests` counts every request received.
    """

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind(("127.0.0.1", 0))  # bound but not listening: a connect is refused
        self.port: int = self._sock.getsockname()[1]
        self.spans: list[ReceivedSpan] = []
        self.requests = 0
        self.refuse_status: int | None = None
        self.hang = False
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._server: ThreadingHTTPServer | None = None

    @property
    def endpoint(self) -> str:
        """The base URL for `OTEL_EXPORTER_OTLP_ENDPOINT` (the exporter appends `/v1/traces`)."""
        return f"http://127.0.0.1:{self.port}"

    def listen(self) -> None:
        """Start serving on the reserved port."""
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with collector._lock:
                    collector.requests += 1
                    hang, refuse = collector.hang, collector.refuse_status
                if hang:
                    collector._closing.wait()
                    return  # the connection closes without an answer
                if refuse is not None or self.path != "/v1/traces":
                    self._answer(refuse or 404, b"")
                    return
                spans = decode_request(body)
                with collector._lock:
                    collector.spans.extend(spans)
                self._answer(200, trace_service_pb2.ExportTraceServiceResponse().SerializeToString())

            def _answer(self, status: int, payload: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:
                return

        server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler, bind_and_activate=False)
        server.socket.close()
        server.socket = self._sock
        server.server_address = self._sock.getsockname()
        server.server_activate()
        self._server = server
        threading.Thread(target=server.serve_forever, name="test-collector", daemon=True).start()

    def received(self) -> list[ReceivedSpan]:
        with self._lock:
            return list(self.spans)

    def close(self) -> None:
        """Release hung requests, stop serving and free the port. Idempotent."""
        self._closing.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        else:
            self._sock.close()

    def __enter__(self) -> Collector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- the simulator's truth ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Expected:
    """What a correct stepscope reports for a finished workload."""

    runs: Counter[str]  # by terminal status
    steps: int
    tool_calls: int
    tokens: dict[str, int]  # by token_type

    @property
    def spans(self) -> int:
        """One span per run, step and tool call."""
        return sum(self.runs.values()) + self.steps + self.tool_calls


def expected_from(truth: dict[str, Any]) -> Expected:
    runs: Counter[str] = Counter()
    steps = calls = 0
    tokens = {"input": 0, "output": 0}
    for run in truth["runs"]:
        runs[run["status"]] += 1
        for step in run["steps"]:
            steps += 1
            calls += len(step["step_details"].get("tool_calls", []))
            if step.get("usage"):
                tokens["input"] += step["usage"]["prompt_tokens"]
                tokens["output"] += step["usage"]["completion_tokens"]
    return Expected(runs, steps, calls, tokens)


@contextlib.contextmanager
def workload(*, seed: int, total_runs: int = 8, speed: float = 30.0) -> Iterator[SimulatorServer]:
    """The simulator over real HTTP, creating `total_runs` runs on 3 threads in about two seconds of wall time."""
    scenario = scenario_named(
        "steady", runs_per_second=4.0, threads=3, total_runs=total_runs, submit_delay_s=(0.5, 2.0), failure_rate=0.15
    )
    simulator = Simulator(scenario, seed=seed, clock=SimClock(speed))
    with SimulatorServer(simulator) as server:
        yield server


def truth(server: SimulatorServer) -> dict[str, Any]:
    return httpx.get(f"{server.root_url}/_sim/truth", timeout=10).json()  # type: ignore[no-any-return]


def finished(server: SimulatorServer, total_runs: int) -> bool:
    runs = truth(server)["runs"]
    return len(runs) == total_runs and all(r["status"] in TERMINAL_RUN for r in runs)


# --- metrics ------------------------------------------------------------------------------------------------------

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(base: str) -> Samples:
    """Every sample `/metrics` exposes, keyed by (name, labels)."""
    text = httpx.get(f"{base}/metrics", timeout=5).text
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def total(samples: Samples, name: str, **labels: str) -> float:
    """Sum of `name`'s samples whose labels include `labels`."""
    return sum(v for (n, ls), v in samples.items() if n == name and all((k, val) in ls for k, val in labels.items()))


def domain(samples: Samples) -> Samples:
    """The samples of the domain counters and histogram counts."""
    return {key: v for key, v in samples.items() if key[0] in DOMAIN_SAMPLES}


def mismatches(samples: Samples, want: Expected) -> list[str]:
    """How the scraped counters differ from the truth; empty when they are exact."""
    out = []
    checks: list[tuple[str, float, float]] = [
        ("run steps", total(samples, "stepscope_run_steps_total"), want.steps),
        ("tool calls", total(samples, "stepscope_tool_calls_total"), want.tool_calls),
    ]
    checks += [
        (f"{t} tokens", total(samples, "stepscope_tokens_total", token_type=t), n) for t, n in want.tokens.items()
    ]
    statuses = set(want.runs) | {"completed", "failed", "cancelled", "expired", "incomplete"}
    checks += [(f"{s} runs", total(samples, "stepscope_runs_total", status=s), want.runs.get(s, 0)) for s in statuses]
    for what, got, expected in checks:
        if got != expected:
            out.append(f"{what}: {got:g} != {expected}")
    return out


def wait_for(predicate: Callable[[], bool], timeout: float) -> bool:
    """Whether `predicate` held within `timeout` seconds (`tests.kit.waits.holds_within`)."""
    return holds_within(predicate, timeout)


def status(base: str) -> dict[str, Any]:
    """serve's `/v1/status` document."""
    return httpx.get(f"{base}/v1/status", timeout=5).json()  # type: ignore[no-any-return]


def quiet(base: str, figures: Callable[[Samples], object]) -> Samples:
    """A scrape once two scrapes half a second apart agree on `figures` (nothing is being committed)."""
    before = scrape(base)
    while True:
        time.sleep(0.5)
        now = scrape(base)
        if figures(now) == figures(before):
            return now
        before = now
