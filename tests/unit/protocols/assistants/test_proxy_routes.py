"""Which requests create or resume runs, whatever the base path, and which traceparent headers are taken."""

from __future__ import annotations

import pytest

from stepscope.mapping.ids import valid_traceparent as tp
from stepscope.protocols.assistants.proxied import (
    CREATE_RUN,
    CREATE_THREAD_AND_RUN,
    CREATES,
    SUBMIT_TOOL_OUTPUTS,
    RunObserver,
    classify,
)
from stepscope.protocols.base import Route
from tests.kit.fakes import Counters
from tests.kit.proxy import RecordingRuns


@pytest.mark.parametrize("base", ["/v1", "/api/projects/p1", "/openai", ""])
def test_run_routes_under_any_base_path(base: str) -> None:
    """The three run routes are recognised under OpenAI, Foundry and Azure OpenAI base paths."""
    assert classify("POST", f"{base}/threads/thread_a/runs") == Route(CREATE_RUN, "thread_a")
    assert classify("POST", f"{base}/threads/runs") == Route(CREATE_THREAD_AND_RUN)
    assert classify("POST", f"{base}/threads/thread_a/runs/run_b/submit_tool_outputs") == Route(
        SUBMIT_TOOL_OUTPUTS, "thread_a", "run_b"
    )


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/threads/thread_a/runs"),
        ("POST", "/v1/threads/thread_a/runs/run_b"),
        ("POST", "/v1/threads/thread_a/runs/run_b/cancel"),
        ("POST", "/v1/threads"),
        ("POST", "/v1/threads/thread_a/messages"),
        ("POST", "/v1/threads/thread_a/runs/run_b/steps"),
        ("POST", "/v1/threads/a/b/runs"),
    ],
)
def test_other_requests_are_only_relayed(method: str, path: str) -> None:
    """Reads, cancels, modifications and messages are not run routes."""
    assert classify(method, path) is None


def test_resume_is_not_a_create() -> None:
    """A traceparent applies to creates only."""
    assert {CREATE_RUN, CREATE_THREAD_AND_RUN} == CREATES
    assert SUBMIT_TOOL_OUTPUTS not in CREATES


def test_traceparent_validation() -> None:
    """Only version-00 traceparents with non-zero lower-case hex ids are taken."""
    good = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    assert tp(good.encode()) == good and tp(b" " + good.encode() + b" ") == good
    for bad in (good.upper(), "00-" + "0" * 32 + "-b7ad6b7169203331-01", good[:-1], "01" + good[2:], "", "x"):
        assert tp(bad.encode()) is None, bad
    assert tp(None) is None


def test_sending_tool_outputs_is_told_when_routed() -> None:
    """The observer tells the feed of a submit as soon as it routes the request, before any answer; creates are
    told only by their answers."""
    runs = RecordingRuns()
    observer = RunObserver(runs, drops=Counters())
    observer.route("POST", "/v1/threads/thread_a/runs/run_b/submit_tool_outputs")
    observer.route("POST", "/v1/threads/thread_a/runs")
    assert runs.calls == [("submit_sent", ("thread_a", "run_b"))]
