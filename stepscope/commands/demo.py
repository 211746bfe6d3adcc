"""`stepscope demo`: the simulator and the bridge in one process, with a live terminal view.

The simulator runs a lively seeded workload on a loopback port at `--speed` simulated seconds per second; the
bridge polls it exactly as it would poll a real server and serves `/metrics`. Spans go to OTLP only when
`OTEL_EXPORTER_OTLP_ENDPOINT` is set. Timestamps come from the simulator's fast clock, so durations look real
while export lag (wall clock against simulated time) reads 0.

The view learns about records and units only through the pipeline's commit listener, and reads the tracked units
and pending spans from the service, so it shows what the exporters were given, not what the simulator did. It
knows no protocol: it calls units and records what the service's protocol calls them (`factory.nouns`).

`--protocol` chooses the simulated API and the service's `STEPSCOPE_PROTOCOL` together: any registered protocol
the simulator serves (`protocol_choices()`). That choice, and the settings the service needs to find the
simulator's units (`FINDING`), are the only things here that depend on the protocol.
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

from stepscope import protocols
from stepscope.commands.demoview import PLAIN_EVERY_S, DemoView, Tracking
from stepscope.config import load
from stepscope.errors import ConfigError
from stepscope.simulator import SimClock, Simulator, SimulatorServer, scenario_named
from stepscope.simulator.core import PROTOCOLS as SIMULATED

if TYPE_CHECKING:
    from stepscope.commands.sidecar import Sidecar

FINDING: Mapping[str, Callable[[Simulator], dict[str, str]]] = {
    # The simulator's workload threads, known before any run exists; other protocols list their containers.
    "assistants": lambda simulator: {"STEPSCOPE_THREADS": ",".join(simulator.thread_ids)},
}
"""Settings, beyond `STEPSCOPE_PROTOCOL`, the service needs to find the simulator's units, per protocol; a protocol
without an entry finds them as in production (Agents API sessions by listing them)."""


def protocol_choices() -> tuple[str, ...]:
    """`--protocol`'s choices: the registered protocols the simulator serves, in registration order."""
    return tuple(name for name in protocols.names() if name in SIMULATED)


def _protocol(args: argparse.Namespace) -> str:
    """`args.protocol` (the default protocol without one); `ConfigError` for one the demo cannot simulate."""
    protocol: str = getattr(args, "protocol", protocols.DEFAULT)
    choices = protocol_choices()
    if protocol not in choices:
        raise ConfigError([f"--protocol: {protocol!r} is not one the demo can simulate ({', '.join(choices)})"])
    return protocol


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
    protocol: str, listen: str, env: Mapping[str, str], simulator: Simulator, url: str, *, state: str, otlp: bool
) -> dict[str, str]:
    """The settings of the demo's service: `protocol` read from the simulator's URL with its key, fast polling, a
    throwaway store, and what `FINDING` says the protocol needs to find the simulator's units."""
    demo_env = {k: v for k, v in env.items() if k.startswith("OTEL_")}
    demo_env.update(
        OPENAI_BASE_URL=url,
        OPENAI_API_KEY=simulator.api_key,
        STEPSCOPE_PROTOCOL=protocol,
        STEPSCOPE_LISTEN=_free_listen(listen),
        STEPSCOPE_POLL_INTERVAL="0.5",
        STEPSCOPE_DISCOVERY_INTERVAL="1",
        STEPSCOPE_STATE=state,
        OTEL_TRACES_EXPORTER="otlp" if otlp else "none",
    )
    finding = FINDING.get(protocol)
    if finding is not None:
        demo_env.update(finding(simulator))
    return demo_env


async def run_demo(args: argparse.Namespace, env: Mapping[str, str], *, plain_every: float = PLAIN_EVERY_S) -> int:
    """Run the demo until `args.duration` passes or SIGINT/SIGTERM; `plain_every` paces the `--no-view` lines."""
    # Imported here so that the view (above) does not pull in the whole service with its exporters.
    from stepscope.commands.sidecar import Sidecar  # noqa: PLC0415

    protocol = _protocol(args)
    simulator = Simulator(scenario_named(args.scenario), seed=args.seed, clock=SimClock(args.speed), protocol=protocol)
    server = SimulatorServer(simulator).start()
    otlp = bool(env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
    with tempfile.TemporaryDirectory(prefix="stepscope-demo-") as tmp:
        demo_env = _service_env(protocol, args.listen, env, simulator, server.url, state=f"{tmp}/state.db", otlp=otlp)
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
            unit, record = nouns = service.parts.protocol.nouns
            view = DemoView(service_tracking(service), metrics_url=metrics_url, traces=traces, nouns=nouns)
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
            exported = f"{view.records} {record}s and {view.finished} {unit}s"
            print(f"demo finished: {exported} exported; metrics were at {metrics_url}", flush=True)
        finally:
            await service.shutdown()
            server.shutdown()
    return 0
