"""Terminal views: the `inspect` waterfall of one run, and its JSON form.

Both are built from the same rows, timed by the server's timestamps (1 s resolution), so what the terminal shows
is what the spans carry.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass

import httpx
from rich.console import Console
from rich.table import Table
from rich.text import Text

from stepscope.config import Config
from stepscope.errors import InvalidObject, SourceError
from stepscope.models import Run, RunRef, RunStep
from stepscope.source.auth import make_auth
from stepscope.source.client import AssistantsClient

BAR_WIDTH = 40
STATUS_STYLE = {
    "completed": "green",
    "failed": "red",
    "expired": "magenta",
    "cancelled": "yellow",
    "incomplete": "red",
    "in_progress": "cyan",
}


@dataclass(frozen=True, slots=True)
class Row:
    label: str
    kind: str  # run, step or tool
    status: str
    start: int
    end: int | None
    input_tokens: int | None = None
    output_tokens: int | None = None

    @property
    def duration(self) -> int | None:
        return None if self.end is None else max(0, self.end - self.start)


def waterfall_rows(run: Run, steps: list[RunStep], assistant_name: str | None = None) -> list[Row]:
    """The run, then each step in creation order followed by its tool calls (timed as their step)."""
    rows = [
        Row(
            f"invoke_agent {assistant_name or run.assistant_id}",
            "run",
            run.status,
            run.created_at,
            run.ended_at,
            run.usage.prompt_tokens if run.usage else None,
            run.usage.completion_tokens if run.usage else None,
        )
    ]
    for step in steps:
        usage = step.usage
        rows.append(
            Row(
                step.type,
                "step",
                step.status,
                step.created_at,
                step.ended_at,
                usage.prompt_tokens if usage else None,
                usage.completion_tokens if usage else None,
            )
        )
        rows.extend(
            Row(f"  execute_tool {call.name or call.type}", "tool", step.status, step.created_at, step.ended_at)
            for call in step.tool_calls
        )
    return rows


def _bar(row: Row, origin: int, span: int) -> Text:
    end = row.end if row.end is not None else origin + span
    left = round((row.start - origin) / span * BAR_WIDTH)
    width = max(1, round((end - row.start) / span * BAR_WIDTH))
    left = min(left, BAR_WIDTH - 1)
    width = min(width, BAR_WIDTH - left)
    style = STATUS_STYLE.get(row.status, "white")
    return Text(" " * left) + Text("█" * width, style=style) + Text(" " * (BAR_WIDTH - left - width))


def waterfall_table(rows: list[Row], title: str) -> Table:
    origin = rows[0].start
    last = max([r.end for r in rows if r.end is not None] + [r.start for r in rows])
    span = max(1, last - origin)
    table = Table(title=title, title_justify="left", expand=False)
    table.add_column("span", no_wrap=True)
    table.add_column("status")
    table.add_column("start", justify="right")
    table.add_column("duration", justify="right")
    table.add_column("tokens in/out", justify="right")
    table.add_column(f"0s {'timeline':^{BAR_WIDTH - 8}} {span}s", no_wrap=True)
    for row in rows:
        tokens = "" if row.input_tokens is None else f"{row.input_tokens}/{row.output_tokens}"
        duration = "…" if row.duration is None else f"{row.duration}s"
        table.add_row(
            row.label,
            Text(row.status, style=STATUS_STYLE.get(row.status, "white")),
            f"+{row.start - origin}s",
            duration,
            tokens,
            _bar(row, origin, span),
        )
    return table


def waterfall_json(run: Run, rows: list[Row]) -> str:
    return json.dumps(
        {
            "run_id": run.id,
            "thread_id": run.thread_id,
            "status": run.status,
            "spans": [
                {
                    "name": r.label.strip(),
                    "kind": r.kind,
                    "status": r.status,
                    "start": r.start,
                    "end": r.end,
                    "duration_s": r.duration,
                    "input_tokens": r.input_tokens,
                    "output_tokens": r.output_tokens,
                }
                for r in rows
            ],
        },
        indent=2,
    )


async def inspect_run(config: Config, thread_id: str, run_id: str, *, as_json: bool) -> int:
    """Fetch one run with its steps and print the waterfall (or JSON). Returns the exit code."""
    auth = make_auth(config.api.auth, key=str(config.api.api_key), token_file=config.api.token_file)
    async with httpx.AsyncClient(timeout=config.api.timeout) as http:
        client = AssistantsClient(
            http,
            base_url=config.api.base_url,
            auth=auth,
            api_version=config.api.api_version,
            organization=config.api.org_id,
            project=config.api.project_id,
            flavor=config.api.flavor,
        )
        try:
            run = await client.get_run(RunRef(thread_id, run_id))
            steps = [s async for s in client.list_steps(run.ref)]
            try:
                name = (await client.get_assistant(run.assistant_id)).name
            except (SourceError, InvalidObject):
                name = None
        except (SourceError, InvalidObject) as exc:
            print(f"stepscope: cannot read run {run_id}: {exc}", file=sys.stderr)
            return 1
    rows = waterfall_rows(run, steps, name)
    if as_json:
        print(waterfall_json(run, rows))
    else:
        # Pipes get a wide fixed width so the timeline is not squeezed into 80 columns.
        console = Console() if sys.stdout.isatty() else Console(width=160)
        console.print(waterfall_table(rows, f"run {run.id} on {run.thread_id}: {run.status}"))
    return 0
