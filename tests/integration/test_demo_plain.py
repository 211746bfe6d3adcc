"""`stepscope demo --no-view` in-process against its simulator: periodic plain lines, the final frame, the SVG."""

from __future__ import annotations

import argparse
import asyncio
import re
from pathlib import Path

import httpx
import pytest

from stepscope.commands.demo import run_demo

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

PLAIN = re.compile(
    r"demo \+(\d+)s: (\w+)s (\d+) finished \((\d+) failed\), (\d+) in flight; (\w+)s (\d+) \((\d+) failed\); "
    r"tokens (\d+) \((\d+)/s\); spans pending (\d+)"
)
FIRST = re.compile(
    r"stepscope demo: simulator at (http://[\d.:]+)/v1, metrics at http://\S+/metrics, "
    r"the application through the proxy at (http://[\d.:]+/v1)"
)
FINISHED = re.compile(r"demo finished: (\d+) (\w+)s and (\d+) (\w+)s exported; metrics were at http://\S+/metrics")


def _plain_lines(out: list[str], nouns: tuple[str, str]) -> list[re.Match[str]]:
    """The plain status lines of `out`, each checked to use the protocol's `nouns` (unit, record)."""
    plain = [m for m in map(PLAIN.fullmatch, out) if m]
    assert all((m.group(2), m.group(6)) == nouns for m in plain), out
    return plain


async def test_no_view_prints_periodic_plain_lines(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """--no-view prints an unwrapped status line every interval with non-decreasing counts, then the summary."""
    svg = tmp_path / "view.svg"
    args = argparse.Namespace(
        duration=2.0, listen="127.0.0.1:0", speed=20.0, seed=7, scenario="lively", no_view=True, svg=str(svg)
    )
    assert await run_demo(args, {}, plain_every=0.4) == 0
    out = capsys.readouterr().out.splitlines()
    plain = _plain_lines(out, ("run", "step"))
    assert len(plain) >= 2, out  # one every 0.4 s over 2 s, however slowly the loop turns
    assert all(len(line) > 80 for line in out if PLAIN.fullmatch(line))  # printed whole, not wrapped at 80
    runs = [int(m.group(3)) for m in plain]
    steps = [int(m.group(7)) for m in plain]
    assert runs == sorted(runs)
    assert steps == sorted(steps)
    finished = FINISHED.fullmatch(next(line for line in out if line.startswith("demo finished:")))
    assert finished is not None
    assert (finished.group(2), finished.group(4)) == ("step", "run")
    assert int(finished.group(1)) >= steps[-1] > 0
    assert int(finished.group(3)) >= runs[-1]
    assert any(line.startswith("recent steps") for line in out)  # the final frame, for the record
    assert svg.read_text().startswith("<svg")


async def test_agents_no_view_prints_turn_lines(capsys: pytest.CaptureFixture[str]) -> None:
    """--protocol agents --no-view reads the simulated Agents API: its lines count finished turns, the items they
    committed and tokens, never runs or steps, the counts only grow, and the final frame lists turns."""
    args = argparse.Namespace(
        duration=3.0, listen="127.0.0.1:0", speed=20.0, seed=7, scenario="lively", no_view=True, svg=None,
        protocol="agents",
    )  # fmt: skip
    assert await run_demo(args, {}, plain_every=0.4) == 0
    out = capsys.readouterr().out.splitlines()
    plain = _plain_lines(out, ("turn", "item"))
    assert len(plain) >= 2, out
    turns = [int(m.group(3)) for m in plain]
    items = [int(m.group(7)) for m in plain]
    tokens = [int(m.group(9)) for m in plain]
    assert turns == sorted(turns) and items == sorted(items) and tokens == sorted(tokens)
    finished = FINISHED.fullmatch(next(line for line in out if line.startswith("demo finished:")))
    assert finished is not None, out
    assert (finished.group(2), finished.group(4)) == ("item", "turn")
    assert int(finished.group(3)) >= turns[-1] > 0, out
    assert int(finished.group(1)) >= items[-1] > 0, out
    assert any(line.startswith("recent turns") for line in out)
    assert any(line.startswith("last finished turn turn_") for line in out)


async def test_responses_no_view_reads_responses_through_the_proxy(capsys: pytest.CaptureFixture[str]) -> None:
    """--protocol responses --no-view runs the simulated application through the service's proxy (its URL on the
    first line): the simulator holds only the responses the application created (`source` `client`, none of the
    in-simulator workload), and the service exports responses and their items, which at OpenAI only the proxy shows."""
    args = argparse.Namespace(
        duration=3.0, listen="127.0.0.1:0", speed=20.0, seed=7, scenario="lively", no_view=True, svg=None,
        protocol="responses",
    )  # fmt: skip
    demo = asyncio.create_task(run_demo(args, {}, plain_every=0.4))
    out: list[str] = []
    async with asyncio.timeout(10):
        while not any(PLAIN.fullmatch(line) for line in out):  # the application is sending by now
            await asyncio.sleep(0.05)
            out += capsys.readouterr().out.splitlines()
    first = FIRST.fullmatch(out[0])
    assert first is not None, out
    async with httpx.AsyncClient() as client:
        truth = (await client.get(f"{first.group(1)}/_sim/truth")).json()["responses"]
    assert await demo == 0
    out += capsys.readouterr().out.splitlines()
    assert truth["responses"] and {r["source"] for r in truth["responses"]} == {"client"}
    plain = _plain_lines(out, ("response", "item"))
    finished = FINISHED.fullmatch(next(line for line in out if line.startswith("demo finished:")))
    assert finished is not None, out
    assert (finished.group(2), finished.group(4)) == ("item", "response")
    assert int(finished.group(3)) >= int(plain[-1].group(3)) > 0, out
    assert int(finished.group(1)) > 0, out
    assert any(line.startswith("recent responses") for line in out)
    assert any(f"proxy: {first.group(2)}" in line for line in out)  # the frame's footer names the proxy
    assert any(line.startswith(f"simulator: {first.group(1)}/v1") for line in out)
