"""Reading routed answers as they pass (`AnswerReader`) for the Assistants observer's sinks: JSON runs, gzip,
streams, bounds, only the run the request started, and observers that fail (`GuardedObserver`)."""

from __future__ import annotations

import gzip
import json
import logging
from collections.abc import Mapping
from typing import Any

from stepscope.core.records import UnitRef
from stepscope.protocols.assistants.proxied import CREATE_RUN, SUBMIT_TOOL_OUTPUTS, RunEvents, RunObserver
from stepscope.protocols.base import Route
from stepscope.receivers.proxy.guard import GuardedObserver, RareLog
from stepscope.receivers.proxy.observe import DEFAULT_MAX_BODY, AnswerReader
from tests.kit.fakes import CallbackDrops
from tests.kit.proxy import RecordingRuns

TP = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
RUN = {"id": "run_1", "object": "thread.run", "thread_id": "thread_1", "status": "queued", "metadata": {}}
STEP = {"id": "step_1", "object": "thread.run.step", "run_id": "run_1", "thread_id": "thread_1", "status": "completed"}


def _sse(*events: tuple[str, Any]) -> bytes:
    return b"".join(f"event: {n}\ndata: {json.dumps(d)}\n\n".encode() for n, d in events)


def _observer(feed: RunEvents, route: Route, ctype: str = "application/json", *, content_encoding: str = "",
              max_body: int = DEFAULT_MAX_BODY, counts: list[str] | None = None) -> AnswerReader:  # fmt: skip
    """The reader the proxy makes for a 2xx answer to `route`, feeding the Assistants observer's sink."""
    counted = [] if counts is None else counts
    drops = CallbackDrops(lambda r, n: counted.extend([r] * n))
    sink = RunObserver(feed, drops=drops).answer(route, TP)
    assert sink is not None
    return AnswerReader(sink, content_type=ctype, content_encoding=content_encoding, max_body=max_body, drops=drops)


def test_json_run_reported_once_complete_with_traceparent() -> None:
    """A run body cut in chunks is reported when complete, with the traceparent, and not when cut short."""
    feed = RecordingRuns()
    body = json.dumps(RUN).encode()
    obs = _observer(feed, Route(CREATE_RUN, "thread_1"))
    obs.chunk(body[:10])
    assert feed.calls == []
    obs.chunk(body[10:])
    obs.finish(True)
    obs.finish(True)
    assert feed.calls == [("run_created", (RUN, TP))]
    cut = _observer(feed, Route(CREATE_RUN, "thread_1"))
    cut.chunk(body[:10])
    cut.finish(False)
    assert len(feed.calls) == 1


def test_own_metadata_traceparent_and_resumes_get_none() -> None:
    """A run carrying its own traceparent, or resumed by submit_tool_outputs, is reported without the header's."""
    feed = RecordingRuns()
    own = {**RUN, "metadata": {"traceparent": TP}}
    for route, run in ((Route(CREATE_RUN, "thread_1"), own), (Route(SUBMIT_TOOL_OUTPUTS, "thread_1", "run_1"), RUN)):
        obs = _observer(feed, route)
        obs.chunk(json.dumps(run).encode())
        obs.finish(True)
    assert [tp for _, tp in feed.of("run_created")] == [None, None]


def test_gzip_body_is_read_and_unknown_encoding_skipped() -> None:
    """A gzip answer is decoded for reading; a brotli one is left unread and counted."""
    feed = RecordingRuns()
    counts: list[str] = []
    obs = _observer(feed, Route(CREATE_RUN, "thread_1"), content_encoding="gzip", counts=counts)
    packed = gzip.compress(json.dumps(RUN).encode())
    for i in range(0, len(packed), 7):
        obs.chunk(packed[i : i + 7])
    obs.finish(True)
    other = _observer(feed, Route(CREATE_RUN, "thread_1"), content_encoding="br", counts=counts)
    other.chunk(b"\x0b\x02")
    other.finish(True)
    assert feed.of("run_created") == [(RUN, TP)] and counts == ["proxy_unreadable"]


def test_too_large_body_is_given_up() -> None:
    """A body past the bound is not kept nor reported, and is counted."""
    feed = RecordingRuns()
    counts: list[str] = []
    obs = _observer(feed, Route(CREATE_RUN, "thread_1"), max_body=100, counts=counts)
    obs.chunk(json.dumps({**RUN, "instructions": "x" * 500}).encode())
    obs.finish(True)
    assert feed.calls == [] and counts == ["proxy_body_too_large"]


def test_stream_events_in_order_then_ended_complete() -> None:
    """A stream's first run event reports the run; every run and step event follows in order; done completes."""
    feed = RecordingRuns()
    done = {**RUN, "status": "completed"}
    body = _sse(("thread.run.created", RUN), ("thread.message.created", {"id": "msg"}),
                ("thread.run.step.completed", STEP), ("thread.run.completed", done))  # fmt: skip
    obs = _observer(feed, Route(CREATE_RUN, "thread_1"), "text/event-stream; charset=utf-8")
    for i in range(0, len(body), 13):
        obs.chunk(body[i : i + 13])
    obs.chunk(b"event: done\ndata: [DONE]\n\n")
    obs.finish(True)
    assert [name for name, _ in feed.calls] == ["run_created"] + ["stream_event"] * 3 + ["stream_ended"]
    assert [e for e, _ in feed.of("stream_event")] == [
        "thread.run.created", "thread.run.step.completed", "thread.run.completed"
    ]  # fmt: skip
    assert feed.of("stream_ended") == [("thread_1", "run_1", True)]


def test_step_deltas_are_neither_parsed_nor_fed() -> None:
    """A stream's `thread.run.step.delta` events reach no feed call and are not parsed (a broken one counts nothing)."""
    feed = RecordingRuns()
    counts: list[str] = []
    obs = _observer(feed, Route(SUBMIT_TOOL_OUTPUTS, "thread_1", "run_1"), "text/event-stream", counts=counts)
    obs.chunk(_sse(("thread.run.step.delta", {"id": "step_1", "object": "thread.run.step.delta"})))
    obs.chunk(b"event: thread.run.step.delta\ndata: {not json\n\n")
    obs.chunk(_sse(("thread.run.step.completed", STEP)))
    obs.finish(True)
    assert [e for e, _ in feed.of("stream_event")] == ["thread.run.step.completed"]
    assert counts == []


def test_stream_without_done_is_incomplete_and_keeps_path_ids() -> None:
    """A stream that ends before `done` is incomplete; with no event, the path's ids are what is known."""
    feed = RecordingRuns()
    obs = _observer(feed, Route(SUBMIT_TOOL_OUTPUTS, "thread_9", "run_9"), "text/event-stream")
    obs.chunk(b'event: thread.run.queued\ndata: {"id": "run_9", "obj')
    obs.finish(True)
    assert feed.calls == [("stream_ended", ("thread_9", "run_9", False))]


def test_only_the_run_the_request_started_is_reported() -> None:
    """A stream whose later events name another run, or a resume answered with another run, reports nothing of that
    run: each such event is counted as unreadable, so one answer can never make stepscope track runs it did not
    start."""
    feed = RecordingRuns()
    counts: list[str] = []
    forged = {**RUN, "id": "run_forged"}
    body = _sse(("thread.run.created", RUN), ("thread.run.in_progress", forged),
                ("thread.run.step.completed", {**STEP, "run_id": "run_forged"}))  # fmt: skip
    obs = _observer(feed, Route(CREATE_RUN, "thread_1"), "text/event-stream", counts=counts)
    obs.chunk(body)
    obs.finish(True)
    resumed = _observer(feed, Route(SUBMIT_TOOL_OUTPUTS, "thread_1", "run_other"), counts=counts)
    resumed.chunk(json.dumps(RUN).encode())
    resumed.finish(True)
    assert [r["id"] for r, _ in feed.of("run_created")] == ["run_1"]
    assert [d["id"] for _, d in feed.of("stream_event")] == ["run_1"]
    assert counts == ["proxy_unreadable"] * 3


class _Failing:
    def run_created(self, run: Mapping[str, Any], traceparent: str | None) -> None:
        raise ValueError("nope")

    def stream_event(self, event: str, data: Mapping[str, Any]) -> None:
        raise ValueError("nope")

    def stream_ended(self, ref: UnitRef, complete: bool) -> None:
        raise ValueError("nope")

    def submit_sent(self, ref: UnitRef) -> None:
        raise ValueError("nope")


def test_guarded_observer_counts_and_logs_rarely(caplog: Any) -> None:
    """Every failing sink call is counted and goes no further; the log says so once per minute with the number left
    out."""
    now = [0.0]
    counts: list[str] = []
    drops = CallbackDrops(lambda r, n: counts.extend([r] * n))
    guarded = GuardedObserver(RunObserver(_Failing(), drops=drops), drops=drops, monotonic=lambda: now[0])
    for _ in range(5):
        sink = guarded.answer(Route(CREATE_RUN, "thread_1"), None)
        assert sink is not None
        sink.body(RUN)
        sink.event("thread.run.created", RUN)
    now[0] = 61.0
    stream = guarded.answer(Route(SUBMIT_TOOL_OUTPUTS, "thread_1", "run_1"), None)
    assert stream is not None
    stream.ended(False, True)
    assert guarded.failures == 11 and counts == ["proxy_observer_error"] * 11
    lines = [r.getMessage() for r in caplog.records if "observing an answer failed" in r.getMessage()]
    assert len(lines) == 2 and "9 more since the last report" in lines[1]


def test_rare_log_limits_each_kind_on_its_own(caplog: Any) -> None:
    """One kind's flood does not hold back another's first line, and each reports only its own left-out count."""
    now = [0.0]
    rare = RareLog(logging.getLogger("stepscope.receivers.proxy"), lambda: now[0])
    for _ in range(3):
        rare.warning("timeout", "upstream %s slow", "a")
    rare.warning("cut", "upstream %s broke off", "a")
    now[0] = 60.0
    rare.warning("timeout", "upstream %s slow", "a")
    rare.warning("cut", "upstream %s broke off", "a")
    assert [r.getMessage() for r in caplog.records] == [
        "upstream a slow",
        "upstream a broke off",
        "upstream a slow (2 more since the last report)",
        "upstream a broke off",
    ]
