"""The incremental SSE parser: any chunking gives the same events, line endings, comments, bounds."""

from __future__ import annotations

from stepscope.receivers.proxy.sse import Event, SseParser

STREAM = (
    b'event: thread.run.created\ndata: {"id":"run_1"}\n\n'
    b": keep-alive comment\r\n\r\n"
    b'event: thread.run.step.created\r\ndata: {"a":\r\ndata: 1}\r\nid: 7\r\n\r\n'
    b"event:done\rdata:[DONE]\r\r"
)
EXPECTED = [
    Event("thread.run.created", '{"id":"run_1"}'),
    Event("thread.run.step.created", '{"a":\n1}'),
    Event("done", "[DONE]"),
]


def _parse(chunks: list[bytes], max_event: int = 1024) -> tuple[list[Event], SseParser]:
    parser = SseParser(max_event)
    events: list[Event] = []
    for chunk in chunks:
        events += parser.feed(chunk)
    return events, parser


def test_every_split_point_gives_the_same_events() -> None:
    """Cutting the stream in two at any byte (inside a CRLF too) yields exactly the events of the whole."""
    assert _parse([STREAM])[0] == EXPECTED
    for cut in range(len(STREAM) + 1):
        assert _parse([STREAM[:cut], STREAM[cut:]])[0] == EXPECTED, cut


def test_byte_by_byte_feeding() -> None:
    """One byte at a time still yields every event once."""
    assert _parse([STREAM[i : i + 1] for i in range(len(STREAM))])[0] == EXPECTED


def test_an_oversized_event_is_skipped_and_counted() -> None:
    """An event past the bound is dropped and counted; the events around it come through."""
    big = b"event: thread.run.step.delta\ndata: " + b"x" * 5000 + b"\n\n"
    events, parser = _parse([STREAM[:52], big[:3000], big[3000:], STREAM[52:]], max_event=1024)
    assert events == EXPECTED and parser.oversized == 1


def test_many_data_lines_past_the_bound_spoil_only_their_event() -> None:
    """Data lines that together pass the bound drop their event, not the next one."""
    lines = b"event: thread.run.step.delta\n" + b"data: 0123456789\n" * 200 + b"\n"
    events, parser = _parse([lines, b"event: done\ndata: [DONE]\n\n"], max_event=1024)
    assert events == [Event("done", "[DONE]")] and parser.oversized == 1
