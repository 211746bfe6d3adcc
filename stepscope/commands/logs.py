"""Logging set-up: text or JSON lines on stderr, and a filter that suppresses floods of the same message.

stepscope logs lifecycle events and state changes, never one line per step; the duplicate filter is the safety
net for a message that repeats anyway (for example the same failure on every poll of every run).

While a live view owns the terminal, a line written to it would be drawn over the view and leave stale rows:
`diverted(handler, streams)` takes every handler writing to the terminal off its logger for that time and puts
`handler` in its place (`LastWarning`: the newest warning, for the view to show in its frame).
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterator
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


class LastWarning(logging.Handler):
    """Keeps the newest record at WARNING or above as one line (`line`), and how many there were (`count`), for a
    live view to show in its frame. Records come from any thread; reading `line` is safe from any thread."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self._lock = threading.Lock()
        self.line: str | None = None
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string must not break the caller, nor write over the view
            message = str(record.msg)
        message = message.splitlines()[0] if message else ""
        at = time.strftime("%H:%M:%S", time.localtime(record.created))
        with self._lock:
            self.line = f"{at} {record.levelname} {record.name}: {message}"
            self.count += 1


def _writes_to(handler: logging.Handler, streams: Collection[object]) -> bool:
    return (
        isinstance(handler, logging.StreamHandler)
        and not isinstance(handler, logging.FileHandler)
        and any(handler.stream is stream for stream in streams)
    )


@contextlib.contextmanager
def diverted(handler: logging.Handler, streams: Collection[object]) -> Iterator[None]:
    """Inside: every handler that writes to one of `streams` (the terminal a view draws on) is off its logger, and
    `handler` is on the root logger and on each logger that lost one; on leaving, the reverse.

    Covers the root's handler (`setup_logging`) and libraries' own ones (uvicorn's, which do not propagate); the
    root always gets `handler`, so logging's last resort (stderr, when no handler is found) never writes either.
    Handlers added while inside are left alone.
    """
    root = logging.getLogger()
    # A copy first: another thread may create a logger meanwhile (the copy runs in C, under the GIL).
    others = [v for v in list(logging.Logger.manager.loggerDict.values()) if isinstance(v, logging.Logger)]
    taken = {logger: [h for h in logger.handlers if _writes_to(h, streams)] for logger in (root, *others)}
    taken = {logger: found for logger, found in taken.items() if found or logger is root}
    for logger, found in taken.items():
        for old in found:
            logger.removeHandler(old)
        logger.addHandler(handler)
    try:
        yield
    finally:
        for logger, found in taken.items():
            logger.removeHandler(handler)
            for old in found:
                logger.addHandler(old)
