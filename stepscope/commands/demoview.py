"""The demo's live view: the frame `stepscope demo` draws, fed by the pipeline's commit listener.

`DemoView` is the listener: it hears every committed part as one protocol-neutral `Committed` (the telemetry of
one record, or of a finished unit) and renders an 80-column frame of units in flight and finished, recent records
(the latest ones that did not complete keep rows), and the waterfall of the most recently finished unit;
`plain_line()` is `--no-view`'s periodic status line. It knows no protocol: what it shows comes from the span
specs and metric observations the protocol's mapping exported, and the words for units and records ("run" and
"step", "turn" and "item") come from its caller. It reads the service only through a `Tracking` callable, so it
shows what the exporters were given, not what the simulator did.

What it reads from a `Committed`:
- a record (`finished` False): `spans[0]` is the record's span, the spans whose parent it is are its children
  (tool calls); its `stepscope_run_steps_total` observations count records by `status` (and name its type,
  `step_type`), its `stepscope_tokens_total` input and output observations are its tokens;
- a finished unit (`finished` True): `spans[0]` is the unit's span; its `stepscope_runs_total` observation counts
  the unit by `status`; any run-steps and token observations it carries count as records and tokens too, and any
  further spans join its waterfall (a protocol whose records have no telemetry of their own commits them with their
  unit: Responses API tool calls timed by the proxy).
A status is a span's `*.status` attribute (else the observation's `status` label), a duration is the span's end
minus its start in whole seconds, an error is the span's `error_type`.

Below the waterfall the frame shows the `stepscope inspect` command for the last finished unit against the
simulated API, whole (ids are never cut there; it continues over lines ending in a backslash), then where the
API, metrics and traces are, then the newest log warning, if any: while the view is live, log records come here
instead of being written over the frame (`commands.logs.diverted`).
"""

from __future__ import annotations

import shlex
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from rich import box
from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from stepscope.commands.logs import LastWarning
from stepscope.commands.views import GOING, STATUS_STYLE, span_status, waterfall_rows, waterfall_table
from stepscope.contract import metricdefs as md
from stepscope.core.pipeline import Committed
from stepscope.core.records import Observation, SpanSpec, UnitRef
from stepscope.mapping import attributes as a
from stepscope.mapping.spans import NS

RECENT = 12  # rows of the recent list when the terminal is tall enough
MIN_RECENT = 4  # ... and when it is not
RESERVED = 4  # rows kept for the latest records that did not complete (at most half the list)
WATERFALL_ROWS = 14  # lines of the last unit's waterfall, at most
FIXED_LINES = 12  # summary panel 5, two table titles and headers 6, and one spare for the cursor (plus the footer)
WIDTH = 80  # the frame's width: titles longer than this are shortened, never wrapped
PANEL_EDGES = 4  # the summary panel's borders and padding
WINDOW_S = 10.0  # tokens per second are averaged over this window
PLAIN_EVERY_S = 5.0  # --no-view prints a status line this often
KEPT_RUNS = 2048  # units whose records are kept for the waterfall; the oldest are forgotten past this
COMPLETED = "completed"
GAP = "   "  # between the footer's items on one line


@dataclass(frozen=True, slots=True, kw_only=True)
class Api:
    """The simulated API the demo reads, for the inspect command: its base URL and key, the protocol
    `STEPSCOPE_PROTOCOL` names, and what the protocol calls a unit's container (None: units are read by id)."""

    url: str
    key: str
    protocol: str
    container: str | None = None


@dataclass(frozen=True, slots=True)
class Tracking:
    """What the view reads from the service on each frame."""

    in_flight: int
    by_status: Mapping[str, int]
    pending_spans: int


@dataclass(frozen=True, slots=True)
class Seen:
    """One entry of the recent list: a committed record, or a finished unit whose commits carried no record
    telemetry (`unit` True). `seq` orders and identifies entries; `duration` is None for work still going."""

    seq: int
    at: float
    unit_id: str
    label: str
    status: str
    duration: int | None
    tokens: int
    unit: bool = False


@dataclass(slots=True)
class _Waterfall:
    """The most recently finished unit: its span, the span groups (record span first) of its records, and how many
    records it had (its run-steps observations, whether committed before or with the finish)."""

    ref: UnitRef
    span: SpanSpec
    groups: list[Sequence[SpanSpec]] = field(default_factory=list)
    records: int = 0


@dataclass(slots=True)
class _Kept:
    """A unit still going, as far as its records were heard."""

    groups: list[Sequence[SpanSpec]] = field(default_factory=list)
    records: int = 0


def _sum(observations: Iterable[Observation], metric: str) -> int:
    return int(sum(o.value for o in observations if o.metric == metric))


def _tokens(observations: Iterable[Observation]) -> int:
    """Input plus output tokens: the cached and reasoning breakdowns are parts of them."""
    return int(sum(o.value for o in observations
                   if o.metric == md.TOKENS.name and o.labels.get(a.LABEL_TOKEN_TYPE) in a.TOKEN_TYPES))  # fmt: skip


def _statuses(observations: Iterable[Observation], metric: str) -> list[tuple[str, int]]:
    """`(status label, count)` of each observation of `metric`; a missing label reads `_unknown`."""
    return [(o.labels.get(a.LABEL_STATUS, a.UNKNOWN), int(o.value)) for o in observations if o.metric == metric]


def _duration(span: SpanSpec, status: str) -> int | None:
    """Whole seconds from the span's start to its end, as the waterfall counts them; None while `status` is going."""
    return None if status in GOING else max(0, span.end_ns // NS - span.start_ns // NS)


def _with_error(span: SpanSpec, status: str, label: str) -> str:
    """`server_error in get_weather` for a span with an error (the error first, where the column cannot cut it
    off); the label alone without one, or when the error only repeats the status (`expired`)."""
    error = span.error_type
    return f"{error} in {label}" if error and error != status else label


def record_label(spans: Sequence[SpanSpec], status: str, record_type: str | None = None) -> str:
    """A record's label: the tools its child spans call (`gen_ai.tool.name`, else the child span's name); without
    children its type (`record_type`, the `step_type` label its observation carries), else the record span's name;
    with an error, `"{error_type} in {label}"`."""
    record = spans[0]
    tools = [
        str(s.attributes.get(a.GEN_AI_TOOL_NAME) or s.name) for s in spans[1:] if s.parent_span_id == record.span_id
    ]
    return _with_error(record, status, ", ".join(tools) or record_type or record.name)


def unit_label(span: SpanSpec, status: str) -> str:
    """A unit's label: the agent its span invokes (`gen_ai.agent.name`, else `gen_ai.agent.id`), else the span's
    name; with an error, `"{error_type} in {label}"`."""
    agent = span.attributes.get(a.GEN_AI_AGENT_NAME) or span.attributes.get(a.GEN_AI_AGENT_ID)
    return _with_error(span, status, str(agent) if agent else span.name)


def _ago(seconds: float) -> str:
    """At most three characters: `42s`, `17m`, `3h`."""
    if seconds < 60:
        return f"{seconds:.0f}s"
    return f"{seconds // 60:.0f}m" if seconds < 6000 else f"{seconds // 3600:.0f}h"


def _fit(prefix: str, unit_id: str, suffix: str) -> str:
    """`prefix + unit_id + suffix`, the id cut short with `…` when the whole would pass `WIDTH` columns (the inspect
    command below the waterfall carries the id whole, to copy)."""
    room = WIDTH - len(prefix) - len(suffix)
    if len(unit_id) > room:
        unit_id = unit_id[: max(1, room - 1)] + "…"
    return f"{prefix}{unit_id}{suffix}"


def inspect_command(ref: UnitRef, api: Api) -> list[str]:
    """The `stepscope inspect` command that reads `ref`'s unit from `api`, as groups of words a line must not
    split (a flag and its value)."""
    flag = f"--{api.container}" if api.container else None
    groups = [
        [f"OPENAI_API_KEY={api.key}"],
        ["stepscope", "inspect"],
        [ref.unit_id],
        *([[flag, ref.container_id]] if flag is not None else []),
        ["--protocol", api.protocol],
        ["--base-url", api.url],
    ]
    return [" ".join(shlex.quote(word) for word in group) for group in groups]


def shell_lines(words: Sequence[str], width: int = WIDTH, indent: str = "  ") -> list[str]:
    """`words` as one shell command over lines of at most `width` columns, never splitting a word: every line but
    the last ends in a backslash, every line but the first is indented (a word longer than a line gets a line
    alone, and overflows it)."""
    lines: list[str] = []
    line = ""
    for word in words:
        if line and len(line) + 1 + len(word) + 2 > width:
            lines.append(line + " \\")
            line = indent + word
        else:
            line = f"{line} {word}" if line else word
    return [*lines, line] if line else lines


def packed(items: Sequence[str], width: int = WIDTH) -> list[str]:
    """`items` on as few lines as fit `width` columns, in order, `GAP` between two on a line."""
    lines: list[str] = []
    for item in items:
        if lines and len(lines[-1]) + len(GAP) + len(item) <= width:
            lines[-1] += GAP + item
        else:
            lines.append(item)
    return lines


class DemoView:
    """A pipeline commit listener that keeps what the live view and the plain lines show, and renders them.

    Called with each `Committed` on the event loop; rendering happens on the same thread. `nouns` are what the
    protocol calls its units and records (`("run", "step")`, `("turn", "item")`): the view's only words for them.
    `api`, the simulated API, is shown in the footer with the inspect command for the last finished unit;
    `proxy_url`, when the application goes through the service's proxy, beside it; `warnings`, the log records
    diverted from the terminal, as their newest line.
    """

    def __init__(
        self,
        tracking: Callable[[], Tracking],
        *,
        metrics_url: str,
        traces: str,
        nouns: tuple[str, str],
        api: Api | None = None,
        proxy_url: str | None = None,
        warnings: LastWarning | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._tracking = tracking
        self._api = api
        self._warnings = warnings
        self._unit, self._record = nouns
        self._metrics_url = metrics_url
        self._proxy_url = proxy_url
        self._traces = traces
        self._clock = clock
        self._seq = 0
        self.recent: deque[Seen] = deque(maxlen=RECENT)
        self.not_completed: deque[Seen] = deque(maxlen=RESERVED)
        self._tokens: deque[tuple[float, int]] = deque()
        self._kept: OrderedDict[UnitRef, _Kept] = OrderedDict()
        self._last: _Waterfall | None = None
        self.units: dict[str, int] = {}
        self.records = 0
        self.failed_records = 0
        self.tokens = 0

    def __call__(self, committed: Committed) -> None:
        """Take in one committed part (a `CommitListener`): counts, a recent-list entry, waterfall spans. Cheap: no
        rendering and no I/O here."""
        telemetry = committed.telemetry
        observations = telemetry.observations
        self._count_records(observations)
        tokens = _tokens(observations)
        self.tokens += tokens
        self._tokens.append((self._clock(), tokens))
        if committed.finished:
            self._finished(committed.ref, telemetry.spans, observations, tokens)
        elif telemetry.spans:
            self._record_committed(committed.ref, telemetry.spans, observations, tokens)

    def _count_records(self, observations: Sequence[Observation]) -> None:
        for status, n in _statuses(observations, md.RUN_STEPS.name):
            self.records += n
            self.failed_records += n if status in md.STEP_FAILED_STATUSES else 0

    def _record_committed(
        self, ref: UnitRef, spans: Sequence[SpanSpec], observations: Sequence[Observation], tokens: int
    ) -> None:
        record = spans[0]
        counted = _statuses(observations, md.RUN_STEPS.name)
        status = span_status(record) or (counted[0][0] if counted else a.UNKNOWN)
        types = [o.labels.get(a.LABEL_STEP_TYPE) for o in observations if o.metric == md.RUN_STEPS.name]
        label = record_label(spans, status, next((t for t in types if t), None))
        self._list(ref.unit_id, label, status, _duration(record, status), tokens)
        records = sum(n for _, n in counted)
        last = self._last
        if last is not None and last.ref == ref:
            last.groups.append(spans)  # committed after its unit finished: it still belongs in that waterfall
            last.records += records
            return
        kept = self._kept.get(ref)
        if kept is None:
            kept = self._kept[ref] = _Kept()
            if len(self._kept) > KEPT_RUNS:
                self._kept.popitem(last=False)
        kept.groups.append(spans)
        kept.records += records

    def _finished(
        self, ref: UnitRef, spans: Sequence[SpanSpec], observations: Sequence[Observation], tokens: int
    ) -> None:
        runs = _statuses(observations, md.RUNS.name)
        span = spans[0] if spans else None
        status = (span_status(span) if span is not None else None) or (runs[0][0] if runs else a.UNKNOWN)
        for counted, n in runs or [(status, 1)]:
            self.units[counted] = self.units.get(counted, 0) + n
        kept = self._kept.pop(ref, None)
        if kept is None and span is not None:  # no record of it was heard: the unit stands for itself
            self._list(ref.unit_id, unit_label(span, status), status, _duration(span, status), tokens, unit=True)
        if span is not None:
            kept = kept or _Kept()
            records = kept.records + _sum(observations, md.RUN_STEPS.name)
            self._last = _Waterfall(ref, span, [*kept.groups, *([s] for s in spans[1:])], records)

    def _list(
        self, unit_id: str, label: str, status: str, duration: int | None, tokens: int, *, unit: bool = False
    ) -> None:
        """Put an entry at the top of the recent list, numbered and timed now."""
        self._seq += 1
        entry = Seen(self._seq, self._clock(), unit_id, label, status, duration, tokens, unit)
        self.recent.appendleft(entry)
        if entry.status != COMPLETED:
            self.not_completed.appendleft(entry)

    # --- what is shown ------------------------------------------------------------------------------------------

    @property
    def finished(self) -> int:
        """Units finished so far."""
        return sum(self.units.values())

    @property
    def failed_units(self) -> int:
        """Finished units whose status is a failure (`RUN_FAILED_STATUSES`; cancelled is not one)."""
        return sum(self.units.get(s, 0) for s in md.RUN_FAILED_STATUSES)

    def tokens_per_second(self) -> float:
        cutoff = self._clock() - WINDOW_S
        while self._tokens and self._tokens[0][0] < cutoff:
            self._tokens.popleft()
        return sum(n for _, n in self._tokens) / WINDOW_S

    def recent_rows(self, count: int = RECENT) -> list[Seen]:
        """The newest `count` entries, except that the latest ones that did not complete keep their rows.

        Up to `min(RESERVED, count // 2)` of them stay listed however many completed entries follow, below the
        newer ones; newest first throughout.
        """
        latest = list(self.recent)
        keep = list(self.not_completed)[: min(RESERVED, count // 2)]
        for reserved in range(len(keep) + 1):
            top = latest[: count - reserved]
            shown = {s.seq for s in top}
            missing = [s for s in keep if s.seq not in shown]
            if len(missing) <= reserved:
                return top + missing
        return latest[:count]  # not reached: with every row reserved, `missing` fits

    def last_waterfall(self) -> tuple[UnitRef, list[SpanSpec], int] | None:
        """The most recently finished unit, once one finished: its ref, its span followed by each committed
        record's spans (records in order of their spans' start, each record span before its children), and how
        many records it had."""
        last = self._last
        if last is None:
            return None
        groups = sorted(last.groups, key=lambda g: g[0].start_ns)
        return last.ref, [last.span, *(s for g in groups for s in g)], last.records

    def render(self, height: int | None = None) -> Group:
        """One frame; with `height`, the lists shrink so that the frame fits that many lines."""
        tracking = self._tracking()
        last = self.last_waterfall()
        rows = waterfall_rows(last[1]) if last is not None else []
        footer = self._inspect_lines(last[0] if last is not None else None) + self._footer()
        waterfall_lines = min(len(rows), WATERFALL_ROWS)
        recent_lines = RECENT
        if height is not None:
            room = height - FIXED_LINES - len(footer)
            recent_lines = max(MIN_RECENT, min(RECENT, room - waterfall_lines))
            waterfall_lines = max(3, min(waterfall_lines, room - recent_lines))
        waterfall: RenderableType = Text(f"last finished {self._unit}: none yet", style="dim")
        if last is not None and rows:
            ref, _, records = last
            took = "" if rows[0].duration is None else f" in {rows[0].duration}s"
            summary = f": {rows[0].status}{took}, {records} {self._record}s"
            title = _fit(f"last finished {self._unit} ", ref.unit_id, summary)
            waterfall = waterfall_table(rows, title, compact=True, limit=waterfall_lines)
        return Group(self._summary(tracking), self._recent_table(recent_lines), waterfall, *footer)

    def _summary(self, tracking: Tracking) -> Panel:
        finished, unit, record = self.finished, self._unit, self._record
        unit_ratio = self.failed_units / finished if finished else 0
        record_ratio = self.failed_records / self.records if self.records else 0
        rows = [
            (f"{unit}s in flight [bold]{tracking.in_flight}[/]", f"{unit}s finished [bold]{finished}[/]",
             f"{unit} failure ratio [bold]{unit_ratio:.1%}[/]"),
            (f"{record}s exported [bold]{self.records}[/]", f"tokens/s [bold]{self.tokens_per_second():.0f}[/]",
             f"{record} failure ratio [bold]{record_ratio:.1%}[/]"),
        ]  # fmt: skip
        # Four cells between columns, fewer when long nouns would otherwise wrap a cell inside the panel.
        widest = sum(max(Text.from_markup(row[i]).cell_len for row in rows) for i in range(3))
        grid = Table.grid(padding=(0, max(1, min(4, (WIDTH - PANEL_EDGES - widest) // 2))))
        for row in rows:
            grid.add_row(*row)
        by_count = sorted(tracking.by_status.items(), key=lambda kv: (-kv[1], kv[0]))
        states = ", ".join(f"{k} {v}" for k, v in by_count) or "none"
        line = Text(f"tracked {unit}s: {states}", no_wrap=True, overflow="ellipsis")
        return Panel(Group(grid, line), title="stepscope demo")

    def _recent_table(self, count: int) -> Table:
        shown = self.recent_rows(count)
        units = sum(s.unit for s in shown)
        if units == 0:
            listed, column = f"{self._record}s", self._record
        elif units == len(shown):
            listed, column = f"{self._unit}s", "agent"
        else:
            listed, column = f"{self._record}s and {self._unit}s", f"{self._record} or agent"
        table = Table(
            title=f"recent {listed}, newest first (the last ones that did not complete stay)",
            title_justify="left",
            box=box.SIMPLE_HEAD,
            show_edge=False,
            collapse_padding=True,
            expand=True,
        )
        table.add_column(self._unit, width=14, no_wrap=True, overflow="ellipsis")
        table.add_column(column, ratio=1, no_wrap=True, overflow="ellipsis")
        table.add_column("status", width=9, no_wrap=True)
        table.add_column("took", width=4, justify="right", no_wrap=True)
        table.add_column("tokens", width=6, justify="right", no_wrap=True)
        table.add_column("ago", width=3, justify="right", no_wrap=True)
        now = self._clock()
        for s in shown:
            table.add_row(
                s.unit_id,
                s.label,
                Text(s.status, style=STATUS_STYLE.get(s.status, "white")),
                "…" if s.duration is None else f"{s.duration}s",
                str(s.tokens),
                _ago(now - s.at),
            )
        return table

    def _inspect_lines(self, ref: UnitRef | None) -> list[Text]:
        """The inspect command for the last finished unit, whole, over as many lines as it needs."""
        if ref is None or self._api is None:
            return []
        return [Text(line, no_wrap=True, overflow="crop") for line in shell_lines(inspect_command(ref, self._api))]

    def _footer(self) -> list[Text]:
        """Where the simulated API, metrics, the proxy and traces are, packed into as few 80-column lines as fit,
        then the newest warning the log had (cut to the width), if any."""
        items = [f"simulator: {self._api.url}"] if self._api is not None else []
        items.append(f"metrics: {self._metrics_url}")
        if self._proxy_url is not None:
            items.append(f"proxy: {self._proxy_url}")
        items += [f"traces: {self._traces}", "Ctrl-C to stop"]
        lines = [Text(line, style="dim", no_wrap=True, overflow="ellipsis") for line in packed(items)]
        warnings = self._warnings
        line = warnings.line if warnings is not None else None
        if warnings is not None and line is not None:
            many = f"{warnings.count} log lines, the last: " if warnings.count > 1 else ""
            lines.append(Text(many + line, style="yellow", no_wrap=True, overflow="ellipsis"))
        return lines

    def plain_line(self, elapsed: float) -> str:
        """The periodic `--no-view` line: units finished, failed and in flight, records and failed records, tokens
        and pending spans so far, in the protocol's nouns."""
        tracking = self._tracking()
        return (
            f"demo +{elapsed:.0f}s: {self._unit}s {self.finished} finished ({self.failed_units} failed), "
            f"{tracking.in_flight} in flight; {self._record}s {self.records} ({self.failed_records} failed); "
            f"tokens {self.tokens} ({self.tokens_per_second():.0f}/s); spans pending {tracking.pending_spans}"
        )
