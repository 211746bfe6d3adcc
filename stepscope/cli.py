"""The `stepscope` command: serve, demo, simulate, inspect, backfill, config check, dashboards, rules.

The only module that calls `sys.exit`. Exit codes: 0 success, 1 runtime failure, 2 usage or configuration error.
Every failure an operator can cause prints plain lines on stderr, never a traceback: a bad flag value is one
`stepscope CMD: error: argument --flag: reason (see ...)` line; a `ConfigError` (bad settings, an address that
cannot be bound) is one `stepscope: <problem>` line per problem; any other stepscope or OS error is one line too.
A `STEPSCOPE_*` variable that names no setting is one warning line, with the nearest known name, from every command
that reads the configuration.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

from stepscope import __version__
from stepscope.commands.flags import CAPTURE_CONTENT, COMMAND_FLAGS, CONTAINER_FLAGS, SETTING_FLAGS
from stepscope.commands.logs import setup_logging
from stepscope.config import SETTINGS_BY_PATH, Config, env_help, load, shown, unknown_env
from stepscope.config.values import OBJECT_ID, parse_duration
from stepscope.errors import ConfigError, StepscopeError

EXIT_OK, EXIT_FAILURE, EXIT_CONFIG, EXIT_INTERRUPTED = 0, 1, 2, 130
log = logging.getLogger("stepscope")


def _add_setting_flags(parser: argparse.ArgumentParser, command: str) -> None:
    """The `--config` flag and the setting flags `command` takes (`COMMAND_FLAGS`)."""
    parser.add_argument("--config", metavar="FILE", help="TOML configuration file (lowest precedence above defaults)")
    taken = COMMAND_FLAGS[command]
    for flag, path, text in SETTING_FLAGS:
        if flag in taken:
            parser.add_argument(flag, dest=f"setting:{path}", metavar="VALUE", help=text)
    flag, path, text = CAPTURE_CONTENT
    if flag in taken:
        parser.add_argument(flag, dest=f"setting:{path}", action="store_const", const="true", help=text)


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error: the reason and where to find the usage, not the usage itself.

    Subcommand parsers inherit the class, so `stepscope simulate --speed -1` fails the same way. `arguments` holds
    what `add_argument` made, in order; a parser made with `commands=` enters itself there under its command line
    (`stepscope demo`), so the root's `commands` lists every subcommand (the help tests read both).
    """

    def __init__(self, *args: Any, commands: dict[str, _Parser] | None = None, **kwargs: Any) -> None:
        self.arguments: list[argparse.Action] = []  # before argparse's own __init__, which adds --help
        self.commands: dict[str, _Parser] = {}
        super().__init__(*args, **kwargs)
        if commands is not None:
            commands[self.prog] = self

    def add_argument(self, *args: Any, **kwargs: Any) -> argparse.Action:
        action = super().add_argument(*args, **kwargs)
        self.arguments.append(action)
        return action

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_CONFIG, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def _listen_arg(text: str) -> str:
    """argparse `type` for a HOST:PORT flag, checked like `STEPSCOPE_LISTEN`."""
    try:
        return str(SETTINGS_BY_PATH["server.listen"].parse(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _thread_arg(text: str) -> str:
    """argparse `type` for one thread id, checked like `STEPSCOPE_THREADS`."""
    try:
        ids = SETTINGS_BY_PATH["poll.threads"].parse(text)
    except ValueError:
        ids = ()
    if len(ids) != 1:
        raise argparse.ArgumentTypeError(f"must be one id like thread_..., got {text!r}")
    return str(ids[0])


def _unit_arg(text: str) -> str:
    """argparse `type` for an API object id (a run, thread, turn, session or response)."""
    if not OBJECT_ID.fullmatch(text):
        raise argparse.ArgumentTypeError(f"must be an id like run_... or resp_..., got {text!r}")
    return text


def _duration_arg(text: str) -> str:
    """argparse `type` for a duration flag; keeps the text, which `config.load` parses again."""
    try:
        parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{exc}, got {text!r}") from None
    return text


def _output_file_arg(text: str) -> str:
    """argparse `type` for a file written at the end of a command: its directory must exist before any work."""
    folder = Path(text).expanduser().parent
    if not folder.is_dir():
        raise argparse.ArgumentTypeError(f"directory {str(folder)!r} does not exist")
    return text


def _overrides(args: argparse.Namespace) -> dict[str, str]:
    return {k.split(":", 1)[1]: v for k, v in vars(args).items() if k.startswith("setting:") and v is not None}


def build_parser() -> argparse.ArgumentParser:
    from stepscope.commands.demo import protocol_choices  # noqa: PLC0415 - keeps `--help` of other commands fast
    from stepscope.simulator import cli as simulator_cli  # noqa: PLC0415 - same reason
    from stepscope.simulator.scenario import SCENARIOS  # noqa: PLC0415 - same reason

    parser = _Parser(
        prog="stepscope",
        description="Turn agent work recorded on the server (Assistants runs and steps, Agents API turns, ...) into "
        "OpenTelemetry spans and Prometheus metrics.",
        epilog="Environment variables (flags win over them, they win over --config):\n" + env_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"stepscope {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    command = functools.partial(sub.add_parser, commands=parser.commands)

    serve = command("serve", help="run the sidecar: poll runs, export spans and metrics")
    _add_setting_flags(serve, "serve")

    demo = command("demo", help="the simulator plus the bridge, with a live terminal view")
    positive = simulator_cli.number(float, above=0)
    demo.add_argument("--duration", type=positive, metavar="SECONDS", help="stop after this many seconds")
    demo.add_argument("--listen", type=_listen_arg, default="127.0.0.1:9464",
                      help="where /metrics is served (default %(default)s)")  # fmt: skip
    demo.add_argument("--speed", type=positive, default=10.0, help="simulated seconds per real second")
    demo.add_argument("--seed", type=int, default=7,
                      help="workload seed: the same seed gives the same workload (default %(default)s)")  # fmt: skip
    demo.add_argument("--scenario", default="lively", choices=sorted(SCENARIOS), help="workload preset")
    demo.add_argument("--protocol", default="assistants", choices=protocol_choices(),
                      help="the simulated API the demo reads (default %(default)s)")  # fmt: skip
    demo.add_argument("--no-view", action="store_true", help="plain log lines instead of the live view")
    demo.add_argument("--svg", type=_output_file_arg, metavar="FILE", help="save the final frame of the view as SVG")

    simulate = command("simulate", help="run the Assistants v2 simulator on its own")
    simulator_cli.add_arguments(simulate)

    inspect = command("inspect", help="a waterfall of one run (turn, response) and what it is made of")
    inspect.add_argument("unit_id", type=_unit_arg, metavar="ID",
                         help="the run, turn or response id (run_..., turn_..., resp_...)")  # fmt: skip
    inspect.add_argument(*CONTAINER_FLAGS, dest="container", type=_unit_arg, metavar="ID",
                         help="the run's thread (Assistants) or the turn's session (Agents API)")  # fmt: skip
    inspect.add_argument("--json", action="store_true", help="machine-readable output")
    _add_setting_flags(inspect, "inspect")

    backfill = command("backfill", help="export a thread's finished runs once and exit")
    backfill.add_argument("--thread", type=_thread_arg, action="append", required=True, metavar="THREAD_ID",
                          dest="backfill_threads", help="a thread whose runs to export (repeat it)")  # fmt: skip
    backfill.add_argument("--since", type=_duration_arg, default="24h",
                          help="how far back, e.g. 2h or 7d (default %(default)s)")  # fmt: skip
    _add_setting_flags(backfill, "backfill")

    config = command("config", help="configuration tools")
    config_sub = config.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    config_command = functools.partial(config_sub.add_parser, commands=parser.commands)
    check = config_command("check", help="validate the configuration and print the effective values")
    _add_setting_flags(check, "check")

    dashboards = command("dashboards", help="render the Grafana dashboards")
    group = dashboards.add_mutually_exclusive_group(required=True)
    group.add_argument("--write", metavar="DIR", help="write dashboard JSON files into DIR")
    group.add_argument("--check", metavar="DIR", help="exit 1 if DIR differs from the generated dashboards")

    rules = command("rules", help="render the Prometheus rules file and the PrometheusRule manifest")
    group = rules.add_mutually_exclusive_group(required=True)
    group.add_argument("--write", metavar="DIR", help="write DIR/prometheus/stepscope.rules.yml and the manifest")
    group.add_argument("--check", metavar="DIR", help="exit 1 if the files under DIR differ from the generated ones")
    rules.add_argument(
        "--runbook-url",
        metavar="BASE",
        help="prefix of each alert's runbook_url, before the lower-cased alert name (default: the path of "
        "deploy/runbook.md in the repository, deploy/runbook.md#)",
    )
    return parser


def _load(
    args: argparse.Namespace, env: Mapping[str, str], extra: Mapping[str, str] | None = None, *, logs: bool = False
) -> Config:
    """The configuration, with a warning line per unknown `STEPSCOPE_*` variable first. With `logs` (serve,
    backfill) logging is set up from the configuration and the warnings go through it, in its format; otherwise,
    or when the configuration is invalid, they are plain `stepscope: warning:` lines before the problems."""
    unknown = unknown_env(env)
    try:
        config = load(env=env, file=args.config, overrides={**_overrides(args), **(extra or {})})
    except ConfigError:
        _print_warnings(unknown)
        raise
    if not logs:
        _print_warnings(unknown)
        return config
    setup_logging(config.log_level, config.log_format)
    for warning in unknown:
        log.warning("%s", warning)
    return config


def _print_warnings(warnings: Sequence[str]) -> None:
    for warning in warnings:
        print(f"stepscope: warning: {warning}", file=sys.stderr)


def _print_problems(exc: ConfigError) -> None:
    # One self-contained line per problem, each naming its setting, so `grep stepscope:` finds them all.
    for problem in exc.problems:
        print(f"stepscope: {problem}", file=sys.stderr)


def run(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    """Parse arguments and run a command; returns the exit code (also for `--help` and argparse errors)."""
    env = dict(os.environ if env is None else env)
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # argparse has printed its one error line, or the help
        return exc.code if isinstance(exc.code, int) else EXIT_CONFIG
    try:
        return _dispatch(args, env)
    except ConfigError as exc:
        _print_problems(exc)
        return EXIT_CONFIG
    except StepscopeError as exc:
        print(f"stepscope: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except OSError as exc:  # the environment refused a file or socket operation: say which, without a traceback
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"stepscope: {where}{exc.strerror or exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:  # Ctrl-C before a command's own handlers were in place: the shell's convention
        return EXIT_INTERRUPTED


def _dispatch(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    command = args.command
    if command == "simulate":
        from stepscope.simulator import cli as simulator_cli  # noqa: PLC0415

        return simulator_cli.run(args)
    if command == "dashboards":
        return _dashboards(write=args.write, check=args.check)
    if command == "rules":
        return _rules(write=args.write, check=args.check, runbook_url=args.runbook_url)
    if command == "demo":
        from stepscope.commands.demo import run_demo  # noqa: PLC0415

        setup_logging("WARNING" if not args.no_view else "INFO")
        return asyncio.run(run_demo(args, env))
    if command == "config":
        config = _load(args, env)
        values = shown(config)
        width = max(len(k) for k in values)
        for key, value in values.items():
            print(f"{key:<{width}}  {value}")
        unknown = len(unknown_env(env))
        ignored = f"; {unknown} unknown STEPSCOPE_* variable(s) ignored (see the warnings above)" if unknown else ""
        print(f"configuration OK{ignored}", file=sys.stderr)
        return EXIT_OK
    if command == "inspect":
        from stepscope.commands.inspect import inspect_unit  # noqa: PLC0415

        config = _load(args, env)
        return asyncio.run(inspect_unit(config, args.unit_id, args.container, as_json=args.json))
    if command == "backfill":
        from stepscope.commands.backfill import run_backfill  # noqa: PLC0415

        threads = ",".join(args.backfill_threads)
        config = _load(args, env, {"poll.threads": threads, "poll.lookback": args.since}, logs=True)
        return asyncio.run(run_backfill(config))
    # serve
    from stepscope.commands.sidecar import run_sidecar  # noqa: PLC0415

    config = _load(args, env, logs=True)
    return asyncio.run(run_sidecar(config))


def _dashboards(*, write: str | None, check: str | None) -> int:
    from stepscope.contract import dashboards  # noqa: PLC0415

    if write:
        for path in dashboards.write(write):
            print(f"wrote {path}")
        return EXIT_OK
    assert check is not None
    stale = dashboards.check(check)
    for name in stale:
        print(f"{name} is out of date: run `stepscope dashboards --write {check}`", file=sys.stderr)
    return EXIT_FAILURE if stale else EXIT_OK


def _rules(*, write: str | None, check: str | None, runbook_url: str | None) -> int:
    from stepscope.contract import rulefiles  # noqa: PLC0415

    runbook_url = runbook_url or rulefiles.RUNBOOK_URL
    if write:
        for path in rulefiles.write(write, runbook_url):
            print(f"wrote {path}")
        return EXIT_OK
    assert check is not None
    stale = rulefiles.check(check, runbook_url)
    for path in stale:
        print(f"{path} is out of date: run `stepscope rules --write {check}`", file=sys.stderr)
    return EXIT_FAILURE if stale else EXIT_OK


def main() -> None:
    sys.exit(run())
