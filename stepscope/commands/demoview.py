"""The demo's live view: the frame `stepscope demo` draws, fed by the pipeline's commit listener.

`DemoView` is the listener: it hears every committed step as `(Run, RunStep)` and every finished run as
`(Run, None)` (or, for the Agents API, every finished turn as `(Turn, None)`), and renders an 80-column frame of
runs in flight and finished, recent steps (the last failed, expired or cancelled ones keep rows), and the waterfall
of the most recently finished run; `plain_line()` is `--no-view`'s periodic status line. It reads the service only
through a `Tracking` callable, so it shows what the exporters were given, not what the simulator did.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from rich import box
from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from stepscope.commands.views import STATUS_STYLE, waterfall_rows, waterfall_table
from stepscope.protocols.agents.records import Turn
from stepscope.protocols.assistants.records import Run, RunStep

RECENT = 12  # rows of the recent list when the terminal is tall enough
MIN_RECENT = 4  # ... and when it is not
RESERVED = 4  # rows kept for the latest steps that did not complete (at most half the list)
WATERFALL_ROWS = 14  # lines of the last run's waterfall, at most
FIXED_LINES = 14  # summary panel 5, two table titles and headers 6, footer 2, and one spare for the cursor
WINDOW_S = 10.0  # tokens per second are averaged over this window
PLAIN_EVERY_S = 5.0  # --no-view prints a status line this often
KEPT_RUNS = 2048  # runs whose steps are kept for the waterfall; the oldest are forgotten past this
FAILED_RUNS = ("failed", "expired", "incomplete")
FAILED_STEPS = ("failed", "expired")
AGENTS = "agents"


@dataclass(frozen=True, slots=True)
class Tracking:
    """What the view reads from the service on each frame."""

    in_flight: int
    by_status: Mapping[str, int]
    pending_spans: int


@dataclass(frozen=True, slots=True)
class SeenStep:
    """One committed step as the recent list shows it; `seq` orders and identifies entries."""

    seq: int
    at: float
    run_id: str
    label: str
    status: str
    duration: int | None
    tokens: int


def _label(step: RunStep) -> str:
    """`tool_calls: get_weather`, or for a step with an error `server_error in get_weather` (the code first, where
    the column cannot cut it off)."""
    tools = ", ".join(call.name or call.type for call in step.tool_calls)
    if step.last_error is not None:
        return f"{step.last_error.code} in {tools or step.type}"
    return f"{step.type}: {tools}" if tools else step.type


def _turn_label(turn: Turn) -> str:
    """`agent_x`, a subagent's `agent_x / sub_y`, or for a failed turn `server_error in agent_x` (code first)."""
    agent = turn.agent_id if turn.subagent_id is None else f"{turn.agent_id} / {turn.subagent_id}"
    return f"{turn.error.code} in {agent}" if turn.status == "failed" and turn.error is not None else agent


def _ago(seconds: float) -> str:
    """At most three characters: `42s`, `17m`, `3h`."""
    if seconds < 60:
        return f"{seconds:.0f}s"
    return f"{seconds // 60:.0f}m" if seconds < 6000 else f"{seconds // 3600:.0f}h"


class DemoView:
    """A pipeline commit listener that keeps what the live view and the plain lines show, and renders them.

    Called as `view(run, step)` for each committed step and `view(run, None)` for each finished run, on the
    event loop; rendering happens on the same thread. With `protocol="agents"` it is called `view(turn, None)` for
    each finished turn, and lists turns where it lists steps.
    """

    def __init__(
        self,
        tracking: Callable[[], Tracking],
        *,
        metrics_url: str,
        traces: str,
        clock: Callable[[], float] = time.monotonic,
        protocol: str = "assistants",
    ) -> None:
        self._tracking = tracking
        self._agents = protocol == AGENTS
        self._unit = "turn" if self._agents else "run"
        self._metrics_url = metrics_url
        self._traces = traces
        self._clock = clock
        self._seq = 0
        self.recent: deque[SeenStep] = deque(maxlen=RECENT)
        self.not_completed: deque[SeenStep] = deque(maxlen=RESERVED)
        self._tokens: deque[tuple[float, int]] = deque()
        self._steps_by_run: OrderedDict[str, list[RunStep]] = OrderedDict()
        self.last_run: Run | None = None
        self.last_steps: list[RunStep] = []
        self.steps = 0
        self.failed_steps = 0
        self.tokens = 0
        self.runs: dict[str, int] = {}
        self.last_turn: SeenStep | None = None

    def __call__(self, run: Run | Turn, step: RunStep | None) -> None:
        if isinstance(run, Turn):
            self._turn(run)
            return
        if step is None:
            self.runs[run.status] = self.runs.get(run.status, 0) + 1
            self.last_run = run
            self.last_steps = self._steps_by_run.pop(run.id, [])
            return
        now = self._clock()
        tokens = step.usage.total_tokens if step.usage else 0
        ended = step.ended_at
        duration = None if ended is None else ended - step.created_at
        self._seq += 1
        seen = SeenStep(self._seq, now, run.id, _label(step), step.status, duration, tokens)
        self.recent.appendleft(seen)
        if step.status != "completed":
            self.not_completed.appendleft(seen)
        self._tokens.append((now, tokens))
        self.steps += 1
        self.tokens += tokens
        self.failed_steps += step.status in FAILED_STEPS
        self._keep_step(run, step)

    def _turn(self, turn: Turn) -> None:
        """A finished turn: counted like a run, listed like a step (its items come with it, untimed)."""
        self.runs[turn.status] = self.runs.get(turn.status, 0) + 1
        now = self._clock()
        tokens = turn.usage.total_tokens if turn.usage else 0
        ended = turn.ended_at
        duration = None if ended is None else max(0, ended - turn.created_at)
        self._seq += 1
        seen = SeenStep(self._seq, now, turn.id, _turn_label(turn), turn.status, duration, tokens)
        self.recent.appendleft(seen)
        if turn.status != "completed":
            self.not_completed.appendleft(seen)
        self._tokens.append((now, tokens))
        self.tokens += tokens
        self.last_turn = seen

    def _keep_step(self, run: Run, step: RunStep) -> None:
        if self.last_run is not None and run.id == self.last_run.id:
            self.last_steps.append(step)  # acknowledged after its run: it still belongs in that waterfall
            return
        kept = self._steps_by_run.get(run.id)
        if kept is None:
            kept = self._steps_by_run[run.id] = []
            if len(self._steps_by_run) > KEPT_RUNS:
                self._steps_by_run.popitem(last=False)
        kept.append(step)

    # --- what is shown ------------------------------------------------------------------------------------------

    def tokens_per_second(self) -> float:
        cutoff = self._clock() - WINDOW_S
        while self._tokens and self._tokens[0][0] < cutoff:
            self._tokens.popleft()
        return sum(n for _, n in self._tokens) / WINDOW_S

    def recent_rows(self, count: int = RECENT) -> list[SeenStep]:
        """The newest `count` steps, except that the latest steps that did not complete keep their rows.

        Up to `min(RESERVED, count // 2)` of them stay listed however many completed steps follow, below the
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

    def last_waterfall(self) -> tuple[Run, list[RunStep]] | None:
        """The most recently finished run with its committed steps in creation order, once a run finished."""
        if self.last_run is None:
            return None
        return self.last_run, sorted(self.last_steps, key=lambda s: s.created_at)

    def render(self, height: int | None = None) -> Group:
        """One frame; with `height`, the lists shrink so that the frame fits that many lines."""
        tracking = self._tracking()
        last = self.last_waterfall()
        rows = waterfall_rows(*last) if last is not None else []
        waterfall_lines = min(len(rows), WATERFALL_ROWS)
        recent_lines = RECENT
        if height is not None:
            room = height - FIXED_LINES
            recent_lines = max(MIN_RECENT, min(RECENT, room - waterfall_lines))
            waterfall_lines = max(3, min(waterfall_lines, room - recent_lines))
        waterfall: RenderableType = Text("last finished run: none yet", style="dim")
        if self._agents:
            waterfall = self._last_turn_line()
        elif last is not None:
            run = last[0]
            took = "" if rows[0].duration is None else f" in {rows[0].duration}s"
            title = f"last finished run {run.id}: {run.status}{took}, {len(last[1])} steps"
            waterfall = waterfall_table(rows, title, compact=True, limit=waterfall_lines)
        return Group(self._summary(tracking), self._recent_table(recent_lines), waterfall, *self._footer())

    def _last_turn_line(self) -> Text:
        """The agents view's stand-in for the waterfall: items have no times, so there is nothing to draw."""
        turn = self.last_turn
        if turn is None:
            return Text("last finished turn: none yet", style="dim")
        took = "" if turn.duration is None else f" in {turn.duration}s"
        return Text(
            f"last finished turn {turn.run_id}: {turn.status}{took}, {turn.tokens} tokens, {turn.label} "
            "(its items are span events, untimed)",
            no_wrap=True,
            overflow="ellipsis",
        )

    def _summary(self, tracking: Tracking) -> Panel:
        finished = sum(self.runs.values())
        failed_runs = sum(self.runs.get(s, 0) for s in FAILED_RUNS)
        unit = self._unit
        grid = Table.grid(padding=(0, 4))
        grid.add_row(
            f"{unit}s in flight [bold]{tracking.in_flight}[/]",
            f"{unit}s finished [bold]{finished}[/]",
            f"{unit} failure ratio [bold]{failed_runs / finished if finished else 0:.1%}[/]",
        )
        if self._agents:
            grid.add_row(
                f"tokens [bold]{self.tokens}[/]",
                f"tokens/s [bold]{self.tokens_per_second():.0f}[/]",
                f"spans pending [bold]{tracking.pending_spans}[/]",
            )
        else:
            grid.add_row(
                f"steps exported [bold]{self.steps}[/]",
                f"tokens/s [bold]{self.tokens_per_second():.0f}[/]",
                f"step failure ratio [bold]{self.failed_steps / self.steps if self.steps else 0:.1%}[/]",
            )
        by_count = sorted(tracking.by_status.items(), key=lambda kv: (-kv[1], kv[0]))
        states = ", ".join(f"{k} {v}" for k, v in by_count) or "none"
        line = Text(f"tracked {unit}s: {states}", no_wrap=True, overflow="ellipsis")
        return Panel(Group(grid, line), title="stepscope demo")

    def _recent_table(self, count: int) -> Table:
        kept = "failed or cancelled" if self._agents else "failed, expired or cancelled"
        table = Table(
            title=f"recent {'turns' if self._agents else 'steps'}, newest first (the last {kept} ones stay)",
            title_justify="left",
            box=box.SIMPLE_HEAD,
            show_edge=False,
            collapse_padding=True,
            expand=True,
        )
        table.add_column(self._unit, width=14, no_wrap=True, overflow="ellipsis")
        table.add_column("agent" if self._agents else "step", ratio=1, no_wrap=True, overflow="ellipsis")
        table.add_column("status", width=9, no_wrap=True)
        table.add_column("took", width=4, justify="right", no_wrap=True)
        table.add_column("tokens", width=6, justify="right", no_wrap=True)
        table.add_column("ago", width=3, justify="right", no_wrap=True)
        now = self._clock()
        for s in self.recent_rows(count):
            table.add_row(
                s.run_id,
                s.label,
                Text(s.status, style=STATUS_STYLE.get(s.status, "white")),
                "…" if s.duration is None else f"{s.duration}s",
                str(s.tokens),
                _ago(now - s.at),
            )
        return table

    def _footer(self) -> list[Text]:
        return [
            Text(f"metrics: {self._metrics_url}   Ctrl-C to stop", style="dim", no_wrap=True, overflow="ellipsis"),
            Text(f"traces: {self._traces}", style="dim", no_wrap=True, overflow="ellipsis"),
        ]

    def plain_line(self, elapsed: float) -> str:
        """The periodic `--no-view` line: runs (turns), steps, failures, tokens and pending spans so far."""
        tracking = self._tracking()
        finished = sum(self.runs.values())
        failed_runs = sum(self.runs.get(s, 0) for s in FAILED_RUNS)
        if self._agents:
            return (
                f"demo +{elapsed:.0f}s: turns {finished} finished ({failed_runs} failed), {tracking.in_flight} in "
                f"flight; tokens {self.tokens} ({self.tokens_per_second():.0f}/s); "
                f"spans pending {tracking.pending_spans}"
            )
        return (
            f"demo +{elapsed:.0f}s: runs {finished} finished ({failed_runs} failed), {tracking.in_flight} in flight; "
            f"steps {self.steps} ({self.failed_steps} failed); tokens {self.tokens} "
            f"({self.tokens_per_second():.0f}/s); spans pending {tracking.pending_spans}"
        )
