"""`stepscope demo --no-view` in-process against its simulator: periodic plain lines, the final frame, the SVG."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from stepscope.demo import run_demo

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
