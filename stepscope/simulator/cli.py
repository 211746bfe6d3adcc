"""`stepscope simulate`: serve the simulator on a port (`python -m stepscope.simulator` for standalone use).

Faults: `--fault-*` flags set the default for every endpoint; `--fault ENDPOINT:KEY=VALUE` (repeatable) sets one
field of one endpoint's spec (starting from the default); `--faults-file PATH` loads a `FaultConfig` JSON.

Bad options never end in a traceback: numbers are range-checked by argparse (usage line plus one error line, exit
2); what argparse cannot check (`--fault`, `--faults-file`, an address that cannot be bound) raises `ConfigError`
with one problem that names the flag, which `stepscope`'s CLI and `main()` print as one line and exit 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from stepscope.errors import ConfigError
from stepscope.simulator.agents import WebhookTarget
from stepscope.simulator.core import FLAVORS, PROTOCOLS, Simulator
from stepscope.simulator.faults import (
    AGENTS_ENDPOINTS,
    ENDPOINTS,
    RESPONSES_ENDPOINTS,
    FaultConfig,
    FaultSpec,
    spec_from_dict,
)
from stepscope.simulator.responses import workload_for
from stepscope.simulator.scenario import SCENARIOS, SimClock, scenario_named
from stepscope.simulator.server import SimulatorServer

log = logging.getLogger("stepscope.simulator")
ENV_WEBHOOK_SECRET = "STEPSCOPE_SIM_WEBHOOK_SECRET"  # noqa: S105 - the variable's name, not a secret
N = TypeVar("N", int, float)


def number(
    cast: Callable[[str], N], *, minimum: float | None = None, above: float | None = None, maximum: float | None = None
) -> Callable[[str], N]:
    """An argparse `type`: `cast(text)` (int or float), finite, `>= minimum`, `> above` and `<= maximum`.

    A bad value becomes argparse's one error line, e.g. `argument --speed: must be > 0, got -1`.
    """
    kind = "an integer" if cast is int else "a number"

    def parse(text: str) -> N:
        try:
            value = cast(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {kind}, got {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
        if minimum is not None and value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum:g}, got {text}")
        if above is not None and value <= above:
            raise argparse.ArgumentTypeError(f"must be > {above:g}, got {text}")
        if maximum is not None and value > maximum:
            raise argparse.ArgumentTypeError(f"must be <= {maximum:g}, got {text}")
        return value

    return parse


_RATE = number(float, minimum=0, maximum=1)
_MS = number(float, minimum=0)
_AT_LEAST_ONE = number(int, minimum=1)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the `simulate` options to `parser`."""
    parser.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    parser.add_argument("--port", type=number(int, minimum=0, maximum=65535), default=8089,
                        help="listen port, 0 picks a free one (default 8089)")  # fmt: skip
    parser.add_argument("--seed", type=int, default=None, help="workload seed (default: the scenario's, 0)")
    parser.add_argument("--speed", type=number(float, above=0), default=1.0,
                        help="simulated seconds per wall second (default 1)")  # fmt: skip
    parser.add_argument("--scenario", default="steady", choices=sorted(SCENARIOS), help="workload preset")
    parser.add_argument("--runs-per-second", type=number(float, minimum=0), default=None,
                        help="override: runs started per sim second")  # fmt: skip
    parser.add_argument("--threads", type=_AT_LEAST_ONE, default=None, help="override: number of workload threads")
    parser.add_argument("--api-key", default="sk-sim", help="the one accepted key; others get 401 (default sk-sim)")
    parser.add_argument("--flavor", default="openai", choices=FLAVORS, help="openai (/v1) or azure (project path)")
    parser.add_argument("--project", default="sim", help="Azure project name in /api/projects/{project}")
    parser.add_argument("--protocol", default="assistants", choices=PROTOCOLS,
                        help="assistants (default), agents (/v1/agents, openai flavour), both (assistants and "
                             "agents) or responses (the Responses API; Foundry's under --flavor azure)")  # fmt: skip
    parser.add_argument("--webhook-url", default=None,
                        help="agents, responses: POST signed session or background-response events here")  # fmt: skip
    parser.add_argument("--webhook-secret", default=os.environ.get(ENV_WEBHOOK_SECRET),
                        help=f"signing secret whsec_<base64> (default ${ENV_WEBHOOK_SECRET})")  # fmt: skip
    parser.add_argument("--webhook-attempts", type=_AT_LEAST_ONE, default=5, help="tries per event (default 5)")
    parser.add_argument("--stuck-queued-rate", type=_RATE, default=None,
                        help="responses: share of background responses left queued forever (default: the "
                             "scenario's, 0.02 for faulty, else 0)")  # fmt: skip
    parser.add_argument("--fault-latency-ms", type=_MS, default=0.0, help="added to every answer, in milliseconds")
    parser.add_argument("--fault-jitter-ms", type=_MS, default=0.0,
                        help="the added latency varies by up to this much either way, in milliseconds")  # fmt: skip
    parser.add_argument("--fault-error-rate", type=_RATE, default=0.0, help="probability of a 5xx per request")
    parser.add_argument("--fault-rate-limit", type=_RATE, default=0.0, help="probability of starting a 429 burst")
    parser.add_argument("--fault-rate-limit-burst", type=_AT_LEAST_ONE, default=1, help="429s per burst")
    parser.add_argument("--fault-retry-after", type=_AT_LEAST_ONE, default=1, help="retry-after seconds on 429s")
    parser.add_argument("--fault-drop-rate", type=_RATE, default=0.0, help="probability of closing the connection")
    parser.add_argument("--fault-truncate-rate", type=_RATE, default=0.0,
                        help="probability of a successful answer's body cut in half")  # fmt: skip
    parser.add_argument("--fault-malformed-rate", type=_RATE, default=0.0,
                        help="probability of a successful answer's body not being JSON")  # fmt: skip
    parser.add_argument("--fault-drift-rate", type=_RATE, default=0.0, help="per-object schema drift probability")
    parser.add_argument("--request-budget", type=_AT_LEAST_ONE, default=None,
                        help="requests per --budget-window; then 429")  # fmt: skip
    parser.add_argument("--budget-window", type=number(float, above=0), default=1.0, help="seconds (default 1)")
    endpoints = ", ".join(sorted(ENDPOINTS | AGENTS_ENDPOINTS | RESPONSES_ENDPOINTS))
    parser.add_argument("--fault", action="append", default=[], metavar="ENDPOINT:KEY=VALUE",
                        help=f"per-endpoint fault; endpoints: {endpoints}")  # fmt: skip
    parser.add_argument("--faults-file", type=Path, default=None, help="FaultConfig JSON (overrides --fault-*)")


def faults_from_args(args: argparse.Namespace) -> FaultConfig:
    """The `FaultConfig` the options describe; `ValueError` explains a bad option and names its flag."""
    if args.faults_file is not None:
        return _faults_file(args.faults_file)
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
        try:
            per.setdefault(endpoint, {})[key] = value == "true" if value in ("true", "false") else json.loads(value)
        except json.JSONDecodeError:
            raise ValueError(f"--fault {item!r}: VALUE must be a number, true, false or JSON") from None
    try:
        endpoints = {name: spec_from_dict({**dataclasses.asdict(default), **kv}) for name, kv in per.items()}
        config = FaultConfig(default, endpoints, args.request_budget, args.budget_window)
        problems = config.validate()
    except TypeError as exc:  # a value of the wrong JSON type, e.g. a string rate
        raise ValueError(f"--fault: a value has the wrong type ({exc})") from None
    except ValueError as exc:
        raise ValueError(f"--fault: {exc}") from None
    if problems:
        raise ValueError("--fault: " + "; ".join(problems))
    return config


def _faults_file(path: Path) -> FaultConfig:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise ValueError("must hold a JSON object")
        return FaultConfig.from_dict(data)
    except OSError as exc:
        raise ValueError(f"--faults-file {path}: cannot read it: {exc.strerror}") from None
    except (TypeError, AttributeError) as exc:  # a value or section of the wrong JSON type
        raise ValueError(f"--faults-file {path}: a value has the wrong type ({exc})") from None
    except ValueError as exc:
        raise ValueError(f"--faults-file {path}: {exc}") from None


def build(args: argparse.Namespace) -> Simulator:
    """The `Simulator` the options describe; `ValueError`/`KeyError` explain a bad option."""
    scenario = scenario_named(args.scenario, runs_per_second=args.runs_per_second, threads=args.threads)
    webhooks = None
    if args.webhook_url is not None:
        if args.protocol == "assistants":
            raise ValueError("--webhook-url needs --protocol agents or both, or responses")
        if not args.webhook_secret:
            raise ValueError(f"--webhook-url needs --webhook-secret (or ${ENV_WEBHOOK_SECRET})")
        webhooks = WebhookTarget(args.webhook_url, args.webhook_secret, attempts=args.webhook_attempts)
    return Simulator(
        scenario,
        faults_from_args(args),
        flavor=args.flavor,
        api_key=args.api_key,
        clock=SimClock(args.speed),
        seed=args.seed,
        project=args.project,
        protocol=args.protocol,
        webhooks=webhooks,
        responses_workload=workload_for(scenario).replace(stuck_queued_rate=args.stuck_queued_rate),
    )


def run(args: argparse.Namespace) -> int:
    """Serve until SIGINT/SIGTERM; returns 0 on a clean stop.

    Raises `ConfigError` with one problem naming the flag for a bad option or an address that cannot be bound.
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        simulator = build(args)
    except (ValueError, KeyError) as exc:
        raise ConfigError([f"simulate: {exc.args[0] if exc.args else exc}"]) from None
    try:
        server = SimulatorServer(simulator, args.host, args.port)
    except ConfigError as exc:
        hint = "choose another with --port (0 picks a free one) or --host"
        raise ConfigError([f"{problem}; {hint}" for problem in exc.problems]) from None
    stop = threading.Event()

    def _stop(signum: int, frame: object) -> None:
        del signum, frame
        stop.set()

    previous = {sig: signal.signal(sig, _stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        server.start()
        log.info(
            "simulator listening url=%s api_key=%s scenario=%s flavor=%s protocol=%s seed=%s speed=%s threads=%d",
            server.url, args.api_key, simulator.scenario.name, simulator.flavor, simulator.protocol, simulator.seed,
            args.speed, len(simulator.thread_ids),
        )  # fmt: skip
        stop.wait()
        log.info("simulator stopping")
    finally:
        server.shutdown()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m stepscope.simulator`: returns 0 on a clean stop, 2 (with one line per problem) on bad options."""
    parser = argparse.ArgumentParser(prog="python -m stepscope.simulator", description=__doc__)
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"{parser.prog}: {problem}", file=sys.stderr)
        return 2
