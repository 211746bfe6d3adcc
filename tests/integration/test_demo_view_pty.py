"""`stepscope demo` under a pseudo-terminal of 80x40: log records go into the live view, never over it.

The demo runs as a subprocess on a pty, as a user runs it, with a trace collector that refuses every export (so
stepscope logs a warning while the view is live). The bytes it writes are checked as they are, and drawn with
the `pyte` terminal emulator, so the screen is the one a user would see.
"""

from __future__ import annotations

import fcntl
import os
import re
import select
import struct
import subprocess
import termios
import time

import pyte
import pytest

from tests.procs import free_port, stepscope_cmd

pytestmark = pytest.mark.slow

ROWS, COLUMNS = 40, 80
LOG_LINE = re.compile(rb"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (WARNING|ERROR|INFO)")
HIDE_CURSOR, SHOW_CURSOR = b"\x1b[?25l", b"\x1b[?25h"  # what rich's Live writes when it starts and when it ends


def run_on_a_pty(args: list[str], env: dict[str, str], timeout: float = 60.0) -> tuple[int, bytes]:
    """Run `args` with a pty of `ROWS`x`COLUMNS` as its terminal; returns its exit code and every byte it wrote."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", ROWS, COLUMNS, 0, 0))
    full = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "STEPSCOPE_", "OPENAI_", "COLUMNS"))}
    full.update(TERM="xterm-256color", **env)
    proc = subprocess.Popen(args, stdin=slave, stdout=slave, stderr=slave, env=full, close_fds=True)
    os.close(slave)
    out = bytearray()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # EIO: the child closed its side of the pty
                    break
                if not chunk:
                    break
                out += chunk
            elif proc.poll() is not None:
                break
        return proc.wait(10), bytes(out)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        os.close(master)


def screen_of(data: bytes) -> list[str]:
    """The 80x40 screen after `data` is drawn, as lines of text."""
    screen = pyte.Screen(COLUMNS, ROWS)
    pyte.ByteStream(screen).feed(data)
    return [line.rstrip() for line in screen.display]


def test_a_warning_goes_into_the_view_and_never_over_it() -> None:
    """With the collector refusing, the span export warning shows as the frame's last line while nothing is
    written over the view: no log line among the bytes written while it was live, a whole frame on the screen
    when it ends (the panel's top on the first row), and the warning on the screen once, in the footer."""
    refused = free_port()  # nothing listens there
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{refused}",
        "OTEL_EXPORTER_OTLP_TIMEOUT": "1",  # the SDK exporter gives up an export after a second
        "OTEL_BSP_SCHEDULE_DELAY": "100",  # the first export soon after the first spans
    }
    code, out = run_on_a_pty(stepscope_cmd("demo", "--duration", "5", "--listen", "127.0.0.1:0"), env)
    assert code == 0, out.decode(errors="replace")
    start, end = out.find(HIDE_CURSOR), out.rfind(SHOW_CURSOR)
    assert 0 <= start < end, out.decode(errors="replace")
    live = out[start:end]
    assert not LOG_LINE.search(live), LOG_LINE.search(live)
    frame = screen_of(out[:end])
    assert frame[0].startswith("╭") and "stepscope demo" in frame[0], "\n".join(frame)
    shown = [line for line in frame if "stepscope.delivery" in line]
    assert len(shown) == 1, "\n".join(frame)
    assert re.search(r"\d\d:\d\d:\d\d WARNING stepscope\.delivery: span export failing", shown[0]), shown
    assert shown[0] == [line for line in frame if line][-1]  # the frame's last line
    assert any(line.startswith("OPENAI_API_KEY=sk-sim stepscope inspect run_") for line in frame), "\n".join(frame)
    assert any(line.startswith("simulator: http://127.0.0.1:") for line in frame), "\n".join(frame)
