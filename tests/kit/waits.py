"""The one way tests wait for something outside their control (a subprocess, a server, a thread, a scrape): poll a
predicate until it holds or a deadline passes. In-process async tests use `stepscope.testing.eventually`, the same
loop on the event loop."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable

import httpx


def holds_within(
    predicate: Callable[[], object],
    timeout: float,
    *,
    every: float = 0.1,
    alive: Callable[[], str | None] = lambda: None,
    ignoring: tuple[type[Exception], ...] = (httpx.HTTPError,),
) -> bool:
    """Whether `predicate` held within `timeout` seconds, polled every `every` seconds. An exception of `ignoring`
    while polling counts as "not yet" (a server still starting); `alive()` returning a text stops the wait early
    with `AssertionError(text)` (a process that exited meanwhile)."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(*ignoring):
            if predicate():
                return True
        dead = alive()
        if dead is not None:
            raise AssertionError(dead)
        if time.monotonic() > deadline:
            return False
        time.sleep(every)
