"""The fault suite's harness: a recording in-process simulator, serve settings and truth comparisons.

Every case runs `stepscope serve` as a subprocess (tests/procs.py) against the simulator and a real
`OtlpReceiver`, then compares what the simulator says happened (`/_sim/truth`) with what arrived. The workload
keeps going while a case runs, so comparisons use a *snapshot*: every step terminal in the truth read at one
instant must have arrived (eventually), and nothing may have arrived twice with different ids.
"""

from __future__ import annotations

import re
import socket
import threading
import time
from collections import defaultdict
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any

import httpx
import uvicorn

from stepscope.simulator import Simulator
from stepscope.simulator.faults import FaultConfig
from stepscope.simulator.scenario import SimClock, scenario_named
from stepscope.simulator.server import http_protocol
from stepscope.testing import OtlpReceiver, ReceivedSpan

STEP_TERMINAL = frozenset({"completed", "failed", "cancelled", "expired"})
SPEED = 20.0
"""Simulated seconds per wall second: runs finish in about a second of wall time."""


def serve_env(api_url: str, receiver: OtlpReceiver, threads: list[str], **extra: str) -> dict[str, str]:
    """Environment for `stepscope serve` tuned for fast convergence (0.2 s polls, 100 ms span batches)."""
    return {
        "OPENAI_BASE_URL": api_url,
        "OPENAI_API_KEY": "sk-sim",
        "STEPSCOPE_THREADS": ",".join(threads),
        "STEPSCOPE_POLL_INTERVAL": "0.2",
        "STEPSCOPE_DISCOVERY_INTERVAL": "1",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": receiver.url,
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        **extra,
    }


def step_spans(spans: list[ReceivedSpan]) -> dict[str, list[ReceivedSpan]]:
    """Received step spans (`run_step …`) grouped by `openai.run_step.id`, re-exports included."""
    out: dict[str, list[ReceivedSpan]] = defaultdict(list)
    for span in list(spans):
        if span.name.startswith("run_step "):
            out[str(span.attributes["openai.run_step.id"])].append(span)
    return out


def reexports_with_other_ids(received: dict[str, list[ReceivedSpan]]) -> dict[str, set[tuple[str, str]]]:
    """Steps whose copies do not all carry the same (trace id, span id): what a backend could not deduplicate."""
    out = {}
    for step_id, copies in received.items():
        ids = {(c.trace_id, c.span_id) for c in copies}
        if len(ids) > 1:
            out[step_id] = ids
    return out


def terminal_steps(truth: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every step the simulator reports terminal, by id."""
    return {s["id"]: s for run in truth["runs"] for s in run["steps"] if s["status"] in STEP_TERMINAL}


def wait_all_exported(receiver: OtlpReceiver, expected: set[str], timeout: float) -> set[str]:
    """Wait until every step id in `expected` has a received span; returns the ids still missing."""

    def done(spans: list[ReceivedSpan]) -> bool:
        return expected <= step_spans(spans).keys()

    receiver.wait_for(done, timeout)
    return expected - step_spans(receiver.spans).keys()


def metric_sum(text: str, metric: str, label_filter: str = "") -> float:
    """Sum of every sample of `metric` in Prometheus text whose label set contains `label_filter`."""
    total = 0.0
    for match in re.finditer(rf"^{metric}(\{{[^}}]*\}})? ([0-9.e+-]+)$", text, re.M):
        if label_filter in (match.group(1) or ""):
            total += float(match.group(2))
    return total


# --- an in-process simulator whose every API request is recorded ------------------------------------------------


@dataclass(frozen=True, slots=True)
class Exchange:
    """One API request as the simulator saw it: arrival and answer instants (monotonic), status, retry-after."""

    path: str
    arrived: float
    answered: float
    status: int
    retry_after: float | None


Scope = MutableMapping[str, Any]


Rewrite = Callable[[str, bytes], bytes]
"""Test-side corruption of a 200 answer: (request path, body) -> body sent instead."""


@dataclass
class RecordingApp:
    """ASGI middleware that records every API request passing to `inner` (control paths under `/_sim` excluded).

    With `rewrite` set, successful answers pass through it, so a test can corrupt objects the simulator cannot.
    """

    inner: Any
    rewrite: Rewrite | None = None
    log: list[Exchange] = field(default_factory=list)

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"].startswith("/_sim/"):
            await self.inner(scope, receive, send)
            return
        arrived = time.monotonic()
        seen: dict[str, Any] = {}

        async def recording_send(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                seen["status"] = message["status"]
                headers = dict(message.get("headers") or [])
                raw = headers.get(b"retry-after")
                seen["retry_after"] = float(raw) if raw is not None else None
                seen["answered"] = time.monotonic()
                if self.rewrite is not None and message["status"] == 200:
                    seen["start"] = message  # held back until the body is known: content-length changes
                    return
            elif "start" in seen and message["type"] == "http.response.body":
                assert self.rewrite is not None
                body = self.rewrite(scope["path"], message.get("body", b""))
                start = seen.pop("start")
                resent = [(k, v) for k, v in start["headers"] if k != b"content-length"]
                resent.append((b"content-length", str(len(body)).encode()))
                await send({**start, "headers": resent})
                message = {**message, "body": body}
            await send(message)

        await self.inner(scope, receive, recording_send)
        if "status" in seen:
            self.log.append(Exchange(scope["path"], arrived, seen["answered"], seen["status"], seen["retry_after"]))


class RecordedSimulator:
    """A `Simulator` served under uvicorn in a thread behind a `RecordingApp`; a context manager."""

    def __init__(
        self,
        scenario: str,
        *,
        seed: int,
        faults: FaultConfig | None = None,
        speed: float = SPEED,
        rewrite: Rewrite | None = None,
    ) -> None:
        self.simulator = Simulator(scenario_named(scenario), faults, clock=SimClock(speed), seed=seed)
        self.recorder = RecordingApp(self.simulator.app, rewrite)
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        port = self._sock.getsockname()[1]
        self.root = f"http://127.0.0.1:{port}"
        self.url = self.root + self.simulator.base_path
        config = uvicorn.Config(self.recorder, http=http_protocol(), lifespan="on", access_log=False,
                                log_level="warning", timeout_graceful_shutdown=2)  # fmt: skip
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._sock]}, daemon=True)

    @property
    def threads(self) -> list[str]:
        return self.simulator.thread_ids

    def truth(self) -> dict[str, Any]:
        """The truth over HTTP, so it is read on the simulator's own event loop."""
        return httpx.get(f"{self.root}/_sim/truth", timeout=10).json()  # type: ignore[no-any-return]

    def set_faults(self, faults: dict[str, Any]) -> None:
        httpx.post(f"{self.root}/_sim/faults", json=faults, timeout=10).raise_for_status()

    def __enter__(self) -> RecordedSimulator:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            assert time.monotonic() < deadline, "simulator did not start"
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(10)
        self._sock.close()
