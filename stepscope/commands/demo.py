"""`stepscope demo`: the simulator and the bridge in one process, with a live terminal view.

The simulator runs a lively seeded workload on a loopback port at `--speed` simulated seconds per second; the
bridge polls it exactly as it would poll a real server and serves `/metrics`. Spans go to OTLP only when
`OTEL_EXPORTER_OTLP_ENDPOINT` is set. Timestamps come from the simulator's fast clock, so durations look real
while export lag (wall clock against simulated time) reads 0.

The view learns about records and units only through the pipeline's commit listener, and reads the tracked units
and pending spans from the service, so it shows what the exporters were given, not what the simulator did. It
knows no protocol: it calls units and records what the service's protocol calls them (`factory.nouns`).

`--protocol` chooses the simulated API and the service's `STEPSCOPE_PROTOCOL` together: any registered protocol
the simulator serves (`protocol_choices()`). That choice is the only thing here that depends on the protocol: the
settings the service needs to find the simulator's units (`finding`) follow from what the simulator says of its
workload.

Where units can be found only by seeing their requests pass (Responses on OpenAI, which lists none), the simulator
runs its workload outside (`Simulator(external_workload=True)`): `finding` turns the service's proxy on, and once
the service is up the demo starts `simulator.application(...)` sending through the proxy (to the simulator when no
proxy is configured), and stops it before the service. The first `--no-view` line and the view's footer show the
proxy's URL then.

While the live view draws, log records go into its frame (the newest warning) instead of over it, and logging is
as before once the view ends (`commands.logs.diverted`); `--no-view` logs as `serve` does.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from rich.console import Console
from rich.live import Live

from stepscope import protocols
from stepscope.commands.demoview import PLAIN_EVERY_S, Api, DemoView, Tracking
from stepscope.commands.logs import LastWarning, diverted
from stepscope.config import load
from stepscope.errors import ConfigError
from stepscope.simulator import SimApplication, SimClock, Simulator, SimulatorServer, scenario_named
from stepscope.simulator.core import PROTOCOLS as SIMULATED

if TYPE_CHECKING:
    from stepscope.commands.sidecar import Sidecar


def finding(simulator: Simulator) -> dict[str, str]:
    """Settings, beyond `STEPSCOPE_PROTOCOL`, the service needs to find the simulator's work where the API lists
    none: the workload's threads (the Assistants API lists no threads), or the proxy an external workload sends
    through (OpenAI lists no responses; the port is chosen when the proxy binds). Otherwise the service finds the
    work as in production (Agents API sessions by listing them)."""
    found = {}
    if simulator.assistants_threads:
        found["STEPSCOPE_THREADS"] = ",".join(simulator.assistants_threads)
    if simulator.external_workload:
        found["STEPSCOPE_PROXY_LISTEN"] = "127.0.0.1:0"
    return found


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
    """The requested address, or the same host on a free port when it is taken. Probed as the server binds it, with
    `SO_REUSEADDR`: a connection in TIME_WAIT on the port (a scrape a moment ago) leaves it free."""
    host, _, port = listen.rpartition(":")
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
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
    throwaway store, and what `finding` says the service needs to find the simulator's units."""
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
    demo_env.update(finding(simulator))
    return demo_env


def _report(
    view: DemoView, console: Console, args: argparse.Namespace, *, metrics_url: str, nouns: tuple[str, str]
) -> None:
    """The end of a demo: the final frame under `--no-view` (the live view leaves its own), the `--svg` file, and the
    `demo finished:` line in the protocol's `nouns`."""
    console.print(view.render() if args.no_view else "")
    if args.svg:
        recorder = Console(record=True, width=80, file=io.StringIO())
        recorder.print(view.render())
        recorder.save_svg(args.svg, title="stepscope demo")
    unit, record = nouns
    exported = f"{view.records} {record}s and {view.finished} {unit}s"
    print(f"demo finished: {exported} exported; metrics were at {metrics_url}", flush=True)


async def _show(
    view: DemoView,
    console: Console,
    args: argparse.Namespace,
    stop: asyncio.Event,
    warnings: LastWarning,
    *,
    plain_every: float,
) -> None:
    """Until `args.duration` passes or `stop` is set: the live view, log records diverted into it (`warnings`), or
    under `--no-view` a plain line every `plain_every` seconds."""
    started = time.monotonic()
    deadline = started + args.duration if args.duration else None
    next_line = started + plain_every
    live = Live(view.render(console.height), console=console, refresh_per_second=4)
    terminal = (console.file, sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__)
    quiet = diverted(warnings, terminal) if not args.no_view else contextlib.nullcontext()
    with quiet, live if not args.no_view else contextlib.nullcontext():
        while not stop.is_set() and (deadline is None or time.monotonic() < deadline):
            now = time.monotonic()
            if not args.no_view:
                live.update(view.render(console.height))
            elif now >= next_line:
                print(view.plain_line(now - started), flush=True)
                next_line += plain_every
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=0.25)


async def run_demo(args: argparse.Namespace, env: Mapping[str, str], *, plain_every: float = PLAIN_EVERY_S) -> int:
    """Run the demo until `args.duration` passes or SIGINT/SIGTERM; `plain_every` paces the `--no-view` lines."""
    # Imported here so that the view (above) does not pull in the whole service with its exporters.
    from stepscope.commands.sidecar import Sidecar  # noqa: PLC0415

    protocol = _protocol(args)
    simulator = Simulator(scenario_named(args.scenario), seed=args.seed, clock=SimClock(args.speed), protocol=protocol,
                          external_workload=True)  # fmt: skip
    server = SimulatorServer(simulator).start()
    application: SimApplication | None = None
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
            proxy_url = service.proxy.url + simulator.base_path if service.proxy is not None else None
            traces = env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "OTLP") if otlp else "off (set OTEL_EXPORTER_OTLP_ENDPOINT)"
            nouns = service.parts.protocol.nouns
            warnings = LastWarning()
            view = DemoView(service_tracking(service), metrics_url=metrics_url, traces=traces, nouns=nouns,
                            api=Api(url=server.url, key=simulator.api_key, protocol=protocol,
                                    container=service.parts.protocol.container), proxy_url=proxy_url,
                            warnings=warnings)  # fmt: skip
            service.parts.pipeline.add_listener(view)
            application = simulator.application(proxy_url or server.url)
            if application is not None:  # after the listener: the view hears every response it makes
                await application.start()
            if args.no_view:
                # Plain print, not the console: a log line must not be wrapped at the terminal's width.
                through = f", the application through the proxy at {proxy_url}" if proxy_url else ""
                print(f"stepscope demo: simulator at {server.url}, metrics at {metrics_url}{through}", flush=True)
            console = Console()
            await _show(view, console, args, stop, warnings, plain_every=plain_every)
            _report(view, console, args, metrics_url=metrics_url, nouns=nouns)
        finally:
            if application is not None:
                await application.stop()
            await service.shutdown()
            server.shutdown()
    return 0
