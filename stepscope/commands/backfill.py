"""`stepscope backfill`: export the finished runs of some threads once, then exit.

Runs still active are left to `stepscope serve`; runs the checkpoint store already knows are skipped, so a backfill
and a sidecar sharing a store never export a run twice. It never waits forever: reading stops when no run made
progress for `STALL_S`, delivery when the backend refuses or `DELIVERY_S` passed. Spans not delivered stay in the
backlog (the next `serve` or `backfill` on the same store sends them) and the exit code is 1.

SIGINT or SIGTERM stops it where it is: the service shuts down as `serve` does (what was committed stays committed,
spans not delivered stay in the backlog), the summary says how far it got, and the exit code is 130. A later
backfill on the same store skips what this one committed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TypeVar

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from stepscope.commands.sidecar import Sidecar
from stepscope.commands.wiring import resolve
from stepscope.config import Config
from stepscope.core.pipeline import Committed
from stepscope.errors import ConfigError, InvalidObject, SourceError

log = logging.getLogger("stepscope.commands.backfill")

STALL_S = 60.0
DELIVERY_S = 30.0
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report a command stopped by Ctrl-C
T = TypeVar("T")


@dataclass(slots=True)
class _Tally:
    """What this backfill committed, as the pipeline told it (a commit listener)."""

    units: int = 0
    spans: int = 0

    def __call__(self, committed: Committed) -> None:
        self.units += int(committed.finished)
        self.spans += len(committed.telemetry.spans) + len(committed.telemetry.relayed)


async def _unless(stop: asyncio.Event, work: Awaitable[T]) -> T | None:
    """`work`'s result, or None (and `work` cancelled) once `stop` is set first."""
    task, stopped = asyncio.ensure_future(work), asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
    if task.done():
        return task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return None


async def run_backfill(config: Config, *, service: Sidecar | None = None) -> int:
    """Track every finished, unknown run of the configured threads within the lookback; wait until exported. Returns
    the exit code: 0 all delivered, 1 something kept or unread, 130 interrupted (SIGINT, SIGTERM)."""
    if not resolve(config).backfills:
        raise ConfigError([f"STEPSCOPE_PROTOCOL (api.protocol): {config.api.protocol} has no backfill; it finds its "
                           "history by listing when `stepscope serve` starts (STEPSCOPE_LOOKBACK)"])  # fmt: skip
    service = service or Sidecar(config, serve_http=False, discover=False, check_api=False)
    parts = service.parts
    backfill = parts.finders.backfill
    assert backfill is not None  # the factory said it backfills
    unit = parts.protocol.nouns[0]
    tally = _Tally()
    parts.pipeline.add_listener(tally)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    total: int | None = None
    waiting = 0
    try:
        await service.start()
        waiting = parts.delivery.pending  # spans an earlier process left, delivered first
        try:
            total = await _unless(stop, backfill(config.poll.threads))
        except (SourceError, InvalidObject) as exc:
            log.error("cannot list %ss: %s", unit, exc)
            return 1
        if total is not None:
            await _unless(stop, _read(service, total))
        if not stop.is_set():
            await _unless(stop, _deliver(service))
    finally:
        await service.shutdown()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    unread = parts.poller.tracked_count
    kept = service.spans_kept
    found = tally.units + unread
    threads = len(config.poll.threads)
    if not parts.traces:
        spans = "traces off"
    elif not kept:
        spans = "all spans delivered"
    else:
        delivered = max(0, waiting + tally.spans - kept)
        spans = f"{delivered} span(s) delivered, {kept} kept in the backlog for the next start"
    if stop.is_set():
        so_far = "" if total is not None else " so far (the listing did not end)"
        print(f"interrupted: backfilled {tally.units} of {found} {unit}(s) found{so_far} in {threads} thread(s); "
              f"{spans}")  # fmt: skip
        print(f"run backfill again to finish: {unit}s already backfilled are skipped")
        return EXIT_INTERRUPTED
    assert total is not None  # only an interruption leaves the listing unfinished
    print(f"backfilled {total - unread} of {total} {unit}(s) from {threads} thread(s); {spans}")
    if unread:
        print(f"{unread} {unit}(s) could not be read (see the log); run backfill again to retry them")
    return 1 if kept or unread else 0


async def _read(service: Sidecar, total: int) -> None:
    """Until every tracked unit was read, or none made progress for `STALL_S`, with a progress bar."""
    poller = service.parts.poller
    with Progress(
        TextColumn("backfilling"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), transient=False
    ) as progress:
        task = progress.add_task("runs", total=total)
        left, moved = poller.tracked_count, time.monotonic()
        while left and time.monotonic() - moved < STALL_S:
            await asyncio.sleep(0.2)
            if poller.tracked_count != left:
                left, moved = poller.tracked_count, time.monotonic()
            progress.update(task, completed=total - left)


async def _deliver(service: Sidecar) -> None:
    """Until the backlog is delivered, the backend refuses, or `DELIVERY_S` passed."""
    deadline = time.monotonic() + DELIVERY_S
    delivery = service.parts.delivery
    while delivery.pending and delivery.state != "failing" and time.monotonic() < deadline:  # noqa: ASYNC110 - a thread's counter, no event to await
        await asyncio.sleep(0.1)
