"""The waterfall shared by `inspect` and the demo's live view: rows, and the table at 80 and 160 columns."""

from __future__ import annotations

import io
import json
import re

from rich.console import Console

from stepscope.commands.views import BAR_WIDTH, Row, waterfall_json, waterfall_rows, waterfall_table
from stepscope.core.records import SpanSpec
from stepscope.mapping.attributes import MappingOptions
from stepscope.protocols.assistants.records import Run, RunStep, ToolCall, Usage
from stepscope.protocols.assistants.spans import run_span, step_spans
from tests.kit.samples import make_run, make_step


def _sample() -> tuple[Run, list[RunStep]]:
    """A 40 s failed run: a message, a step calling two tools, then a failed message step."""
    run = make_run(status="failed", created_at=100, completed_at=None, failed_at=140, usage=Usage(1200, 340, 1540))
    tools = (ToolCall("c1", "function", "get_stock_price"), ToolCall("c2", "code_interpreter"))
    steps = [
        make_step(id="s1", created_at=102, completed_at=106, usage=Usage(100, 20, 120)),
        make_step(id="s2", type="tool_calls", created_at=106, completed_at=120, tool_calls=tools),
        make_step(id="s3", status="failed", created_at=120, completed_at=None, failed_at=140),
    ]
    return run, steps


def _spans(run: Run, steps: list[RunStep], name: str | None = None) -> list[SpanSpec]:
    """The spans the Assistants mapping makes of a run (so far) and its steps, as `inspect` gets them."""
    options = MappingOptions()
    spans = [run_span(run, assistant_name=name, options=options, partial=True)]
    for step in steps:
        spans.extend(step_spans(run, step, options=options))
    return spans


def _rows(run: Run, steps: list[RunStep], name: str | None = None) -> list[Row]:
    return waterfall_rows(_spans(run, steps, name))


def _text(table: object, width: int) -> list[str]:
    console = Console(width=width, record=True, file=io.StringIO())
    console.print(table)
    return console.export_text().splitlines()


def _bar_cells(line: str) -> int:
    return line.count("█")


class TestRows:
    def test_rows_are_the_unit_then_its_records_each_followed_by_its_children(self) -> None:
        """The run's span comes first, then each step's in order, each followed by one row per tool call span, whose
        status is its step's."""
        run, steps = _sample()
        rows = _rows(run, steps, "Research assistant")
        assert [(r.label, r.kind, r.status) for r in rows] == [
            ("invoke_agent Research assistant", "unit", "failed"),
            ("run_step message_creation", "step", "completed"),
            ("run_step tool_calls", "step", "completed"),
            ("  execute_tool get_stock_price", "tool", "completed"),
            ("  execute_tool code_interpreter", "tool", "completed"),
            ("run_step message_creation", "step", "failed"),
        ]
        assert [r.duration for r in rows] == [40, 4, 14, 14, 14, 20]

    def test_rows_are_the_exported_spans(self) -> None:
        """Each row has the name, start and end of the span the mapping exports for it, in the same order."""
        run, steps = _sample()
        specs = _spans(run, steps, "Research assistant")
        rows = waterfall_rows(specs)
        assert len(rows) == len(specs)
        for row, spec in zip(rows, specs, strict=True):
            assert spec.name.endswith(row.label.strip())
            assert (row.start, row.end) == (spec.start_ns // 10**9, spec.end_ns // 10**9)

    def test_a_run_in_progress_has_open_rows(self) -> None:
        """A run and a step still going get rows without an end, and a finished step keeps its own end."""
        run = make_run(status="in_progress", completed_at=None)
        steps = [make_step(), make_step(id="s2", type="tool_calls", status="in_progress", completed_at=None)]
        rows = _rows(run, steps)
        assert [(r.label, r.status, r.end) for r in rows] == [
            ("invoke_agent asst_1", "in_progress", None),
            ("run_step message_creation", "completed", 105),
            ("run_step tool_calls", "in_progress", None),
        ]

    def test_json_carries_the_same_rows(self) -> None:
        """`--json` lists the rows with names stripped of indentation and their durations."""
        run, steps = _sample()
        data = json.loads(waterfall_json(run.id, run.thread_id, _rows(run, steps)))
        assert (data["unit_id"], data["container_id"], data["status"]) == (run.id, run.thread_id, "failed")
        assert [s["name"] for s in data["spans"]][3] == "execute_tool get_stock_price"
        assert data["spans"][0]["duration_s"] == 40


class TestTable:
    def test_full_table_on_a_wide_console(self) -> None:
        """At 160 columns the full table shows start offsets and tokens, and the run's bar spans all 40 cells."""
        run, steps = _sample()
        lines = _text(waterfall_table(_rows(run, steps), "run run_1"), 160)
        assert any("tokens in/out" in line and "start" in line and "timeline" in line for line in lines)
        run_line = next(line for line in lines if "invoke_agent" in line)
        assert re.search(r"failed\s+│\s+\+0s\s+│\s+40s\s+│\s+1200/340", run_line)
        assert _bar_cells(run_line) == BAR_WIDTH
        failed_step = [line for line in lines if "message_creation" in line][-1]
        assert _bar_cells(failed_step) == BAR_WIDTH // 2  # the last 20 s of a 40 s run

    def test_compact_table_holds_at_80_columns(self) -> None:
        """At 80 columns the compact table draws one line per row, a bar on every row, and nothing past 80 cells."""
        run, steps = _sample()
        rows = _rows(run, steps, "Research assistant")
        lines = _text(waterfall_table(rows, "run run_1", compact=True), 80)
        assert max(len(line) for line in lines) <= 80
        drawn = [line for line in lines if "█" in line]
        assert len(drawn) == len(rows)
        for row, line in zip(rows, drawn, strict=True):
            assert row.label.strip() in line
            assert re.search(rf"{row.status}\s+{row.duration}s\s+ *█", line), line
        assert _bar_cells(drawn[0]) > 20  # the timeline takes the room the dropped columns left

    def test_inspect_table_keeps_every_column_at_80_columns(self) -> None:
        """At 80 columns `inspect`'s table (compact with details) keeps start offsets and tokens, cuts long span
        names, and leaves the timeline a dozen cells and more, with a bar on every row."""
        run, steps = _sample()
        rows = _rows(run, steps, "Research assistant with a long name")
        lines = _text(waterfall_table(rows, "run run_1", compact=True, details=True), 80)
        assert max(len(line) for line in lines) <= 80
        assert re.match(r"span\s+status\s+start\s+took\s+tokens in/out\s+0s\s+timeline\s+40s$", lines[1]), lines
        run_line = next(line for line in lines if "invoke_agent" in line)
        assert re.search(r"…\s+failed\s+\+0s\s+40s\s+1200/340 █+$", run_line), run_line
        assert _bar_cells(run_line) >= 12
        assert sum("█" in line for line in lines) == len(rows)

    def test_limit_keeps_the_whole_time_axis(self) -> None:
        """With a limit, the last line counts the rows left out and the axis still spans the whole run."""
        run, steps = _sample()
        rows = _rows(run, steps)
        lines = _text(waterfall_table(rows, "run run_1", compact=True, limit=3), 80)
        assert sum("█" in line for line in lines) == 2
        assert any(line.strip() == "… 4 more" for line in lines)
        assert any(re.search(r"0s\s+timeline\s+40s", line) for line in lines)

    def test_unfinished_row_runs_to_the_end_of_the_axis(self) -> None:
        """A row without an end shows `…` as its duration and a bar to the end of the axis."""
        rows = [Row("invoke_agent a", "unit", "in_progress", 0, 10), Row("tool_calls", "step", "in_progress", 5, None)]
        lines = _text(waterfall_table(rows, "run", compact=True), 80)
        line = next(line for line in lines if line.lstrip().startswith("tool_calls"))
        assert re.search(r"in_progress\s+…\s+ +█+ *$", line.rstrip() + " ")
        assert line.rstrip().endswith("█")
