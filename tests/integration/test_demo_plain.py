"""`stepscope demo --no-view` in-process against its simulator: periodic plain lines, the final frame, the SVG."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from stepscope.commands.demo import run_demo

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

PLAIN = re.compile(
    r"demo \+(\d+)s: runs (\d+) finished \((\d+) failed\), (\d+) in flight; steps (\d+) \((\d+) failed\); "
    r"tokens (\d+) \((\d+)/s\); spans pending (\d+)"
)


async def test_no_view_prints_periodic_plain_lines(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """--no-view prints an unwrapped status line every interval with non-decreasing counts, then the summary."""
    svg = tmp_path / "view.svg"
    args = argparse.Namespace(
        duration=2.0, listen="127.0.0.1:0", speed=20.0, seed=7, scenario="lively", no_view=True, svg=str(svg)
    )
    assert await run_demo(args, {}, plain_every=0.4) == 0
    out = capsys.readouterr().out.splitlines()
    plain = [m for m in map(PLAIN.fullmatch, out) if m]
    assert len(plain) >= 2, out  # one every 0.4 s over 2 s, however slowly the loop turns
    assert all(len(line) > 80 for line in out if PLAIN.fullmatch(line))  # printed whole, not wrapped at 80
    runs = [int(m.group(2)) for m in plain]
    steps = [int(m.group(5)) for m in plain]
    assert runs == sorted(runs)
    assert steps == sorted(steps)
    finished = next(line for line in out if line.startswith("demo finished:"))
    total = re.search(r"demo finished: (\d+) steps and (\d+) runs exported", finished)
    assert total is not None
    assert int(total.group(1)) >= steps[-1]
    assert any(line.startswith("recent steps") for line in out)  # the final frame, for the record
    assert svg.read_text().startswith("<svg")


AGENTS_PLAIN = re.compile(
    r"demo \+(\d+)s: turns (\d+) finished \((\d+) failed\), (\d+) in flight; tokens (\d+) \((\d+)/s\); "
    r"spans pending (\d+)"
)


async def test_agents_no_view_prints_turn_lines(capsys: pytest.CaptureFixture[str]) -> None:
    """--protocol agents --no-view reads the simulated Agents API: its lines count finished turns and tokens, never
    steps, the counts only grow, and the final frame lists turns."""
    args = argparse.Namespace(
        duration=3.0, listen="127.0.0.1:0", speed=20.0, seed=7, scenario="lively", no_view=True, svg=None,
        protocol="agents",
    )  # fmt: skip
    assert await run_demo(args, {}, plain_every=0.4) == 0
    out = capsys.readouterr().out.splitlines()
    plain = [m for m in map(AGENTS_PLAIN.fullmatch, out) if m]
    assert len(plain) >= 2, out
    turns = [int(m.group(2)) for m in plain]
    tokens = [int(m.group(5)) for m in plain]
    assert turns == sorted(turns) and tokens == sorted(tokens)
    assert not any(PLAIN.fullmatch(line) for line in out), "an Assistants line in the agents demo"
    finished = next(line for line in out if line.startswith("demo finished:"))
    total = re.fullmatch(r"demo finished: (\d+) turns exported; metrics were at http://\S+/metrics", finished)
    assert total is not None, finished
    assert int(total.group(1)) >= turns[-1] > 0, out
    assert any(line.startswith("recent turns") for line in out)
