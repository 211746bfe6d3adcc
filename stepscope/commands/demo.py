"""`stepscope demo`: the simulator and the bridge in one process, with a live terminal view.

The simulator runs a lively seeded workload on a loopback port at `--speed` simulated seconds per second; the
bridge polls it exactly as it would poll a real server and serves `/metrics`. Spans go to OTLP only when
`OTEL_EXPORTER_OTLP_ENDPOINT` is set. Timestamps come from the simulator's fast clock, so durations look real
while export lag (wall clock against simulated time) reads 0.

The view learns about steps and runs only through the pipeline's commit listener, and reads the tracked runs and
pending spans from the service, so it shows what the exporters were given, not what the simulator did.

`--protocol agents` runs the simulated Agents API and serve with `STEPSCOPE_PROTOCOL=agents`. A turn's items have
no times and are committed with their turn, so the listener hears `(Turn, None)` once per finished turn and nothing
per item: the view then lists turns (agent, status, duration, tokens) instead of steps, and draws no waterfall.
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
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from rich.console import Console
from rich.live import Live

from stepscope.config import load
from stepscope.simulator import SimClock, Simulator, SimulatorServer, scenario_named

if TYPE_CHECKING:
    from stepscope.commands.sidecar import Sidecar

from stepscope.commands.demoview import AGENTS, PLAIN_EVERY_S, DemoView, Tracking


def service_tracking(service: Sidecar) -> Callable[[], Tracking]:
    """Read the view's figures from a running service (its poller's counts and its status document)."""

    def read() -> Tracking:
        pending = service.status()["exporter"]["pending_spans"]
        poller = service.parts.poller
        return Tracking(poller.tracked_count, poller.status_counts(), int(pending))

    return read


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


def _service_env(
    args: argparse.Namespace, env: Mapping[str, str], simulator: Simulator, url: str, *, state: str, otlp: bool
) -> dict[str, str]:
    """The settings of the demo's service: the simulator's URL and key, fast polling, a throwaway store; with
    `--protocol agents` sessions are found by listing them, as in production, otherwise the threads are given."""
    demo_env = {k: v for k, v in env.items() if k.startswith("OTEL_")}
    demo_env.update(
        OPENAI_BASE_URL=url,
        OPENAI_API_KEY=simulator.api_key,
        STEPSCOPE_LISTEN=_free_listen(args.listen),
        STEPSCOPE_POLL_INTERVAL="0.5",
        STEPSCOPE_DISCOVERY_INTERVAL="1",
        STEPSCOPE_STATE=state,
        OTEL_TRACES_EXPORTER="otlp" if otlp else "none",
    )
    if getattr(args, "protocol", "assistants") == AGENTS:
        demo_env["STEPSCOPE_PROTOCOL"] = AGENTS
    else:
        demo_env["STEPSCOPE_THREADS"] = ",".join(simulator.thread_ids)
    return demo_env


async def run_demo(args: argparse.Namespace, env: Mapping[str, str], *, plain_every: float = PLAIN_EVERY_S) -> int:
    """Run the demo until `args.duration` passes or SIGINT/SIGTERM; `plain_every` paces the `--no-view` lines."""
    # Imported here so that the view (above) does not pull in the whole service with its exporters.
    from stepscope.commands.sidecar import Sidecar  # noqa: PLC0415

    protocol = getattr(args, "protocol", "assistants")
    agents = protocol == AGENTS
    simulator = Simulator(scenario_named(args.scenario), seed=args.seed, clock=SimClock(args.speed), protocol=protocol)
    server = SimulatorServer(simulator).start()
    otlp = bool(env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
    with tempfile.TemporaryDirectory(prefix="stepscope-demo-") as tmp:
        demo_env = _service_env(args, env, simulator, server.url, state=f"{tmp}/state.db", otlp=otlp)
        service = Sidecar(load(env=demo_env))
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        try:
            await service.start()
            assert service.http_server is not None
            metrics_url = f"http://{service.config.server.host}:{service.http_server.port}/metrics"
            traces = env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "OTLP") if otlp else "off (set OTEL_EXPORTER_OTLP_ENDPOINT)"
            view = DemoView(service_tracking(service), metrics_url=metrics_url, traces=traces, protocol=protocol)
            service.parts.pipeline.add_listener(view)
            console = Console()
            started = time.monotonic()
            deadline = started + args.duration if args.duration else None
            next_line = started + plain_every
            if args.no_view:
                # Plain print, not the console: a log line must not be wrapped at the terminal's width.
                print(f"stepscope demo: simulator at {server.url}, metrics at {metrics_url}", flush=True)
            live = Live(view.render(console.height), console=console, refresh_per_second=4)
            with live if not args.no_view else contextlib.nullcontext():
                while not stop.is_set() and (deadline is None or time.monotonic() < deadline):
                    now = time.monotonic()
                    if not args.no_view:
                        live.update(view.render(console.height))
                    elif now >= next_line:
                        print(view.plain_line(now - started), flush=True)
                        next_line += plain_every
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), timeout=0.25)
            console.print(view.render() if args.no_view else "")
            if args.svg:
                recorder = Console(record=True, width=80, file=io.StringIO())
                recorder.print(view.render())
                recorder.save_svg(args.svg, title="stepscope demo")
            exported = (
                f"{sum(view.runs.values())} turns"
                if agents
                else f"{view.steps} steps and {sum(view.runs.values())} runs"
            )
            print(f"demo finished: {exported} exported; metrics were at {metrics_url}", flush=True)
        finally:
            await service.shutdown()
            server.shutdown()
    return 0
