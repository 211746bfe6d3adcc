"""`stepscope backfill`: export the finished runs of some threads once, then exit.

Runs still active are left to `stepscope serve`; runs the checkpoint store already knows are skipped, so a backfill
and a sidecar sharing a store never export a run twice. It never waits forever: reading stops when no run made
progress for `STALL_S`, delivery when the backend refuses or `DELIVERY_S` passed. Spans not delivered stay in the
backlog (the next `serve` or `backfill` on the same store sends them) and the exit code is 1.
"""

from __future__ import annotations

import asyncio
import logging
import time

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from stepscope.commands.sidecar import Sidecar
from stepscope.commands.wiring import resolve
from stepscope.config import Config
from stepscope.errors import ConfigError, InvalidObject, SourceError

log = logging.getLogger("stepscope.commands.backfill")

STALL_S = 60.0
DELIVERY_S = 30.0


async def run_backfill(config: Config, *, service: Sidecar | None = None) -> int:
    """Track every finished, unknown run of the configured threads within the lookback; wait until exported."""
    if not resolve(config).backfills:
        raise ConfigError([f"STEPSCOPE_PROTOCOL (api.protocol): {config.api.protocol} has no backfill; it finds its "
                           "history by listing when `stepscope serve` starts (STEPSCOPE_LOOKBACK)"])  # fmt: skip
    service = service or Sidecar(config, serve_http=False, discover=False, check_api=False)
    parts = service.parts
    backfill = parts.finders.backfill
    assert backfill is not None  # the factory said it backfills
    await service.start()
    try:
        try:
            total = await backfill(config.poll.threads)
        except (SourceError, InvalidObject) as exc:
            log.error("cannot list runs: %s", exc)
            return 1
        with Progress(
            TextColumn("backfilling"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), transient=False
        ) as progress:
            task = progress.add_task("runs", total=total)
            left, moved = parts.poller.tracked_count, time.monotonic()
            while left and time.monotonic() - moved < STALL_S:
                await asyncio.sleep(0.2)
                if parts.poller.tracked_count != left:
                    left, moved = parts.poller.tracked_count, time.monotonic()
                progress.update(task, completed=total - left)
        deadline = time.monotonic() + DELIVERY_S
        delivery = parts.delivery
        while delivery.pending and delivery.state != "failing" and time.monotonic() < deadline:  # noqa: ASYNC110 - a thread's counter, no event to await
            await asyncio.sleep(0.1)
    finally:
        await service.shutdown()
    unread = parts.poller.tracked_count
    kept = service.spans_kept
    spans = "all spans delivered" if not kept else f"{kept} span(s) kept in the backlog for the next start"
    print(f"backfilled {total - unread} of {total} run(s) from {len(config.poll.threads)} thread(s); {spans}")
    if unread:
        print(f"{unread} run(s) could not be read (see the log); run backfill again to retry them")
    return 1 if kept or unread else 0
