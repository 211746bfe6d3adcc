"""Helpers of the hostile-neighbour suite (`test_hostile_neighbours*.py`): an upstream in front of a simulator that
records every request and lets a test answer some itself, a TCP server that accepts and never answers, a sampler of
an endpoint, `serve` with its output on a pipe, and figures read from `/metrics` and the simulator's truth.

`Upstream` is ASGI middleware served with `tests.kit.proxy.serve_in_thread`: every HTTP request (control paths under
`/_sim` excluded) is recorded as a `Seen` with the key it carried, so a test tells stepscope's own requests from the
application's; a request `intercept(scope)` returns a handler for is answered by that handler instead of the inner
app. `Hanger` plays a neighbour that holds connections open: it accepts, reads and never writes a byte. `piped_serve`
runs `stepscope serve` with its output on a pipe rather than a file, so a limit on the size of the files the process
writes (`RLIMIT_FSIZE`) reaches its state files only, never its log.
"""

from __future__ import annotations

import contextlib
import os
import re
import selectors
import socket
import statistics
import subprocess
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from stepscope.receivers.asgi import Receive, Scope, Send
from tests.kit.processes import stop_process
from tests.procs import free_port, stepscope_cmd

Handler = Callable[[Scope, Receive, Send], Awaitable[None]]
Intercept = Callable[[Scope], Handler | None]


@dataclass(frozen=True, slots=True)
class Seen:
    """One request the upstream received: method, path, the bearer key it carried, and when (monotonic)."""

    method: str
    path: str
    key: str
    at: float


@dataclass
class Upstream:
    """Records every request to `inner`; answers with `intercept(scope)`'s handler where it returns one."""

    inner: Any
    intercept: Intercept | None = None
    seen: list[Seen] = field(default_factory=list)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith("/_sim/"):
            await self.inner(scope, receive, send)
            return
        auth = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
        self.seen.append(Seen(scope["method"], scope["path"], auth.removeprefix("Bearer "), time.monotonic()))
        handler = self.intercept(scope) if self.intercept is not None else None
        await (handler or self.inner)(scope, receive, send)

    def requests(self, key: str, since: float = 0.0) -> list[Seen]:
        """The requests made with `key` from monotonic time `since` on."""
        return [s for s in list(self.seen) if s.key == key and s.at >= since]


async def answer_json(send: Send, body: bytes, status: int = 200) -> None:
    """Send a whole JSON answer."""
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def read_request_body(receive: Receive) -> bytes:
    """Every byte of an ASGI request's body."""
    body = b""
    while True:
        message = await receive()
        body += bytes(message.get("body", b""))
        if not message.get("more_body"):
            return body


class Hanger:
    """A TCP server on 127.0.0.1 that accepts every connection and reads from it, never answering; a context
    manager. `accepted` counts connections; closing the server closes them all."""

    def __init__(self) -> None:
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(256)
        self._sock.setblocking(False)
        self.port: int = self._sock.getsockname()[1]
        self.accepted = 0
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._sock, selectors.EVENT_READ)
        self._conns: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="test-hanger", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _serve(self) -> None:
        while not self._stop.is_set():
            for key, _ in self._selector.select(0.1):
                if key.fileobj is self._sock:
                    with contextlib.suppress(BlockingIOError):
                        conn, _ = self._sock.accept()
                        conn.setblocking(False)
                        self._conns.append(conn)
                        self._selector.register(conn, selectors.EVENT_READ)
                        self.accepted += 1
                    continue
                held = key.fileobj
                assert isinstance(held, socket.socket)
                try:
                    data = held.recv(65536)
                except OSError:
                    data = b""
                if not data:  # the client gave up: forget the connection
                    self._selector.unregister(held)
                    held.close()

    def __enter__(self) -> Hanger:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        for conn in self._conns:
            conn.close()
        self._selector.close()
        self._sock.close()


class Sampler:
    """Calls `read()` every 50 ms on a thread while the context is open; `values` holds what it returned (failed
    reads are skipped)."""

    def __init__(self, read: Callable[[], int]) -> None:
        self._read = read
        self.values: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="test-sampler", daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.05):
            with contextlib.suppress(httpx.HTTPError):
                self.values.append(self._read())

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        assert self.values, "nothing was sampled"


# --- serve with its output on a pipe ------------------------------------------------------------------------------


@dataclass
class PipedProc:
    """A process whose stdout and stderr are read from a pipe into `lines` by a thread."""

    popen: subprocess.Popen[str]
    lines: list[str] = field(default_factory=list)

    def output(self) -> str:
        return "".join(self.lines)

    def stop(self, timeout: float = 15.0) -> int:
        return stop_process(self.popen, timeout=timeout)


@contextlib.contextmanager
def piped_serve(tmp: Path, env: Mapping[str, str]) -> Iterator[tuple[PipedProc, str]]:
    """`stepscope serve` with `env` and its output on a pipe; yields the process and its base URL once /readyz
    answers 200."""
    port = free_port()
    full = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "STEPSCOPE_", "OPENAI_"))}
    full.update({"STEPSCOPE_LISTEN": f"127.0.0.1:{port}", "STEPSCOPE_STATE": str(tmp / "state.db"),
                 "PYTHONUNBUFFERED": "1", **env})  # fmt: skip
    popen = subprocess.Popen(stepscope_cmd("serve"), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=full,
                             text=True)  # fmt: skip
    proc = PipedProc(popen)

    def pump() -> None:
        assert popen.stdout is not None
        for line in popen.stdout:
            proc.lines.append(line)

    reader = threading.Thread(target=pump, name="test-serve-output", daemon=True)
    reader.start()
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while not _answers(f"{base}/readyz"):
            assert popen.poll() is None, f"serve exited ({popen.returncode}):\n{proc.output()}"
            assert time.monotonic() < deadline, f"serve never became ready:\n{proc.output()}"
            time.sleep(0.1)
        yield proc, base
    finally:
        proc.stop()
        reader.join(5)
        assert popen.stdout is not None
        popen.stdout.close()


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


# --- figures ------------------------------------------------------------------------------------------------------


def counted(text: str, metric: str, **labels: str) -> float:
    """Sum of the samples of `metric` in Prometheus text whose labels include `labels`, in any order."""
    total = 0.0
    for match in re.finditer(rf"^{metric}(?:\{{([^}}]*)\}})? (\S+)$", text, re.M):
        found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(1) or ""))
        if all(found.get(k) == v for k, v in labels.items()):
            total += float(match.group(2))
    return total


def scrape(base: str) -> str:
    return httpx.get(f"{base}/metrics", timeout=5).text


def quantiles(values: list[float]) -> tuple[float, float]:
    """The median and the 99th percentile (the largest value for fewer than 100)."""
    ordered = sorted(values)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    """`fn()` and the seconds it took."""
    started = time.monotonic()
    result = fn()
    return result, time.monotonic() - started


def fixed(body: bytes) -> Handler:
    """A handler that answers `body` as JSON, whatever the request."""

    async def answer(scope: Scope, receive: Receive, send: Send) -> None:
        await answer_json(send, body)

    return answer


def hang(scope: Scope) -> Handler:
    """A handler that reads the request and never answers: it returns only once the client has gone."""

    async def answer(scope: Scope, receive: Receive, send: Send) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    return answer


TERMINAL_RUN = frozenset({"completed", "failed", "cancelled", "expired", "incomplete"})


def truth_counts(truth: Mapping[str, Any]) -> dict[str, float]:
    """What a correct stepscope counts for the simulator's runs, all terminal: runs by status, steps, tool calls and
    tokens, keyed as `counts_of` keys them."""
    out: dict[str, float] = {"steps": 0, "tool_calls": 0, "input tokens": 0, "output tokens": 0}
    for run in truth["runs"]:
        out[f"{run['status']} runs"] = out.get(f"{run['status']} runs", 0) + 1
        for step in run["steps"]:
            out["steps"] += 1
            out["tool_calls"] += len(step["step_details"].get("tool_calls", []))
            if step.get("usage"):
                out["input tokens"] += step["usage"]["prompt_tokens"]
                out["output tokens"] += step["usage"]["completion_tokens"]
    return out


def counts_of(metrics: str, statuses: Iterable[str]) -> dict[str, float]:
    """The figures of `truth_counts` as `/metrics` says them."""
    out = {
        "steps": counted(metrics, "stepscope_run_steps_total"),
        "tool_calls": counted(metrics, "stepscope_tool_calls_total"),
        "input tokens": counted(metrics, "stepscope_tokens_total", token_type="input"),
        "output tokens": counted(metrics, "stepscope_tokens_total", token_type="output"),
    }
    for status in statuses:
        out[f"{status} runs"] = counted(metrics, "stepscope_runs_total", status=status)
    return out
