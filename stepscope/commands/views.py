"""Terminal views: the waterfall of one run (`inspect`, and the demo's live view), and its JSON form.

All are built from the same rows, and the rows from the span specs the mapping exports (names, statuses, times at
the server's 1 s resolution, token counts), so what the terminal shows is what the spans carry.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass

from rich import box
from rich.console import Console, ConsoleOptions, RenderableType, RenderResult
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from stepscope.client.connect import connect
from stepscope.config import Config
from stepscope.core.records import SpanSpec, UnitRef
from stepscope.errors import InvalidObject, SourceError
from stepscope.mapping import attributes as a
from stepscope.mapping.attributes import MappingOptions
from stepscope.protocols.assistants.records import Run, RunStep
from stepscope.protocols.assistants.spans import STEP_SPAN_PREFIX, run_span, step_spans

_NS = 1_000_000_000
BAR_WIDTH = 40
MIN_BAR_WIDTH = 10
FULL_TABLE_WIDTH = 120  # narrower consoles get the compact waterfall: the full one would squeeze out the bars
LABEL_WIDTH = 32  # the compact table's span column: room for "  execute_tool " and a tool name
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


def waterfall_rows(
    run: Run, steps: list[RunStep], assistant_name: str | None = None, *, options: MappingOptions | None = None
) -> list[Row]:
    """The run, then each step in creation order followed by its tool calls: one row per span the mapping makes
    of them (`run_span`, `step_spans`), so the rows cannot disagree with what is exported.

    A row takes its span's name (a step's without the `run_step ` prefix; a tool's indented), status attribute
    (a tool's is its step's), start, end and token counts, in whole seconds. A run or step still going has no end.
    """
    options = options or MappingOptions()
    spec = run_span(run, assistant_name=assistant_name, options=options, partial=True)
    rows = [_row(spec, spec.name, "run", str(spec.attributes[a.OPENAI_RUN_STATUS]), run.ended_at is None)]
    for step in steps:
        step_spec, *tool_specs = step_spans(run, step, options=options)
        status = str(step_spec.attributes[a.OPENAI_RUN_STEP_STATUS])
        going = step.ended_at is None
        rows.append(_row(step_spec, step_spec.name.removeprefix(STEP_SPAN_PREFIX), "step", status, going))
        rows.extend(_row(tool, f"  {tool.name}", "tool", status, going) for tool in tool_specs)
    return rows


def _row(spec: SpanSpec, label: str, kind: str, status: str, going: bool) -> Row:
    return Row(
        label,
        kind,
        status,
        spec.start_ns // _NS,
        None if going else spec.end_ns // _NS,
        _tokens(spec, a.GEN_AI_USAGE_INPUT_TOKENS),
        _tokens(spec, a.GEN_AI_USAGE_OUTPUT_TOKENS),
    )


def _tokens(spec: SpanSpec, key: str) -> int | None:
    value = spec.attributes.get(key)
    return value if isinstance(value, int) else None


def _bar(row: Row, origin: int, span: int, width: int) -> Text:
    end = row.end if row.end is not None else origin + span
    left = min(round((row.start - origin) / span * width), width - 1)
    size = min(max(1, round((end - row.start) / span * width)), width - left)
    style = STATUS_STYLE.get(row.status, "white")
    return Text(" " * left) + Text("█" * size, style=style) + Text(" " * (width - left - size))


class _Bar:
    """A row's bar on the run's time axis, as wide as its column: up to `BAR_WIDTH`, less in a narrow terminal."""

    __slots__ = ("_origin", "_row", "_span")

    def __init__(self, row: Row, origin: int, span: int) -> None:
        self._row, self._origin, self._span = row, origin, span

    def __rich_measure__(self, console: Console, options: ConsoleOptions) -> Measurement:
        return Measurement(MIN_BAR_WIDTH, BAR_WIDTH).clamp(max_width=options.max_width)

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield _bar(self._row, self._origin, self._span, max(1, options.max_width))


class _Axis:
    """The timeline column's header: `0s`, `timeline` and the run's length, spread over the column's width."""

    __slots__ = ("_span",)

    def __init__(self, span: int) -> None:
        self._span = span

    def __rich_measure__(self, console: Console, options: ConsoleOptions) -> Measurement:
        return Measurement(MIN_BAR_WIDTH, BAR_WIDTH).clamp(max_width=options.max_width)

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        width, end = options.max_width, f"{self._span}s"
        inner = width - 2 - len(end)
        text = f"0s{'timeline':^{inner}}{end}" if inner >= len("timeline") + 2 else f"0-{end}"
        yield Text(text, no_wrap=True, overflow="crop")


def waterfall_table(rows: list[Row], title: str, *, compact: bool = False, limit: int | None = None) -> Table:
    """The waterfall of `rows` (first row: the run), one line per row and never wider than the console.

    The timeline column takes what the other columns leave, up to `BAR_WIDTH` cells (all of it when `compact`).
    `compact` is the live view's form: light borders and only span, status, duration and timeline. With `limit`,
    at most that many lines are drawn, the last one saying how many rows were left out; the time axis always
    spans the whole run.
    """
    origin = rows[0].start
    last = max([r.end for r in rows if r.end is not None] + [r.start for r in rows])
    span = max(1, last - origin)
    shown = rows
    if limit is not None and len(rows) > limit:
        shown = rows[: max(0, limit - 1)]
    if compact:
        table = Table(
            title=title, title_justify="left", box=box.SIMPLE_HEAD, show_edge=False, collapse_padding=True, expand=True
        )
    else:
        table = Table(title=title, title_justify="left", expand=False)
    table.add_column("span", no_wrap=True, overflow="ellipsis", max_width=LABEL_WIDTH if compact else None)
    table.add_column("status", no_wrap=True)
    if not compact:
        table.add_column("start", justify="right", no_wrap=True)
    table.add_column("duration", justify="right", no_wrap=True)
    if not compact:
        table.add_column("tokens in/out", justify="right", no_wrap=True)
    table.add_column(_Axis(span), ratio=1 if compact else None)
    for row in shown:
        cells: list[RenderableType] = [row.label, Text(row.status, style=STATUS_STYLE.get(row.status, "white"))]
        if not compact:
            cells.append(f"+{row.start - origin}s")
        cells.append("…" if row.duration is None else f"{row.duration}s")
        if not compact:
            cells.append("" if row.input_tokens is None else f"{row.input_tokens}/{row.output_tokens}")
        cells.append(_Bar(row, origin, span))
        table.add_row(*cells)
    if len(shown) < len(rows):
        table.add_row(Text(f"… {len(rows) - len(shown)} more", style="dim"))
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
    api = connect(config)
    client = api.client
    try:
        run = await client.get_run(UnitRef(thread_id, run_id))
        steps = [s async for s in client.list_steps(run.ref)]
        try:
            name = (await client.get_assistant(run.assistant_id)).name
        except (SourceError, InvalidObject):
            name = None
    except (SourceError, InvalidObject) as exc:
        print(f"stepscope: cannot read run {run_id}: {exc}", file=sys.stderr)
        return 1
    finally:
        await api.aclose()
    rows = waterfall_rows(run, steps, name)
    if as_json:
        print(waterfall_json(run, rows))
    else:
        # Pipes get a wide fixed width so the timeline is not squeezed into 80 columns; a narrow terminal gets the
        # compact table, whose timeline still has room.
        console = Console() if sys.stdout.isatty() else Console(width=160)
        title = f"run {run.id} on {run.thread_id}: {run.status}"
        console.print(waterfall_table(rows, title, compact=console.width < FULL_TABLE_WIDTH))
    return 0
