"""`stepscope simulate`: serve the simulator on a port (`python -m stepscope.simulator` for standalone use).

Faults: `--fault-*` flags set the default for every endpoint; `--fault ENDPOINT:KEY=VALUE` (repeatable) sets one
field of one endpoint's spec (starting from the default); `--faults-file PATH` loads a `FaultConfig` JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import signal
import threading
from pathlib import Path
from typing import Any

from stepscope.simulator.core import FLAVORS, Simulator
from stepscope.simulator.faults import ENDPOINTS, FaultConfig, FaultSpec, spec_from_dict
from stepscope.simulator.scenario import SCENARIOS, SimClock, scenario_named
from stepscope.simulator.server import SimulatorServer

log = logging.getLogger("stepscope.simulator")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the `simulate` options to `parser`."""
    parser.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8089, help="listen port, 0 picks a free one (default 8089)")
    parser.add_argument("--seed", type=int, default=None, help="workload seed (default: the scenario's, 0)")
    parser.add_argument("--speed", type=float, default=1.0, help="simulated seconds per wall second (default 1)")
    parser.add_argument("--scenario", default="steady", choices=sorted(SCENARIOS), help="workload preset")
    parser.add_argument("--runs-per-second", type=float, default=None, help="override: runs started per sim second")
    parser.add_argument("--threads", type=int, default=None, help="override: number of workload threads")
    parser.add_argument("--api-key", default="sk-sim", help="the one accepted key; others get 401 (default sk-sim)")
    parser.add_argument("--flavor", default="openai", choices=FLAVORS, help="openai (/v1) or azure (project path)")
    parser.add_argument("--project", default="sim", help="Azure project name in /api/projects/{project}")
    parser.add_argument("--fault-latency-ms", type=float, default=0.0)
    parser.add_argument("--fault-jitter-ms", type=float, default=0.0)
    parser.add_argument("--fault-error-rate", type=float, default=0.0, help="probability of a 5xx per request")
    parser.add_argument("--fault-rate-limit", type=float, default=0.0, help="probability of starting a 429 burst")
    parser.add_argument("--fault-rate-limit-burst", type=int, default=1, help="429s per burst")
    parser.add_argument("--fault-retry-after", type=int, default=1, help="retry-after seconds on injected 429s")
    parser.add_argument("--fault-drop-rate", type=float, default=0.0, help="probability of closing the connection")
    parser.add_argument("--fault-truncate-rate", type=float, default=0.0)
    parser.add_argument("--fault-malformed-rate", type=float, default=0.0)
    parser.add_argument("--fault-drift-rate", type=float, default=0.0, help="per-object schema drift probability")
    parser.add_argument("--request-budget", type=int, default=None, help="requests per --budget-window; then 429")
    parser.add_argument("--budget-window", type=float, default=1.0, help="seconds (default 1)")
    parser.add_argument("--fault", action="append", default=[], metavar="ENDPOINT:KEY=VALUE",
                        help=f"per-endpoint fault; endpoints: {', '.join(sorted(ENDPOINTS))}")  # fmt: skip
    parser.add_argument("--faults-file", type=Path, default=None, help="FaultConfig JSON (overrides --fault-*)")


def faults_from_args(args: argparse.Namespace) -> FaultConfig:
    """The `FaultConfig` the options describe; `ValueError` explains a bad option."""
    if args.faults_file is not None:
        return FaultConfig.from_dict(json.loads(args.faults_file.read_text()))
    default = FaultSpec(
        latency_ms=args.fault_latency_ms,
        jitter_ms=args.fault_jitter_ms,
        error_rate=args.fault_error_rate,
        rate_limit_rate=args.fault_rate_limit,
        rate_limit_burst=args.fault_rate_limit_burst,
        retry_after_s=args.fault_retry_after,
        drop_rate=args.fault_drop_rate,
        truncate_rate=args.fault_truncate_rate,
        malformed_rate=args.fault_malformed_rate,
        drift_rate=args.fault_drift_rate,
    )
    per: dict[str, dict[str, Any]] = {}
    for item in args.fault:
        endpoint, sep, assignment = item.partition(":")
        key, eq, value = assignment.partition("=")
        if not sep or not eq:
            raise ValueError(f"--fault {item!r}: expected ENDPOINT:KEY=VALUE")
        per.setdefault(endpoint, {})[key] = value == "true" if value in ("true", "false") else json.loads(value)
    endpoints = {name: spec_from_dict({**dataclasses.asdict(default), **kv}) for name, kv in per.items()}
    config = FaultConfig(default, endpoints, args.request_budget, args.budget_window)
    problems = config.validate()
    if problems:
        raise ValueError("; ".join(problems))
    return config


def build(args: argparse.Namespace) -> Simulator:
    """The `Simulator` the options describe; `ValueError`/`KeyError` explain a bad option."""
    scenario = scenario_named(args.scenario, runs_per_second=args.runs_per_second, threads=args.threads)
    return Simulator(
        scenario,
        faults_from_args(args),
        flavor=args.flavor,
        api_key=args.api_key,
        clock=SimClock(args.speed),
        seed=args.seed,
        project=args.project,
    )


def run(args: argparse.Namespace) -> int:
    """Serve until SIGINT/SIGTERM; returns the exit status (0 on a clean stop, 2 on bad options)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        simulator = build(args)
    except (ValueError, KeyError, OSError) as exc:
        log.error("simulate: %s", exc)
        return 2
    server = SimulatorServer(simulator, args.host, args.port)
    stop = threading.Event()

    def _stop(signum: int, frame: object) -> None:
        del signum, frame
        stop.set()

    previous = {sig: signal.signal(sig, _stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        server.start()
        log.info(
            "simulator listening url=%s api_key=%s scenario=%s flavor=%s seed=%s speed=%s threads=%d",
            server.url, args.api_key, simulator.scenario.name, simulator.flavor, simulator.seed, args.speed,
            len(simulator.thread_ids),
        )  # fmt: skip
        stop.wait()
        log.info("simulator stopping")
    finally:
        server.shutdown()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stepscope.simulator", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))
