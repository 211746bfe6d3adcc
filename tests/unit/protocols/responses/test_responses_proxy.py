"""What the Responses protocol makes of proxied answers: which requests it routes, and what each answer reports."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from stepscope.protocols.base import AnswerSink, Route
from stepscope.protocols.responses.proxied import ResponseObserver, classify
from tests.kit.fakes import Counters

TP = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


class Heard:
    """A `ResponseEvents` that keeps what it is told."""

    def __init__(self) -> None:
        self.responses: list[tuple[str, str, str | None, float, bool]] = []
        self.tools: list[tuple[str, str, int, int]] = []
        self.ended: list[str] = []

    def seen(self, data: Mapping[str, Any], traceparent: str | None, *, at: float, streaming: bool) -> None:
        self.responses.append((data["id"], data.get("status", ""), traceparent, at, streaming))

    def tool_timed(self, response_id: str, item_id: str, start_ns: int, end_ns: int) -> None:
        self.tools.append((response_id, item_id, start_ns, end_ns))

    def stream_ended(self, response_id: str) -> None:
        self.ended.append(response_id)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def sink_for(method: str, path: str, traceparent: str | None = TP) -> tuple[AnswerSink, Heard, Counters, Clock]:
    heard, drops, clock = Heard(), Counters(), Clock()
    observer = ResponseObserver(heard, drops=drops, wall=clock)
    route = observer.route(method, path)
    assert route is not None
    sink = observer.answer(route, traceparent)
    assert sink is not None
    return sink, heard, drops, clock


def response(rid: str, status: str) -> dict[str, Any]:
    return {"id": rid, "object": "response", "status": status, "created_at": 100}


def lifecycle(sink: AnswerSink, event: str, rid: str, status: str) -> None:
    assert sink.wants(event)
    sink.event(event, {"type": event, "response": response(rid, status), "sequence_number": 0})


def item(sink: AnswerSink, event: str, item_id: str, item_type: str = "function_call") -> None:
    assert sink.wants(event)
    sink.event(event, {"type": event, "item": {"id": item_id, "type": item_type}, "output_index": 0})


class TestRoutes:
    @pytest.mark.parametrize(
        ("method", "path", "route"),
        [
            ("POST", "/v1/responses", Route("create_response")),
            ("POST", "/api/projects/p/openai/v1/responses/", Route("create_response")),
            ("GET", "/v1/responses", Route("responses_socket")),
            ("GET", "/v1/responses/resp_1", Route("read_response", unit_id="resp_1")),
            ("POST", "/v1/responses/resp_1/cancel", Route("read_response", unit_id="resp_1")),
            ("GET", "/v1/responses/resp_1/input_items", None),
            ("DELETE", "/v1/responses/resp_1", None),
            ("POST", "/v1/threads/thread_1/runs", None),
            ("POST", "/v1/conversations", None),
        ],
    )
    def test_routes(self, method: str, path: str, route: Route | None) -> None:
        """Creating, reading, cancelling and the WebSocket path are routed, on OpenAI's and Foundry's paths; other
        requests are relayed unobserved."""
        assert classify(method, path) == route


class TestAnswers:
    def test_a_json_answer_reports_its_response_with_the_traceparent(self) -> None:
        """A create's JSON body is the response it created, reported once with the request's traceparent."""
        sink, heard, drops, _ = sink_for("POST", "/v1/responses")
        sink.body(response("resp_1", "completed"))
        sink.ended(True, False)
        assert heard.responses == [("resp_1", "completed", TP, 100.0, False)]
        assert heard.ended == [] and drops.counts == {}

    def test_a_stream_reports_lifecycle_and_tool_timings(self) -> None:
        """Each lifecycle event reports the response; a tool-call item is timed from added to done; deltas and
        other items are not wanted or timed; a completed stream does not ask for a read."""
        sink, heard, _, clock = sink_for("POST", "/v1/responses")
        lifecycle(sink, "response.created", "resp_1", "in_progress")
        clock.now = 101.0
        item(sink, "response.output_item.added", "fc_1")
        item(sink, "response.output_item.added", "msg_1", "message")
        assert not sink.wants("response.output_text.delta")
        clock.now = 102.5
        item(sink, "response.output_item.done", "fc_1")
        item(sink, "response.output_item.done", "msg_1", "message")
        lifecycle(sink, "response.completed", "resp_1", "completed")
        sink.ended(True, True)
        assert [(r, s) for r, s, *_ in heard.responses] == [("resp_1", "in_progress"), ("resp_1", "completed")]
        assert all(streaming for *_, streaming in heard.responses)
        assert heard.tools == [("resp_1", "fc_1", 101_000_000_000, 102_500_000_000)]
        assert heard.ended == []

    def test_a_stream_cut_short_asks_for_a_read(self) -> None:
        """A stream that ends before its response did says so, so the response is read instead."""
        sink, heard, _, _ = sink_for("POST", "/v1/responses")
        lifecycle(sink, "response.created", "resp_1", "in_progress")
        sink.ended(False, True)
        assert heard.ended == ["resp_1"]

    def test_events_naming_another_response_are_counted_and_ignored(self) -> None:
        """One answer speaks of one response: a forged or confused event naming another is counted, not
        reported; an event without data is counted too."""
        sink, heard, drops, _ = sink_for("POST", "/v1/responses")
        lifecycle(sink, "response.created", "resp_1", "in_progress")
        lifecycle(sink, "response.completed", "resp_2", "completed")
        sink.event("response.completed", None)
        assert [r for r, *_ in heard.responses] == ["resp_1"]
        assert drops.counts == {"proxy_unreadable": 2}

    def test_a_read_answer_is_bound_to_its_path(self) -> None:
        """A read names its response: a body about another one is counted; the traceparent of a read is not the
        response's parent."""
        sink, heard, drops, _ = sink_for("GET", "/v1/responses/resp_1")
        sink.body(response("resp_2", "completed"))
        sink.body(response("resp_1", "completed"))
        assert heard.responses == [("resp_1", "completed", None, 100.0, False)]
        assert drops.counts == {"proxy_unreadable": 1}

    def test_a_websocket_carries_responses_one_after_another(self) -> None:
        """On a WebSocket each response.created starts the next response; one left unfinished when the next
        starts is handed to reading."""
        sink, heard, drops, _ = sink_for("GET", "/v1/responses")
        lifecycle(sink, "response.created", "resp_1", "in_progress")
        lifecycle(sink, "response.completed", "resp_1", "completed")
        lifecycle(sink, "response.created", "resp_2", "in_progress")
        lifecycle(sink, "response.created", "resp_3", "in_progress")
        sink.ended(True, True)
        assert [r for r, *_ in heard.responses] == ["resp_1", "resp_1", "resp_2", "resp_3"]
        assert heard.ended == ["resp_2", "resp_3"]
        assert all(tp is None for _, _, tp, _, _ in heard.responses) and drops.counts == {}
