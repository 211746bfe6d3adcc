"""The demo's live view: frames rendered at 80 columns from committed sample steps and runs."""

from __future__ import annotations

import io
import re
from pathlib import Path

from rich.console import Console

from stepscope.commands.demoview import DemoView, Tracking
from stepscope.protocols.agents.records import TokenUsage, Turn, TurnError
from stepscope.protocols.assistants.records import LastError, Run, RunStep, ToolCall, Usage
from stepscope.testing import FakeClock
from tests.kit.samples import make_run, make_step

RUN_A = "run_OLyhvbUbVMExd743DEehcdPT"  # simulator-length ids: 28 characters
RUN_B = "run_YqT3dIqUfB2tImBgFS0xOPyh"


def _tracking() -> Tracking:
    by_status = {"in_progress": 17, "requires_action": 7, "queued": 1, "completed": 1, "cancelled": 2, "failed": 1}
    return Tracking(in_flight=29, by_status=by_status, pending_spans=3)


def _view(clock: FakeClock | None = None) -> DemoView:
    clock = clock or FakeClock()
    return DemoView(
        _tracking,
        metrics_url="http://127.0.0.1:9464/metrics",
        traces="off (set OTEL_EXPORTER_OTLP_ENDPOINT)",
        clock=clock.monotonic,
    )


def _tool_step(n: int, run_id: str = RUN_B, name: str = "get_stock_price", **kw: object) -> RunStep:
    fields: dict[str, object] = {
        "id": f"step_{run_id}_{n}",
        "run_id": run_id,
        "type": "tool_calls",
        "created_at": 200 + n,
        "completed_at": 204 + n,
        "tool_calls": (ToolCall(f"call_{n}", "function", name),),
        "usage": Usage(1800, 411, 2211),
        **kw,
    }
    return make_step(None, **fields)


def _frame(view: DemoView, height: int | None = None) -> list[str]:
    console = Console(width=80, record=True, file=io.StringIO())
    console.print(view.render(height))
    return console.export_text().splitlines()


def _finished_run_a(view: DemoView) -> Run:
    """Commit run A's three steps (one calls two tools, one fails) and then run A itself."""
    run = make_run(id=RUN_A, created_at=100, started_at=101, completed_at=134, usage=Usage(5000, 900, 5900))
    view(run, make_step(id="s1", run_id=RUN_A, created_at=101, completed_at=104))
    tools = (ToolCall("c1", "function", "lookup_order"), ToolCall("c2", "file_search"))
    view(run, make_step(id="s2", run_id=RUN_A, type="tool_calls", created_at=104, completed_at=120, tool_calls=tools))
    failed = make_step(
        id="s3", run_id=RUN_A, type="tool_calls", status="failed", created_at=120, completed_at=None,
        failed_at=130, last_error=LastError("server_error", "boom"),
        tool_calls=(ToolCall("c3", "function", "create_ticket"),),
    )  # fmt: skip
    view(run, failed)
    view(run, None)
    return run


class TestWidth:
    def test_frame_holds_at_80_columns(self) -> None:
        """With long ids and tool names, every line fits 80 cells and each recent step is one whole row."""
        view = _view()
        _finished_run_a(view)
        run_b = make_run(id=RUN_B, status="in_progress", completed_at=None)
        for n in range(12):
            view(run_b, _tool_step(n, name="search_the_knowledge_base_for_documents"))
        lines = _frame(view)
        assert max(len(line) for line in lines) <= 80
        rows = [line for line in lines if RUN_B[:12] in line]
        assert len(rows) == 11  # the twelfth row is held for run A's failed step
        for line in rows:
            # Status, duration, tokens and age intact on the same line as the run id and the step.
            assert re.search(r"tool_calls: search_\S*…?\s+completed\s+4s\s+2211\s+0s\s*$", line), line
        assert sum(bool(re.search(r"server_error in create_ticket\s+failed\s+10s\s+0\s+0s", x)) for x in lines) == 1
        assert any("runs in flight 29" in line and "run failure ratio" in line for line in lines)
        assert any(line.startswith("│ tracked runs: in_progress 17, requires_action 7, ") for line in lines)

    def test_frame_fits_a_24_line_terminal(self) -> None:
        """Given a height, the lists shrink so the frame fits, and the waterfall says how many rows it left out."""
        view = _view()
        _finished_run_a(view)
        run_b = make_run(id=RUN_B, status="in_progress", completed_at=None)
        for n in range(30):
            view(run_b, _tool_step(n))
        lines = _frame(view, height=24)
        assert len(lines) <= 24
        assert sum(RUN_B[:12] in line for line in lines) == 3  # and one row held for run A's failed step
        assert sum("server_error in create_ticket" in line for line in lines) == 1
        assert any(re.search(r"… \d+ more", line) for line in lines)
        assert max(len(line) for line in lines) <= 80


class TestRecentList:
    def test_failed_step_stays_after_20_completed(self) -> None:
        """A failed step stays in the recent list, below the newer ones, after 20 completed steps followed it."""
        clock = FakeClock()
        view = _view(clock)
        run = make_run(id=RUN_B, status="in_progress", completed_at=None)
        view(
            run,
            _tool_step(
                0, status="failed", completed_at=None, failed_at=210, last_error=LastError("rate_limit_exceeded", "")
            ),
        )
        for n in range(1, 21):
            clock.advance(1)
            view(run, _tool_step(n))
        rows = view.recent_rows()
        assert len(rows) == 12
        assert [r.status for r in rows] == ["completed"] * 11 + ["failed"]
        lines = _frame(view)
        failed = [line for line in lines if " failed " in line and RUN_B[:12] in line]
        assert len(failed) == 1
        assert "rate_limit_exceeded in get_stock" in failed[0]  # the error code first, never cut off
        assert failed[0].rstrip().endswith("20s")  # its age tells it apart from the newest rows

    def test_expired_and_cancelled_steps_are_kept_too(self) -> None:
        """Expired and cancelled steps keep their rows like failed ones, newest first."""
        view = _view()
        run = make_run(id=RUN_B, status="in_progress", completed_at=None)
        view(run, _tool_step(0, status="expired", completed_at=None, expired_at=230))
        view(run, _tool_step(1, status="cancelled", completed_at=None, cancelled_at=231))
        for n in range(2, 40):
            view(run, _tool_step(n))
        statuses = [r.status for r in view.recent_rows()]
        assert statuses == ["completed"] * 10 + ["cancelled", "expired"]

    def test_reserve_is_bounded_and_newer_problems_win(self) -> None:
        """At most four rows are held for older problems; problems among the newest rows are shown as they are."""
        view = _view()
        run = make_run(id=RUN_B, status="in_progress", completed_at=None)
        for n in range(6):
            view(run, _tool_step(n, status="failed", completed_at=None, failed_at=220))
        for n in range(6, 26):
            view(run, _tool_step(n))
        view(run, _tool_step(26, status="cancelled", completed_at=None, cancelled_at=240))
        rows = view.recent_rows()
        assert [r.status for r in rows] == ["cancelled"] + ["completed"] * 8 + ["failed"] * 3
        assert [r.label.endswith("get_stock_price") for r in rows] == [True] * 12
        # Newest first: sequence numbers only decrease down the list.
        assert [r.seq for r in rows] == sorted((r.seq for r in rows), reverse=True)

    def test_small_list_reserves_half(self) -> None:
        """A four-row list keeps two rows for problems and two for the newest steps."""
        view = _view()
        run = make_run(id=RUN_B, status="in_progress", completed_at=None)
        for n in range(3):
            view(run, _tool_step(n, status="failed", completed_at=None, failed_at=220))
        for n in range(3, 10):
            view(run, _tool_step(n))
        assert [r.status for r in view.recent_rows(4)] == ["completed", "completed", "failed", "failed"]


class TestWaterfall:
    def test_last_finished_run_is_drawn_with_its_tools(self) -> None:
        """The frame draws the last finished run's waterfall: the run, each step in order, and its tool calls."""
        view = _view()
        _finished_run_a(view)
        run_b = make_run(id=RUN_B, status="in_progress", completed_at=None)
        view(run_b, _tool_step(0, name="get_weather"))
        lines = _frame(view)
        start = next(i for i, line in enumerate(lines) if line.startswith("last finished run"))
        assert lines[start].startswith(f"last finished run {RUN_A}: completed in 34s, 3 steps")
        body = lines[start + 1 :]
        expected = [
            r"invoke_agent asst_1\s+completed\s+34s\s+█",
            r"message_creation\s+completed\s+3s\s+█",
            r"tool_calls\s+completed\s+16s\s+ *█",
            r"execute_tool lookup_order\s+completed\s+16s\s+ *█",
            r"execute_tool file_search\s+completed\s+16s\s+ *█",
            r"tool_calls\s+failed\s+10s\s+ *█",
            r"execute_tool create_ticket\s+failed\s+10s\s+ *█",
        ]
        drawn = [line for line in body if "█" in line]
        assert len(drawn) == len(expected)
        for pattern, line in zip(expected, drawn, strict=True):
            assert re.search(pattern, line), (pattern, line)
        assert not any("get_weather" in line for line in body)  # run B has not finished

    def test_step_committed_after_its_run_joins_the_waterfall(self) -> None:
        """A step acknowledged after its run's end still appears in that run's waterfall, in creation order."""
        view = _view()
        run = make_run(id=RUN_A)
        view(run, make_step(id="late", run_id=RUN_A, created_at=110, completed_at=112, type="tool_calls",
                            tool_calls=(ToolCall("c", "function", "second_tool"),)))  # fmt: skip
        view(run, None)
        view(run, make_step(id="early", run_id=RUN_A, created_at=103, completed_at=105, type="tool_calls",
                            tool_calls=(ToolCall("c0", "function", "first_tool"),)))  # fmt: skip
        last = view.last_waterfall()
        assert last is not None
        assert [s.id for s in last[1]] == ["early", "late"]
        text = "\n".join(_frame(view))
        assert text.index("execute_tool first_tool") < text.index("execute_tool second_tool")

    def test_no_run_finished_yet(self) -> None:
        """Before any run finishes, the frame says so instead of drawing an empty waterfall."""
        view = _view()
        view(make_run(id=RUN_B, status="in_progress", completed_at=None), _tool_step(0))
        assert any(line.startswith("last finished run: none yet") for line in _frame(view))


class TestPlainLine:
    def test_plain_line_counts_runs_steps_failures_tokens_and_pending_spans(self) -> None:
        """The --no-view line reports finished and failed runs, runs in flight, steps, tokens and pending spans."""
        clock = FakeClock()
        view = _view(clock)
        _finished_run_a(view)
        view(make_run(id=RUN_B, status="failed", failed_at=140, completed_at=None), None)
        line = view.plain_line(12.4)
        assert line == (
            "demo +12s: runs 2 finished (1 failed), 29 in flight; steps 3 (1 failed); tokens 0 (0/s); spans pending 3"
        )
        view(make_run(id=RUN_B, status="in_progress", completed_at=None), _tool_step(0))
        assert "steps 4 (1 failed); tokens 2211 (221/s);" in view.plain_line(13)


def test_readme_frame_holds_at_80_columns() -> None:
    """The README's text frame of the live view is a real frame: no line past 80 columns, with a waterfall."""
    readme = (Path(__file__).parents[2] / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("### The live view") :]
    block = section[section.index("The same frame as text:") :].split("```")[1]
    lines = block.strip("\n").splitlines()
    assert lines[0].startswith("╭") and "stepscope demo" in lines[0]
    assert max(len(line) for line in lines) <= 80
    assert any(line.startswith("last finished run run_") for line in lines)


def _turn(n: int, status: str = "completed", **kw: object) -> Turn:
    fields: dict[str, object] = {
        "id": f"turn_{n:03d}OLyhvbUbVMExd743DEeh",
        "session_id": "sess_YqT3dIqUfB2tImBgFS0xOPyh",
        "agent_id": "agent_NhBCpWM97Wn63OQDD64xVoBT",
        "status": status,
        "created_at": 300 + n,
        "started_at": 301 + n,
        "completed_at": 312 + n,
        "usage": TokenUsage(1200, 300, 1500, 800, 100),
        **kw,
    }
    return Turn(**fields)  # type: ignore[arg-type]


def _agents_view(clock: FakeClock | None = None) -> DemoView:
    clock = clock or FakeClock()
    return DemoView(
        _tracking,
        metrics_url="http://127.0.0.1:9464/metrics",
        traces="off (set OTEL_EXPORTER_OTLP_ENDPOINT)",
        clock=clock.monotonic,
        protocol="agents",
    )


class TestAgentsView:
    def test_finished_turns_are_listed_with_agent_status_duration_and_tokens(self) -> None:
        """Each `(turn, None)` adds a row naming the agent (a failed turn's error code first), its status, its
        `completed_at - created_at` and its total tokens; the frame holds at 80 columns and says turns, not steps."""
        view = _agents_view()
        view(_turn(1), None)
        error = TurnError("rate_limit_exceeded", "The request exceeds the available rate limit.")
        view(_turn(2, "failed", error=error), None)
        view(_turn(3, "cancelled", started_at=None, usage=None), None)
        lines = _frame(view)
        assert max(len(line) for line in lines) <= 80
        assert any("turns in flight 29" in line and "turn failure ratio 33.3%" in line for line in lines)
        assert any(line.startswith("recent turns, newest first") for line in lines)
        rows = [line.split() for line in lines if line.startswith(" turn_")]
        assert [r[-4:] for r in rows] == [
            ["cancelled", "12s", "0", "0s"],
            ["failed", "12s", "1500", "0s"],
            ["completed", "12s", "1500", "0s"],
        ]
        assert rows[1][1] == "rate_limit_exceeded"
        assert rows[2][1] == "agent_NhBCpWM97Wn63OQDD64xVoBT"
        assert any(line.startswith("last finished turn turn_003") for line in lines)
        assert not any("steps exported" in line or "recent steps" in line for line in lines)

    def test_plain_line_counts_turns_failures_and_tokens(self) -> None:
        """The agents --no-view line reports finished and failed turns, turns in flight, tokens and pending spans."""
        clock = FakeClock()
        view = _agents_view(clock)
        assert "last finished turn: none yet" in "\n".join(_frame(view))
        view(_turn(1), None)
        view(_turn(2, "failed", error=TurnError("server_error", "boom")), None)
        assert view.plain_line(7.2) == (
            "demo +7s: turns 2 finished (1 failed), 29 in flight; tokens 3000 (300/s); spans pending 3"
        )

    def test_assistants_view_is_unchanged_by_default(self) -> None:
        """Without a protocol the view still lists steps and runs (the Assistants view)."""
        view = _view()
        _finished_run_a(view)
        lines = _frame(view)
        assert any(line.startswith("recent steps, newest first") for line in lines)
        assert any("runs in flight 29" in line for line in lines)
