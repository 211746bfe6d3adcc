"""Logging set-up: text or JSON lines on stderr, and a filter that suppresses floods of the same message.

stepscope logs lifecycle events and state changes, never one line per step; the duplicate filter is the safety
net for a message that repeats anyway (for example the same failure on every poll of every run).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import TextIO

_RESERVED = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class DuplicateFilter(logging.Filter):
    """Lets at most `burst` records of one message template through per `window_s` seconds.

    Keyed on (logger, level, template), not on the formatted text, so "refusing %d spans" with ever-changing numbers
    is still one flood. When a window with suppressed records ends, the next record of that template says how many
    were dropped.
    """

    def __init__(
        self,
        window_s: float = 60.0,
        *,
        burst: int = 5,
        clock: Callable[[], float] = time.monotonic,
        size: int = 512,
    ) -> None:
        super().__init__()
        self._window = window_s
        self._burst = burst
        self._clock = clock
        self._size = size
        self._seen: OrderedDict[tuple[str, int, str], list[float]] = OrderedDict()  # [window start, count]

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info:
            return True  # tracebacks are rare and each one matters
        key = (record.name, record.levelno, str(record.msg))
        now = self._clock()
        state = self._seen.get(key)
        if state is None or now - state[0] >= self._window:
            suppressed = int(state[1]) - self._burst if state is not None else 0
            if suppressed > 0:
                record.msg = f"{record.msg} ({suppressed} similar message(s) suppressed)"
            self._seen[key] = [now, 1.0]
            self._seen.move_to_end(key)
            while len(self._seen) > self._size:
                self._seen.popitem(last=False)
            return True
        state[1] += 1
        return state[1] <= self._burst


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, extra fields, exception text."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        out.update({k: v for k, v in vars(record).items() if k not in _RESERVED})
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def setup_logging(level: str = "INFO", fmt: str = "text", stream: TextIO | None = None) -> None:
    """Configure the root logger once for the process (idempotent: replaces handlers it installed)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.set_name("stepscope")
    formatter: logging.Formatter
    if fmt == "json":
        formatter = JsonFormatter()
        formatter.converter = time.gmtime
    else:
        formatter = logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    handler.setFormatter(formatter)
    handler.addFilter(DuplicateFilter())
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == "stepscope"]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # Library chatter that would otherwise log per request.
    for noisy in ("httpx", "httpcore", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
