"""`stepscope demo`: the simulator and the bridge in one process, with a live terminal view.

The simulator runs a lively seeded workload on a loopback port at `--speed` simulated seconds per second; the
bridge polls it exactly as it would poll a real server and serves `/metrics`. Spans go to OTLP only when
`OTEL_EXPORTER_OTLP_ENDPOINT` is set. Timestamps come from the simulator's fast clock, so durations look real
while export lag (wall clock against simulated time) reads 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import signal
import socket
import tempfile
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass

from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from stepscope.app import Service
from stepscope.config import load
from stepscope.models import Run, RunStep
from stepscope.simulator import SimClock, Simulator, SimulatorServer, scenario_named
from stepscope.views import STATUS_STYLE

RECENT = 12
WINDOW_S = 10.0


@dataclass(frozen=True, slots=True)
class SeenStep:
    at: float
    run_id: str
    type: str
    status: str
    duration: int | None
    tokens: int


class DemoView:
    """Collects committed steps and runs (a pipeline listener) and renders the live view."""

    def __init__(self, service: Service, metrics_url: str, traces: str) -> None:
        self._service = service
        self._metrics_url = metrics_url
        self._traces = traces
        self.recent: deque[SeenStep] = deque(maxlen=RECENT)
        self._tokens: deque[tuple[float, int]] = deque()
        self.steps = 0
        self.failed_steps = 0
        self.runs: dict[str, int] = {}

    def __call__(self, run: Run, step: RunStep | None) -> None:
        now = time.monotonic()
        if step is None:
            self.runs[run.status] = self.runs.get(run.status, 0) + 1
            return
        tokens = step.usage.total_tokens if step.usage else 0
        ended = step.ended_at
        kind = step.type
        if step.tool_calls:
            kind += ": " + ", ".join(call.name or call.type for call in step.tool_calls)
        duration = None if ended is None else ended - step.created_at
        self.recent.appendleft(SeenStep(now, run.id, kind, step.status, duration, tokens))
        self._tokens.append((now, tokens))
        self.steps += 1
        self.failed_steps += step.status in ("failed", "expired")

    def tokens_per_second(self) -> float:
        cutoff = time.monotonic() - WINDOW_S
        while self._tokens and self._tokens[0][0] < cutoff:
            self._tokens.popleft()
        return sum(n for _, n in self._tokens) / WINDOW_S

    def render(self) -> Group:
        finished = sum(self.runs.values())
        failed_runs = sum(self.runs.get(s, 0) for s in ("failed", "expired", "incomplete"))
        summary = Table.grid(padding=(0, 4))
        summary.add_row(
            f"runs in flight [bold]{self._service.poller.tracked_count}[/]",
            f"runs finished [bold]{finished}[/]",
            f"run failure ratio [bold]{failed_runs / finished if finished else 0:.1%}[/]",
        )
        summary.add_row(
            f"steps exported [bold]{self.steps}[/]",
            f"tokens/s [bold]{self.tokens_per_second():.0f}[/]",
            f"step failure ratio [bold]{self.failed_steps / self.steps if self.steps else 0:.1%}[/]",
        )
        states = ", ".join(f"{k} {v}" for k, v in sorted(self._service.poller.status_counts().items())) or "none"
        table = Table(title="recent steps", title_justify="left", expand=True)
        for column in ("run", "step", "status", "duration", "tokens"):
            table.add_column(column, no_wrap=True, overflow="ellipsis")
        for s in self.recent:
            table.add_row(
                s.run_id,
                s.type,
                Text(s.status, style=STATUS_STYLE.get(s.status, "white")),
                "…" if s.duration is None else f"{s.duration}s",
                str(s.tokens),
            )
        footer = Text(f"metrics: {self._metrics_url}   traces: {self._traces}   Ctrl-C to stop", style="dim")
        return Group(Panel(summary, title="stepscope demo"), Text(f"tracked runs by status: {states}"), table, footer)


def _free_listen(listen: str) -> str:
    """The requested address, or the same host on a free port when it is taken."""
    host, _, port = listen.rpartition(":")
    with socket.socket() as sock:
        try:
            sock.bind((host, int(port)))
            return listen
        except OSError:
            sock.bind((host, 0))
            return f"{host}:{sock.getsockname()[1]}"


async def run_demo(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    simulator = Simulator(scenario_named(args.scenario), seed=args.seed, clock=SimClock(args.speed))
    server = SimulatorServer(simulator).start()
    otlp = bool(env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
    with tempfile.TemporaryDirectory(prefix="stepscope-demo-") as tmp:
        demo_env = {k: v for k, v in env.items() if k.startswith("OTEL_")}
        demo_env.update(
            OPENAI_BASE_URL=server.url,
            OPENAI_API_KEY=simulator.api_key,
            STEPSCOPE_THREADS=",".join(simulator.thread_ids),
            STEPSCOPE_LISTEN=_free_listen(args.listen),
            STEPSCOPE_POLL_INTERVAL="0.5",
            STEPSCOPE_DISCOVERY_INTERVAL="1",
            STEPSCOPE_STATE=f"{tmp}/state.db",
            OTEL_TRACES_EXPORTER="otlp" if otlp else "none",
        )
        service = Service(load(env=demo_env))
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        try:
            await service.start()
            assert service.http_server is not None
            metrics_url = f"http://{service.config.server.host}:{service.http_server.port}/metrics"
            traces = env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "OTLP") if otlp else "off (set OTEL_EXPORTER_OTLP_ENDPOINT)"
            view = DemoView(service, metrics_url, traces)
            service.pipeline.add_listener(view)
            console = Console()
            deadline = time.monotonic() + args.duration if args.duration else None
            if args.no_view:
                console.print(f"stepscope demo: simulator at {server.url}, metrics at {metrics_url}")
            live = Live(view.render(), console=console, refresh_per_second=4)
            with live if not args.no_view else contextlib.nullcontext():
                while not stop.is_set() and (deadline is None or time.monotonic() < deadline):
                    if not args.no_view:
                        live.update(view.render())
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), timeout=0.25)
            console.print(view.render() if args.no_view else "")
            if args.svg:
                recorder = Console(record=True, width=110, file=io.StringIO())
                recorder.print(view.render())
                recorder.save_svg(args.svg, title="stepscope demo")
            console.print(
                f"demo finished: {view.steps} steps and {sum(view.runs.values())} runs exported; "
                f"metrics were at {metrics_url}"
            )
        finally:
            await service.shutdown()
            server.shutdown()
    return 0
