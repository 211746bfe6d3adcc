"""`--help` of every command: each argument says what it is, and each command shows only its own flags."""

from __future__ import annotations

import argparse

import pytest

from stepscope import protocols
from stepscope.cli import build_parser
from stepscope.commands.flags import COMMAND_FLAGS, CONTAINER_FLAGS


def undocumented(parser: argparse.ArgumentParser) -> list[str]:
    """The arguments of `parser` itself whose help is empty (`stepscope.cli`'s parsers keep what they were given)."""
    return [
        "/".join(a.option_strings) or a.dest
        for a in getattr(parser, "arguments", [])
        if a.help is not argparse.SUPPRESS and not (a.help or "").strip()
    ]


ROOT = build_parser()
ALL: dict[str, argparse.ArgumentParser] = {"stepscope": ROOT, **getattr(ROOT, "commands", {})}


def test_every_command_is_listed() -> None:
    """The parsers the checks below read are every command, nested ones included."""
    assert {"stepscope serve", "stepscope demo", "stepscope inspect", "stepscope config check"} <= set(ALL)
    assert all(getattr(p, "arguments", None) for p in ALL.values())  # --help at least: the recording works


@pytest.mark.parametrize("command", list(ALL))
def test_every_argument_has_help(command: str) -> None:
    """Every positional argument and option of the command has help text in `--help`."""
    assert undocumented(ALL[command]) == []


@pytest.mark.parametrize(("command", "taken"), [("stepscope inspect", "inspect"), ("stepscope backfill", "backfill")])
def test_a_command_shows_only_the_setting_flags_it_takes(command: str, taken: str) -> None:
    """`inspect` and `backfill` list only the setting flags that mean something to them, not all of `serve`'s."""
    serve_only = set(COMMAND_FLAGS["serve"]) - set(COMMAND_FLAGS[taken])
    shown = {flag for action in getattr(ALL[command], "arguments", []) for flag in action.option_strings}
    assert serve_only and not serve_only & shown


def test_inspect_takes_every_protocols_container_flag() -> None:
    """Each registered protocol that names its units' container has that flag on `inspect` (the demo's copyable
    command uses it)."""
    containers = {protocols.get(name).container for name in protocols.names()}
    assert {"thread", "session"} <= containers
    assert {f"--{c}" for c in containers if c} <= set(CONTAINER_FLAGS)
