"""The demo's live view: frames rendered at 80 columns from what the pipeline tells its listeners.

The view hears protocol-neutral `Committed` parts; these tests build them from the protocols' real mapping output
(Assistants runs and steps through `AssistantsMapper`, Agents API turns through `AgentsMapper`), and once through a
real `Pipeline`, so the view is tested on what it will hear in the demo.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import io
import logging
import re
import shlex
import socket
from collections.abc import Sequence
from pathlib import Path

import pytest
from rich.console import Console

from stepscope import protocols
from stepscope.cli import build_parser
from stepscope.client.parsing import TokenUsage
from stepscope.commands import demoview
from stepscope.commands.demo import _free_listen, _protocol, _service_env, protocol_choices
from stepscope.commands.demoview import Api, DemoView, Tracking, shell_lines
from stepscope.commands.logs import LastWarning
from stepscope.core.asyncstore import AsyncStore
from stepscope.core.pipeline import Committed, Pipeline
from stepscope.core.records import Commit, UnitRef
from stepscope.core.store import SqliteStore
from stepscope.errors import ConfigError
from stepscope.mapping.attributes import MappingOptions
from stepscope.protocols.agents.mapping import AgentsMapper, TurnContext
from stepscope.protocols.agents.records import Item, Turn, TurnError
from stepscope.protocols.assistants.mapper import AssistantsMapper
from stepscope.protocols.assistants.records import LastError, Run, RunStep, ToolCall, Usage
from stepscope.protocols.responses.mapping import ResponseContext, ResponsesMapper, ResponsesOptions
from stepscope.protocols.responses.records import Item as ResponseItem
from stepscope.protocols.responses.records import Response
from stepscope.simulator import Simulator
from stepscope.testing import FakeClock, RecordingMetricSink
from tests.kit.contract import REPO
from tests.kit.fakes import Counters
from tests.kit.samples import make_run, make_step

pytestmark = pytest.mark.anyio

RUN_A = "run_OLyhvbUbVMExd743DEehcdPT"  # simulator-length ids: 28 characters
RUN_B = "run_YqT3dIqUfB2tImBgFS0xOPyh"
OPTIONS = MappingOptions()
RUNS = AssistantsMapper(OPTIONS)
TURNS = AgentsMapper(OPTIONS)
RESPONSES = ResponsesMapper(ResponsesOptions(mapping=OPTIONS))
SESSION = "sess_YqT3dIqUfB2tImBgFS0xOPyh"
AGENT = "agent_NhBCpWM97Wn63OQDD64xVoBT"


def _tracking() -> Tracking:
    by_status = {"in_progress": 17, "requires_action": 7, "queued": 1, "completed": 1, "cancelled": 2, "failed": 1}
    return Tracking(in_flight=29, by_status=by_status, pending_spans=3)


def _view(clock: FakeClock | None = None, nouns: tuple[str, str] = ("run", "step")) -> DemoView:
    clock = clock or FakeClock()
    return DemoView(
        _tracking,
        metrics_url="http://127.0.0.1:9464/metrics",
        traces="off (set OTEL_EXPORTER_OTLP_ENDPOINT)",
        nouns=nouns,
        clock=clock.monotonic,
    )


def _agents_view(clock: FakeClock | None = None) -> DemoView:
    return _view(clock, ("turn", "item"))


def _step(view: DemoView, run: Run, step: RunStep) -> None:
    """Tell `view` of one committed step, as the pipeline does."""
    view(Committed(UnitRef(run.thread_id, run.id), RUNS.record(run, step), finished=False))


def _finish(view: DemoView, run: Run, assistant_name: str | None = None) -> None:
    """Tell `view` that `run` finished, as the pipeline does."""
    view(Committed(UnitRef(run.thread_id, run.id), RUNS.finish(run, assistant_name), finished=True))


def _turn_done(view: DemoView, turn: Turn, items: Sequence[Item] = (), agent_name: str | None = None) -> None:
    """Tell `view` that `turn` finished with `items`, as the pipeline does (items come with their turn)."""
    context = TurnContext(agent_name=agent_name, model="gpt-5", items=tuple(items))
    view(Committed(UnitRef(turn.session_id, turn.id), TURNS.finish(turn, context), finished=True))


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


def _turn(n: int, status: str = "completed", **kw: object) -> Turn:
    fields: dict[str, object] = {
        "id": f"turn_{n:03d}OLyhvbUbVMExd743DEeh",
        "session_id": SESSION,
        "agent_id": AGENT,
        "status": status,
        "created_at": 300 + n,
        "started_at": 301 + n,
        "completed_at": 312 + n,
        "usage": TokenUsage(1200, 300, 1500, 800, 100),
        **kw,
    }
    return Turn(**fields)  # type: ignore[arg-type]


def _frame(view: DemoView, height: int | None = None) -> list[str]:
    console = Console(width=80, record=True, file=io.StringIO())
    console.print(view.render(height))
    return console.export_text().splitlines()


def _finished_run_a(view: DemoView) -> Run:
    """Commit run A's three steps (one calls two tools, one fails) and then run A itself."""
    run = make_run(id=RUN_A, created_at=100, started_at=101, completed_at=134, usage=Usage(5000, 900, 5900))
    _step(view, run, make_step(id="s1", run_id=RUN_A, created_at=101, completed_at=104))
    tools = (ToolCall("c1", "function", "lookup_order"), ToolCall("c2", "file_search"))
    _step(view, run, make_step(id="s2", run_id=RUN_A, type="tool_calls", created_at=104, completed_at=120,
                               tool_calls=tools))  # fmt: skip
    failed = make_step(
        id="s3", run_id=RUN_A, type="tool_calls", status="failed", created_at=120, completed_at=None,
        failed_at=130, last_error=LastError("server_error", "boom"),
        tool_calls=(ToolCall("c3", "function", "create_ticket"),),
    )  # fmt: skip
    _step(view, run, failed)
    _finish(view, run)
    return run


def _run_b() -> Run:
    return make_run(id=RUN_B, status="in_progress", completed_at=None)


class TestWidth:
    def test_frame_holds_at_80_columns(self) -> None:
        """With long ids and tool names, every line fits 80 cells and each recent step is one whole row."""
        view = _view()
        _finished_run_a(view)
        for n in range(12):
            _step(view, _run_b(), _tool_step(n, name="search_the_knowledge_base_for_documents_and_more"))
        lines = _frame(view)
        assert max(len(line) for line in lines) <= 80
        rows = [line for line in lines if RUN_B[:12] in line]
        assert len(rows) == 11  # the twelfth row is held for run A's failed step
        for line in rows:
            # Status, duration, tokens and age intact on the same line as the run id and the tools.
            assert re.search(r"search_the\S*…\s+completed\s+4s\s+2211\s+0s\s*$", line), line
        assert sum(bool(re.search(r"server_error in create_ticket\s+failed\s+10s\s+0\s+0s", x)) for x in lines) == 1
        assert any("runs in flight 29" in line and "run failure ratio" in line for line in lines)
        assert any(line.startswith("│ tracked runs: in_progress 17, requires_action 7, ") for line in lines)

    def test_frame_fits_a_24_line_terminal(self) -> None:
        """Given a height, the lists shrink so the frame fits, and the waterfall says how many rows it left out."""
        view = _view()
        _finished_run_a(view)
        for n in range(30):
            _step(view, _run_b(), _tool_step(n))
        lines = _frame(view, height=24)
        assert len(lines) <= 24
        assert sum(RUN_B[:12] in line for line in lines) == 3  # and one row held for run A's failed step
        assert sum("server_error in create_ticket" in line for line in lines) == 1
        assert any(re.search(r"… \d+ more", line) for line in lines)
        assert max(len(line) for line in lines) <= 80

    def test_long_unit_id_shortens_the_waterfall_title(self) -> None:
        """A unit id too long for the waterfall's title is cut with `…` so the title keeps to one 80-column line."""
        view = _view()
        long_id = "resp_" + "0123456789abcdef" * 5
        run = make_run(id=long_id, created_at=100, completed_at=110)
        _finish(view, run)
        lines = _frame(view)
        title = next(line for line in lines if line.startswith("last finished run "))
        assert title.rstrip().endswith("…: completed in 10s, 0 steps")
        assert len(title.rstrip()) == 80


class TestSummary:
    def test_counts_and_ratios_come_from_the_observations(self) -> None:
        """Finished units count by their runs status, records and record failures by their run-steps status, and
        tokens by their token observations; cancelled is not a failure."""
        view = _view()
        _finished_run_a(view)  # three steps, one failed, no usage; the run completed
        _finish(view, make_run(id="run_x", status="cancelled", cancelled_at=120))
        _finish(view, make_run(id="run_y", status="expired", expires_at=140))
        _step(view, _run_b(), _tool_step(0))
        assert view.units == {"completed": 1, "cancelled": 1, "expired": 1}
        assert (view.finished, view.failed_units) == (3, 1)
        assert (view.records, view.failed_records, view.tokens) == (4, 1, 2211)
        text = "\n".join(_frame(view))
        assert "run failure ratio 33.3%" in text
        assert "steps exported 4" in text
        assert "step failure ratio 25.0%" in text


class TestRecentList:
    def test_failed_step_stays_after_20_completed(self) -> None:
        """A failed step stays in the recent list, below the newer ones, after 20 completed steps followed it."""
        clock = FakeClock()
        view = _view(clock)
        failed = _tool_step(
            0, status="failed", completed_at=None, failed_at=210, last_error=LastError("rate_limit_exceeded", "")
        )
        _step(view, _run_b(), failed)
        for n in range(1, 21):
            clock.advance(1)
            _step(view, _run_b(), _tool_step(n))
        rows = view.recent_rows()
        assert len(rows) == 12
        assert [r.status for r in rows] == ["completed"] * 11 + ["failed"]
        lines = _frame(view)
        failed_lines = [line for line in lines if " failed " in line and RUN_B[:12] in line]
        assert len(failed_lines) == 1
        assert "rate_limit_exceeded in get_stock" in failed_lines[0]  # the error code first, never cut off
        assert failed_lines[0].rstrip().endswith("20s")  # its age tells it apart from the newest rows

    def test_expired_and_cancelled_steps_are_kept_too(self) -> None:
        """Expired and cancelled steps keep their rows like failed ones, newest first; an error that only repeats
        the status (`expired`) is not put in front of the label."""
        view = _view()
        _step(view, _run_b(), _tool_step(0, status="expired", completed_at=None, expired_at=230))
        _step(view, _run_b(), _tool_step(1, status="cancelled", completed_at=None, cancelled_at=231))
        for n in range(2, 40):
            _step(view, _run_b(), _tool_step(n))
        rows = view.recent_rows()
        assert [r.status for r in rows] == ["completed"] * 10 + ["cancelled", "expired"]
        assert rows[-1].label == "get_stock_price"
        assert rows[-1].duration == 30  # created 200, expired 230

    def test_reserve_is_bounded_and_newer_problems_win(self) -> None:
        """At most four rows are held for older problems; problems among the newest rows are shown as they are."""
        view = _view()
        for n in range(6):
            _step(view, _run_b(), _tool_step(n, status="failed", completed_at=None, failed_at=220))
        for n in range(6, 26):
            _step(view, _run_b(), _tool_step(n))
        _step(view, _run_b(), _tool_step(26, status="cancelled", completed_at=None, cancelled_at=240))
        rows = view.recent_rows()
        assert [r.status for r in rows] == ["cancelled"] + ["completed"] * 8 + ["failed"] * 3
        assert [r.label.endswith("get_stock_price") for r in rows] == [True] * 12
        # Newest first: sequence numbers only decrease down the list.
        assert [r.seq for r in rows] == sorted((r.seq for r in rows), reverse=True)

    def test_small_list_reserves_half(self) -> None:
        """A four-row list keeps two rows for problems and two for the newest steps."""
        view = _view()
        for n in range(3):
            _step(view, _run_b(), _tool_step(n, status="failed", completed_at=None, failed_at=220))
        for n in range(3, 10):
            _step(view, _run_b(), _tool_step(n))
        assert [r.status for r in view.recent_rows(4)] == ["completed", "completed", "failed", "failed"]

    def test_step_labels_name_tools_else_the_step_type(self) -> None:
        """A step's label names its tools (from its tool spans), else its type; its tokens and duration are its
        own, from its observations and its span."""
        view = _view()
        run = make_run(id=RUN_A)
        tools = (ToolCall("c1", "function", "lookup_order"), ToolCall("c2", "file_search"))
        _step(view, run, make_step(id="s1", run_id=RUN_A, type="tool_calls", tool_calls=tools, created_at=104,
                                   completed_at=111, usage=Usage(30, 12, 42)))  # fmt: skip
        _step(view, run, make_step(id="s2", run_id=RUN_A, created_at=111, completed_at=113))
        rows = view.recent_rows()
        assert [(r.unit_id, r.label, r.status, r.duration, r.tokens) for r in rows] == [
            (RUN_A, "message_creation", "completed", 2, 0),
            (RUN_A, "lookup_order, file_search", "completed", 7, 42),
        ]
        assert not any(r.unit for r in rows)

    def test_a_run_without_steps_is_listed_itself(self) -> None:
        """A run that finishes without any step committed is listed as itself (its agent, its error first), and the
        list then says it holds steps and runs."""
        view = _view()
        _step(view, _run_b(), _tool_step(0))
        failed = make_run(id=RUN_A, status="failed", failed_at=103, last_error=LastError("server_error", "boom"))
        _finish(view, failed, assistant_name="Support Agent")
        top = view.recent_rows()[0]
        assert (top.unit_id, top.label, top.status, top.duration, top.unit) == (
            RUN_A, "server_error in Support Agent", "failed", 3, True
        )  # fmt: skip
        lines = _frame(view)
        assert any(line.startswith("recent steps and runs, newest first") for line in lines)
        assert any(re.match(r" run\s+step or agent\s+status", line) for line in lines)

    def test_a_run_with_steps_is_not_listed_itself(self) -> None:
        """A run whose steps were heard is not listed when it finishes: its steps stand for it."""
        view = _view()
        _finished_run_a(view)
        assert [r.unit for r in view.recent_rows()] == [False, False, False]
        assert any(line.startswith("recent steps, newest first") for line in _frame(view))


class TestWaterfall:
    def test_last_finished_run_is_drawn_with_its_tools(self) -> None:
        """The frame draws the last finished run's waterfall: the run, each step in order, and its tool calls."""
        view = _view()
        _finished_run_a(view)
        _step(view, _run_b(), _tool_step(0, name="get_weather"))
        lines = _frame(view)
        start = next(i for i, line in enumerate(lines) if line.startswith("last finished run"))
        assert lines[start].startswith(f"last finished run {RUN_A}: completed in 34s, 3 steps")
        body = lines[start + 1 :]
        expected = [
            r"invoke_agent asst_1\s+completed\s+34s\s+█",
            r"run_step message_creation\s+completed\s+3s\s+█",
            r"run_step tool_calls\s+completed\s+16s\s+ *█",
            r"  execute_tool lookup_order\s+completed\s+16s\s+ *█",
            r"  execute_tool file_search\s+completed\s+16s\s+ *█",
            r"run_step tool_calls\s+failed\s+10s\s+ *█",
            r"  execute_tool create_ticket\s+failed\s+10s\s+ *█",
        ]
        drawn = [line for line in body if "█" in line]
        assert len(drawn) == len(expected)
        for pattern, line in zip(expected, drawn, strict=True):
            assert re.search(pattern, line), (pattern, line)
        assert not any("get_weather" in line for line in body)  # run B has not finished

    def test_step_committed_after_its_run_joins_the_waterfall(self) -> None:
        """A step acknowledged after its run's end still appears in that run's waterfall, in order of its start."""
        view = _view()
        run = make_run(id=RUN_A)
        _step(view, run, make_step(id="late", run_id=RUN_A, created_at=110, completed_at=112, type="tool_calls",
                                   tool_calls=(ToolCall("c", "function", "second_tool"),)))  # fmt: skip
        _finish(view, run)
        _step(view, run, make_step(id="early", run_id=RUN_A, created_at=103, completed_at=105, type="tool_calls",
                                   tool_calls=(ToolCall("c0", "function", "first_tool"),)))  # fmt: skip
        last = view.last_waterfall()
        assert last is not None
        ref, spans, records = last
        assert ref == UnitRef("thread_1", RUN_A)
        assert [s.key for s in spans] == [f"run:{RUN_A}", "step:early", "call:early:c0", "step:late", "call:late:c"]
        assert records == 2
        text = "\n".join(_frame(view))
        assert text.index("execute_tool first_tool") < text.index("execute_tool second_tool")
        assert f"last finished run {RUN_A}: completed in 30s, 2 steps" in text

    def test_steps_of_another_run_stay_out_of_the_waterfall(self) -> None:
        """Only the steps committed for the finished run are drawn under it, not those of a run still going."""
        view = _view()
        run = make_run(id=RUN_A)
        _step(view, _run_b(), _tool_step(0, name="not_this_one"))
        _step(view, run, make_step(id="mine", run_id=RUN_A))
        _finish(view, run)
        last = view.last_waterfall()
        assert last is not None
        assert [s.key for s in last[1]] == [f"run:{RUN_A}", "step:mine"]

    def test_no_run_finished_yet(self) -> None:
        """Before any run finishes, the frame says so instead of drawing an empty waterfall."""
        view = _view()
        _step(view, _run_b(), _tool_step(0))
        assert view.last_waterfall() is None
        assert any(line.startswith("last finished run: none yet") for line in _frame(view))


class TestPlainLine:
    def test_plain_line_counts_runs_steps_failures_tokens_and_pending_spans(self) -> None:
        """The --no-view line reports finished and failed runs, runs in flight, steps, tokens and pending spans."""
        clock = FakeClock()
        view = _view(clock)
        _finished_run_a(view)
        _finish(view, make_run(id=RUN_B, status="failed", failed_at=140))
        line = view.plain_line(12.4)
        assert line == (
            "demo +12s: runs 2 finished (1 failed), 29 in flight; steps 3 (1 failed); tokens 0 (0/s); spans pending 3"
        )
        _step(view, _run_b(), _tool_step(0))
        assert "steps 4 (1 failed); tokens 2211 (221/s);" in view.plain_line(13)
        clock.advance(11)
        assert "tokens 2211 (0/s);" in view.plain_line(24)  # the rate is of the last ten seconds only


class TestAgentsTurns:
    ITEMS = (
        Item("message", "msg_1", status="completed"),
        Item("function_call", "fc_1", call_id="call_1", name="get_weather", status="completed"),
        Item("function_call", "fc_2", call_id="call_2", name="create_ticket", status="failed"),
    )

    def test_finished_turns_are_listed_with_agent_status_duration_and_tokens(self) -> None:
        """Each finished turn adds a row naming its agent (a failed turn's error code first), its status, its span's
        duration and its tokens; the frame holds at 80 columns and speaks of turns and items."""
        view = _agents_view()
        _turn_done(view, _turn(1))
        error = TurnError("rate_limit_exceeded", "The request exceeds the available rate limit.")
        _turn_done(view, _turn(2, "failed", error=error), agent_name="Helper")
        _turn_done(view, _turn(3, "cancelled", started_at=None, usage=None))
        lines = _frame(view)
        assert max(len(line) for line in lines) <= 80
        assert any("turns in flight 29" in line and "turn failure ratio 33.3%" in line for line in lines)
        assert any(line.startswith("recent turns, newest first") for line in lines)
        assert any(re.match(r" turn\s+agent\s+status", line) for line in lines)
        rows = [line.split() for line in lines if line.startswith(" turn_")]
        assert [r[-4:] for r in rows] == [
            ["cancelled", "12s", "0", "0s"],
            ["failed", "12s", "1500", "0s"],
            ["completed", "12s", "1500", "0s"],
        ]
        assert rows[1][1:4] == ["rate_limit_exceeded", "in", "Helper"]
        assert rows[2][1] == AGENT
        assert not any(re.search(r"\bsteps?\b", line) for line in lines)

    def test_items_count_as_records(self) -> None:
        """The items a turn commits with it count as items exported, failed ones towards the item failure ratio, and
        the turn's waterfall title says how many it had."""
        view = _agents_view()
        _turn_done(view, _turn(1), items=self.ITEMS)
        assert (view.records, view.failed_records, view.tokens) == (3, 1, 1500)
        lines = _frame(view)
        assert any("items exported 3" in line and "item failure ratio 33.3%" in line for line in lines)
        assert any(line.startswith("last finished turn turn_001OLyhvbUbVMExd743DEeh: completed in 12s, 3 items")
                   for line in lines)  # fmt: skip

    def test_a_turn_is_a_one_row_waterfall(self) -> None:
        """A turn has no timed records, so its waterfall is its own span alone."""
        view = _agents_view()
        assert any(line.startswith("last finished turn: none yet") for line in _frame(view))
        _turn_done(view, _turn(1), items=self.ITEMS, agent_name="Support Agent")
        last = view.last_waterfall()
        assert last is not None
        assert [s.name for s in last[1]] == ["invoke_agent Support Agent"]
        drawn = [line for line in _frame(view) if "█" in line]
        assert len(drawn) == 1
        assert re.search(r"invoke_agent Support Agent\s+completed\s+12s\s+█", drawn[0]), drawn

    def test_plain_line_counts_turns_items_failures_and_tokens(self) -> None:
        """The agents --no-view line reports finished and failed turns, turns in flight, items, tokens and pending
        spans, in the same form as the Assistants line."""
        view = _agents_view()
        _turn_done(view, _turn(1), items=self.ITEMS)
        _turn_done(view, _turn(2, "failed", error=TurnError("server_error", "boom")))
        assert view.plain_line(7.2) == (
            "demo +7s: turns 2 finished (1 failed), 29 in flight; items 3 (1 failed); tokens 3000 (300/s); "
            "spans pending 3"
        )


class TestResponses:
    S = 1_000_000_000
    CALLS = (
        ResponseItem("web_search_call", "ws_1", status="completed"),
        ResponseItem("function_call", "fc_1", call_id="call_1", name="lookup_order", status="completed"),
    )

    def _done(self, view: DemoView, timed: bool) -> None:
        """Tell `view` that a response with two tool calls finished; with `timed`, as the proxy saw them streamed."""
        response = Response(id="resp_" + "a" * 48, status="completed", created_at=100, completed_at=108,
                            model="gpt-5", usage=TokenUsage(900, 100, 1000, 0, 0),
                            output=(*self.CALLS, ResponseItem("message", "msg_1", status="completed")))  # fmt: skip
        times = {"ws_1": (101 * self.S, 103 * self.S), "fc_1": (103 * self.S, 107 * self.S)} if timed else {}
        telemetry = RESPONSES.finish(response, ResponseContext(tool_times=times))
        view(Committed(UnitRef("responses", response.id), telemetry, finished=True))

    def _view(self) -> DemoView:
        return DemoView(_tracking, metrics_url="http://127.0.0.1:49152/metrics", nouns=("response", "item"),
                        traces="off (set OTEL_EXPORTER_OTLP_ENDPOINT)", proxy_url="http://127.0.0.1:49153/v1",
                        clock=FakeClock().monotonic)  # fmt: skip

    def test_a_response_is_one_row_and_its_proxy_timed_tool_calls_join_its_waterfall(self) -> None:
        """A response is listed as one row; the tool calls the proxy timed are drawn under it in its waterfall
        (without timings its waterfall is its own span alone), and the summary holds at 80 columns."""
        view = self._view()
        self._done(view, timed=True)
        assert [(r.label, r.status, r.duration, r.unit) for r in view.recent_rows()] == [
            ("chat gpt-5", "completed", 8, True)
        ]
        last = view.last_waterfall()
        assert last is not None
        assert [s.name for s in last[1]] == ["chat gpt-5", "execute_tool web_search_call", "execute_tool lookup_order"]
        lines = _frame(view)
        assert max(len(line) for line in lines) <= 80
        # The long nouns close the summary's columns up rather than wrap them.
        assert any("responses in flight 29" in line and "response failure ratio 0.0%" in line for line in lines)
        assert any("items exported 3" in line and "item failure ratio 0.0%" in line for line in lines)
        assert any(line.startswith("last finished response resp_") and line.endswith("3 items") for line in lines)
        drawn = [line for line in lines if "█" in line]
        assert [line.split()[:2] for line in drawn] == [["chat", "gpt-5"], ["execute_tool", "web_search_call"],
                                                         ["execute_tool", "lookup_order"]]  # fmt: skip
        untimed = self._view()
        self._done(untimed, timed=False)
        last = untimed.last_waterfall()
        assert last is not None and [s.name for s in last[1]] == ["chat gpt-5"]

    def test_the_footer_shows_the_proxy_beside_the_metrics_within_80_columns(self) -> None:
        """With a proxy the footer's first line names it after the metrics URL, and Ctrl-C moves to the traces line,
        so that five-digit ports fit 80 columns; without one the traces line still takes Ctrl-C."""
        lines = _frame(self._view())
        assert lines[-2:] == [
            "metrics: http://127.0.0.1:49152/metrics   proxy: http://127.0.0.1:49153/v1",
            "traces: off (set OTEL_EXPORTER_OTLP_ENDPOINT)   Ctrl-C to stop",
        ]
        assert _frame(_view())[-2:] == [
            "metrics: http://127.0.0.1:9464/metrics",
            "traces: off (set OTEL_EXPORTER_OTLP_ENDPOINT)   Ctrl-C to stop",
        ]


SIM = Api(url="http://127.0.0.1:49154/v1", key="sk-sim", protocol="x")


def _with_api(protocol: str, nouns: tuple[str, str] = ("run", "step"), warnings: LastWarning | None = None) -> DemoView:
    """A view as the demo makes it: told where the simulated API is, and given the diverted log records."""
    api = dataclasses.replace(SIM, protocol=protocol, container=protocols.get(protocol).container)
    return DemoView(_tracking, metrics_url="http://127.0.0.1:49152/metrics", nouns=nouns,
                    traces="off (set OTEL_EXPORTER_OTLP_ENDPOINT)", api=api, warnings=warnings,
                    clock=FakeClock().monotonic)  # fmt: skip


def _copied(lines: list[str]) -> argparse.Namespace:
    """The inspect command among `lines`, copied as a user would (its lines joined at the backslashes), parsed
    by stepscope's own command line; its environment prefix must be the simulator's key."""
    start = next(i for i, line in enumerate(lines) if line.startswith("OPENAI_API_KEY="))
    end = next(i for i in range(start, len(lines)) if not lines[i].endswith(" \\"))
    words = shlex.split(" ".join(line.removesuffix("\\") for line in lines[start : end + 1]))
    assert words[0] == "OPENAI_API_KEY=sk-sim" and words[1] == "stepscope"
    return build_parser().parse_args(words[2:])


class TestInspectCommand:
    """Below the waterfall, the command that reads the last finished unit from the simulator, whole, in 80
    columns; it names the container with the flag the protocol names it by, and none for Responses."""

    def test_a_run_is_inspected_on_its_thread(self) -> None:
        """For an Assistants run, the command carries the run id and `--thread` with the thread id, whole."""
        view = _with_api("assistants")
        run = _finished_run_a(view)
        lines = _frame(view)
        assert max(len(line) for line in lines) <= 80
        args = _copied(lines)
        assert (args.command, args.unit_id, args.container) == ("inspect", RUN_A, run.thread_id)
        assert vars(args)["setting:api.protocol"] == "assistants"
        assert vars(args)["setting:api.base_url"] == SIM.url
        assert any(line.startswith("simulator: http://127.0.0.1:49154/v1   metrics: ") for line in lines)
        assert "--thread " + run.thread_id in "\n".join(lines)

    def test_a_turn_is_inspected_on_its_session(self) -> None:
        """For an Agents API turn, the command carries the turn id and `--session` with the session id."""
        view = _with_api("agents", ("turn", "item"))
        _turn_done(view, _turn(1))
        lines = _frame(view)
        assert max(len(line) for line in lines) <= 80
        args = _copied(lines)
        assert (args.unit_id, args.container) == (_turn(1).id, SESSION)
        assert "--session " + SESSION in "\n".join(lines)

    def test_a_response_needs_no_container(self) -> None:
        """For a response (container `project`, no id), the command carries the response id alone, whole though
        the waterfall's title cuts it."""
        view = _with_api("responses", ("response", "item"))
        TestResponses()._done(view, timed=False)
        lines = _frame(view)
        assert max(len(line) for line in lines) <= 80
        args = _copied(lines)
        assert (args.unit_id, args.container) == ("resp_" + "a" * 48, None)

    def test_nothing_to_inspect_before_a_unit_finished(self) -> None:
        """Before any unit finished the frame has no command, only where the API, metrics and traces are."""
        lines = _frame(_with_api("assistants"))
        assert not any("stepscope inspect" in line for line in lines)
        assert lines[-2:] == [
            "simulator: http://127.0.0.1:49154/v1   metrics: http://127.0.0.1:49152/metrics",
            "traces: off (set OTEL_EXPORTER_OTLP_ENDPOINT)   Ctrl-C to stop",
        ]

    def test_shell_lines_never_split_a_word_and_keep_to_the_width(self) -> None:
        """Words are packed into lines that end in a backslash and fit the width; a word is never split."""
        words = [f"word{i:02d}-" + "x" * 10 for i in range(12)]
        lines = shell_lines(words, width=40)
        assert all(len(line) <= 40 for line in lines)
        assert all(line.endswith(" \\") for line in lines[:-1])
        assert " ".join(line.removesuffix(" \\").strip() for line in lines).split() == words


class TestWarnings:
    def test_the_newest_warning_is_the_last_line_cut_to_the_width(self) -> None:
        """A record diverted to the view shows as the frame's last line, one line of at most 80 columns, with the
        number of records when there were several."""
        warnings = LastWarning()
        logger = logging.getLogger("stepscope.test_demo_view")
        logger.addHandler(warnings)
        logger.propagate = False
        try:
            view = _with_api("assistants", warnings=warnings)
            assert not any("WARNING" in line for line in _frame(view))
            logger.warning("span export failing: %s", "x" * 200)
            assert re.fullmatch(r"\d\d:\d\d:\d\d WARNING stepscope.test_demo_view: span export failing: x+…",
                                _frame(view)[-1])  # fmt: skip
            logger.error("second\nwith a second line")
            last = _frame(view)[-1]
            assert re.fullmatch(r"2 log lines, the last: \d\d:\d\d:\d\d ERROR stepscope.test_demo_view: second",
                                last), last  # fmt: skip
            assert max(len(line) for line in _frame(view)) <= 80
        finally:
            logger.removeHandler(warnings)
            logger.propagate = True


async def test_view_hears_a_real_pipeline() -> None:
    """Through a real pipeline, committed steps and then their run reach the view as records and a finished unit."""
    store = SqliteStore(":memory:")
    store.open()
    pipeline = Pipeline(AsyncStore(store), RUNS, RecordingMetricSink(), Counters())
    view = _view()
    pipeline.add_listener(view)
    run = make_run(id=RUN_A)
    first = make_step(run, id="s1", usage=Usage(10, 5, 15))
    second = make_step(run, id="s2", type="tool_calls", created_at=105, completed_at=109,
                       tool_calls=(ToolCall("c1", "function", "lookup_order"),))  # fmt: skip
    assert await pipeline.commit(Commit(run.ref, run, records=(first, second), record_ids=("s1", "s2"), cursor="s2"))
    assert await pipeline.commit(Commit(run.ref, run, finish="Support Agent", finished=True))
    assert (view.records, view.tokens, view.units) == (2, 15, {"completed": 1})
    assert [r.label for r in view.recent_rows()] == ["lookup_order", "message_creation"]
    last = view.last_waterfall()
    assert last is not None
    assert [s.name for s in last[1]] == [
        "invoke_agent Support Agent", "run_step message_creation", "run_step tool_calls", "execute_tool lookup_order"
    ]  # fmt: skip


def test_view_knows_no_protocol() -> None:
    """The view's module imports nothing from `stepscope.protocols` and names no protocol."""
    source = Path(demoview.__file__).read_text(encoding="utf-8")
    imported = [node.module or "" for node in ast.walk(ast.parse(source)) if isinstance(node, ast.ImportFrom)] + [
        alias.name for node in ast.walk(ast.parse(source)) if isinstance(node, ast.Import) for alias in node.names
    ]
    assert not [m for m in imported if m.startswith("stepscope.protocols")], imported
    assert not re.search(r"""["'](assistants|agents|responses)["']""", source)


class TestDemoProtocols:
    def test_choices_are_registered_protocols_the_simulator_serves(self) -> None:
        """`--protocol` offers the registered protocols the simulator serves, in registration order."""
        choices = protocol_choices()
        assert choices[:2] == ("assistants", "agents")
        assert set(choices) <= set(protocols.names())

    def test_a_protocol_the_demo_cannot_simulate_is_a_config_error(self) -> None:
        """A simulator mode that is no registered protocol (`both`) is refused before anything starts; no protocol
        given means the default one."""
        with pytest.raises(ConfigError, match="--protocol: 'both'"):
            _protocol(argparse.Namespace(protocol="both"))
        assert _protocol(argparse.Namespace()) == protocols.DEFAULT

    @pytest.mark.parametrize(("protocol", "threads"), [("assistants", True), ("agents", False), ("responses", False)])
    def test_service_reads_the_chosen_protocol(self, protocol: str, threads: bool) -> None:
        """The service reads the chosen protocol from the simulator; only Assistants is given the workload's threads
        (Agents API sessions are found by listing them) and only Responses the proxy (OpenAI lists no responses);
        OTEL_ settings pass through, others do not."""
        simulator = Simulator(protocol=protocol, external_workload=True)  # as the demo makes it
        env = {"OTEL_SERVICE_NAME": "demo", "STEPSCOPE_THREADS": "thread_x"}
        demo_env = _service_env(protocol, "127.0.0.1:0", env, simulator, "http://sim/v1", state="s.db", otlp=False)
        assert demo_env["STEPSCOPE_PROTOCOL"] == protocol
        assert demo_env["OPENAI_BASE_URL"] == "http://sim/v1"
        assert demo_env["OTEL_SERVICE_NAME"] == "demo"
        assert demo_env["OTEL_TRACES_EXPORTER"] == "none"
        if threads:
            assert demo_env["STEPSCOPE_THREADS"] == ",".join(simulator.thread_ids) != ""
        else:
            assert "STEPSCOPE_THREADS" not in demo_env
        assert demo_env.get("STEPSCOPE_PROXY_LISTEN") == ("127.0.0.1:0" if protocol == "responses" else None)


def test_readme_frame_holds_at_80_columns() -> None:
    """The README's text frame of the live view is a real frame: no line past 80 columns, with a waterfall."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("### The live view") :]
    block = section[section.index("The same frame as text") :].split("```")[1]
    lines = block.strip("\n").splitlines()
    assert lines[0].startswith("╭") and "stepscope demo" in lines[0]
    assert max(len(line) for line in lines) <= 80
    assert any(line.startswith("last finished run run_") for line in lines)


class TestPortProbe:
    def test_a_port_left_in_time_wait_by_a_scrape_is_free(self) -> None:
        """A connection the server closed (a finished scrape) leaves the port in TIME_WAIT: a plain bind is
        refused, but the probe binds as the server does and keeps the requested port."""
        with socket.create_server(("127.0.0.1", 0)) as server:
            port = server.getsockname()[1]
            with socket.create_connection(("127.0.0.1", port)) as client:
                accepted, _ = server.accept()
                accepted.close()  # the server's side closes first: it is the one left in TIME_WAIT
                client.recv(1)
        with socket.socket() as plain, pytest.raises(OSError):
            plain.bind(("127.0.0.1", port))
        assert _free_listen(f"127.0.0.1:{port}") == f"127.0.0.1:{port}"

    def test_a_port_something_listens_on_is_taken(self) -> None:
        """A port another server listens on is taken: the probe returns another free port on the same host."""
        with socket.create_server(("127.0.0.1", 0)) as server:
            port = server.getsockname()[1]
            host, _, other = _free_listen(f"127.0.0.1:{port}").rpartition(":")
        assert host == "127.0.0.1"
        assert int(other) not in (0, port)
