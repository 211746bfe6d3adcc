"""Terminal views: the waterfall of one unit of work (`inspect`, and the demo's live view), and its JSON form.

All are built from the same rows, and the rows from the span specs the protocol's mapping exports (names, statuses,
times, token counts), so what the terminal shows is what the spans carry, whatever the protocol. A row's status
is its span's `*.status` attribute (every protocol puts its unit's and records' API status there), or its parent's
when it has none (a tool call's); a status the API uses for work still going (`GOING`) draws the row without end.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from rich import box
from rich.console import Console, ConsoleOptions, RenderableType, RenderResult
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from stepscope.core.records import SpanSpec
from stepscope.mapping import attributes as a
from stepscope.mapping.spans import NS

GOING = frozenset({"queued", "in_progress", "requires_action", "cancelling", "waiting", "pending"})
"""Statuses of work still going, in the APIs' words: such a row has no end yet."""
KINDS = ("unit", "step", "tool")
"""A row's kind by its depth in the span tree: the unit's span, its records' spans, their children."""
BAR_WIDTH = 40
MIN_BAR_WIDTH = 10
FULL_TABLE_WIDTH = 120  # narrower consoles get the compact waterfall: the full one would squeeze out the bars
LABEL_WIDTH = 32  # the compact table's span column: room for "  execute_tool " and a tool name
DETAIL_LABEL_WIDTH = 26  # ... and with start and tokens too, so the timeline keeps a dozen cells in 80 columns
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
    kind: str  # one of KINDS
    status: str
    start: int
    end: int | None
    input_tokens: int | None = None
    output_tokens: int | None = None

    @property
    def duration(self) -> int | None:
        return None if self.end is None else max(0, self.end - self.start)


def span_status(span: SpanSpec) -> str | None:
    """The API status a span carries in its `*.status` attribute, if any."""
    for key, value in span.attributes.items():
        if key.endswith(".status") and isinstance(value, str):
            return value
    return None


def waterfall_rows(spans: Sequence[SpanSpec]) -> list[Row]:
    """One row per span in tree order: the unit's span first (the first span without a parent among `spans`, else
    the first span), then each of its children in the given order, each followed by its own children, indented.

    Times are whole seconds; a row whose status is in `GOING` has no end.
    """
    if not spans:
        return []
    ids = {s.span_id for s in spans}
    root = next((s for s in spans if s.parent_span_id not in ids), spans[0])
    children: dict[int, list[SpanSpec]] = {}
    for span in spans:
        if span is not root and span.parent_span_id is not None:
            children.setdefault(span.parent_span_id, []).append(span)
    rows: list[Row] = []

    def visit(span: SpanSpec, depth: int, inherited: str) -> None:
        status = span_status(span) or inherited
        rows.append(_row(span, "  " * max(0, depth - 1) + span.name, KINDS[min(depth, 2)], status))
        for child in children.get(span.span_id, []):
            visit(child, depth + 1, status)

    visit(root, 0, "")
    return rows


def _row(spec: SpanSpec, label: str, kind: str, status: str) -> Row:
    return Row(
        label,
        kind,
        status,
        spec.start_ns // NS,
        None if status in GOING else spec.end_ns // NS,
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


def waterfall_table(
    rows: list[Row], title: str, *, compact: bool = False, details: bool | None = None, limit: int | None = None
) -> Table:
    """The waterfall of `rows` (first row: the unit), one line per row and never wider than the console.

    The timeline column takes what the other columns leave, up to `BAR_WIDTH` cells (all of it when `compact`).
    `compact` is the form for 80 columns: light borders, the span column cut at a width. `details` (the default
    unless `compact`) adds each row's start offset and tokens; the live view leaves them out, `inspect` keeps them
    in any width. With `limit`, at most that many lines are drawn, the last one saying how many rows were left out;
    the time axis always spans the whole unit.
    """
    details = not compact if details is None else details
    origin = rows[0].start
    last = max([r.end for r in rows if r.end is not None] + [r.start for r in rows])
    span = max(1, last - origin)
    shown = rows
    if limit is not None and len(rows) > limit:
        shown = rows[: max(0, limit - 1)]
    if compact:
        # With details, one space between columns (the light box's divider) leaves the timeline its cells.
        table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, show_edge=False, collapse_padding=True,
                      expand=True, padding=(0, 0) if details else (0, 1))  # fmt: skip
    else:
        table = Table(title=title, title_justify="left", expand=False)
    label_width = (DETAIL_LABEL_WIDTH if details else LABEL_WIDTH) if compact else None
    table.add_column("span", no_wrap=True, overflow="ellipsis", max_width=label_width)
    table.add_column("status", no_wrap=True)
    if details:
        table.add_column("start", justify="right", no_wrap=True)
    table.add_column("took" if compact and details else "duration", justify="right", no_wrap=True)
    if details:
        table.add_column("tokens in/out", justify="right", no_wrap=True)
    table.add_column(_Axis(span), ratio=1 if compact else None)
    for row in shown:
        cells: list[RenderableType] = [row.label, Text(row.status, style=STATUS_STYLE.get(row.status, "white"))]
        if details:
            cells.append(f"+{row.start - origin}s")
        cells.append("…" if row.duration is None else f"{row.duration}s")
        if details:
            cells.append("" if row.input_tokens is None else f"{row.input_tokens}/{row.output_tokens}")
        cells.append(_Bar(row, origin, span))
        table.add_row(*cells)
    if len(shown) < len(rows):
        table.add_row(Text(f"… {len(rows) - len(shown)} more", style="dim"))
    return table


def waterfall_json(unit_id: str, container_id: str | None, rows: list[Row]) -> str:
    return json.dumps(
        {
            "unit_id": unit_id,
            "container_id": container_id,
            "status": rows[0].status if rows else None,
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
