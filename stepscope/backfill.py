"""`stepscope backfill`: export the finished runs of some threads once, then exit.

Runs still active are left to `stepscope serve`; runs the checkpoint store already knows are skipped, so a backfill
and a sidecar sharing a store never export a run twice.
"""

from __future__ import annotations

import asyncio
import logging
import time

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from stepscope.app import Service
from stepscope.config import Config
from stepscope.errors import InvalidObject, SourceError

log = logging.getLogger("stepscope.backfill")


async def run_backfill(config: Config, *, service: Service | None = None) -> int:
    """Track every finished, unknown run of the configured threads within the lookback; wait until exported."""
    service = service or Service(config, serve_http=False, discover=False)
    await service.start()
    try:
        horizon = time.time() - config.poll.lookback
        total = 0
        for thread_id in config.poll.threads:
            try:
                async for run in service.source.list_runs(thread_id):
                    if run.created_at < horizon:
                        break
                    if run.is_terminal and not service.store.known_runs([run.id]):
                        total += service.poller.track(run.ref)
            except (SourceError, InvalidObject) as exc:
                log.error("cannot list runs of %s: %s", thread_id, exc)
                return 1
        with Progress(
            TextColumn("backfilling"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), transient=False
        ) as progress:
            task = progress.add_task("runs", total=total)
            while service.poller.tracked_count:
                progress.update(task, completed=total - service.poller.tracked_count)
                await asyncio.sleep(0.2)
            progress.update(task, completed=total)
        print(f"backfilled {total} run(s) from {len(config.poll.threads)} thread(s)")
        return 0
    finally:
        await service.shutdown()
