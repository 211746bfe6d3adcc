"""An incremental parser of server-sent events (the `text/event-stream` format of the WHATWG HTML standard).

Bytes go in as they arrive, in chunks cut anywhere (inside a line, between `\\r` and `\\n`, inside a UTF-8
character); complete events come out. Lines end with `\\r\\n`, `\\n` or `\\r`; `event:` names the event,
`data:` lines join with `\\n`, `:` starts a comment, `id:` and `retry:` are ignored, an empty line dispatches.

Memory is bounded by `max_event` bytes whatever the input: a line or an event past it is skipped up to its end
and counted in `oversized`, and parsing carries on with the next event.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_MAX_EVENT = 1024 * 1024
"""Bytes of one event at most; a run or step object is a few kilobytes."""


@dataclass(frozen=True, slots=True)
class Event:
    """One dispatched event: its name (`message` when none was given) and its data."""

    event: str
    data: str


class SseParser:
    """Feed bytes with `feed()`, which returns the events they complete.

    >>> parser = SseParser()
    >>> parser.feed(b"event: thread.run.created\\ndata: {}\\n") + parser.feed(b"\\n")
    [Event(event='thread.run.created', data='{}')]
    """

    __slots__ = (
        "_after_cr",
        "_data",
        "_event",
        "_line",
        "_max",
        "_size",
        "_skipping_event",
        "_skipping_line",
        "oversized",
    )

    def __init__(self, max_event: int = DEFAULT_MAX_EVENT) -> None:
        self._max = max_event
        self._line = bytearray()
        self._after_cr = False  # the last byte seen was a CR: a LF right after it ends no second line
        self._skipping_line = False
        self._skipping_event = False
        self._event = ""
        self._data: list[bytes] = []
        self._size = 0  # bytes of the pending event's data lines
        self.oversized = 0

    def feed(self, chunk: bytes) -> list[Event]:
        events: list[Event] = []
        start, size = 0, len(chunk)
        if self._after_cr and size and chunk[0] == 0x0A:
            start = 1
        self._after_cr = False
        while start < size:
            end = _line_end(chunk, start)
            if end < 0:
                self._append(chunk[start:])
                break
            self._append(chunk[start:end])
            if chunk[end] == 0x0D:
                if end + 1 < size:
                    end += chunk[end + 1] == 0x0A
                else:
                    self._after_cr = True
            start = end + 1
            self._end_line(events)
        return events

    def _append(self, part: bytes) -> None:
        if self._skipping_line:
            return
        if len(self._line) + len(part) > self._max:
            self._skipping_line = True
            self._line.clear()
            return
        self._line += part

    def _end_line(self, events: list[Event]) -> None:
        if self._skipping_line:  # a line past the bound spoils its event
            self._skipping_line = False
            self._spoil()
            return
        line = bytes(self._line)
        self._line.clear()
        if not line:
            if not self._skipping_event and (self._data or self._event):
                data = b"\n".join(self._data).decode("utf-8", "replace")
                events.append(Event(self._event or "message", data))
            self._skipping_event = False
            self._event, self._data, self._size = "", [], 0
            return
        if self._skipping_event or line[0] == 0x3A:  # ":" starts a comment
            return
        name, colon, value = line.partition(b":")
        if colon and value[:1] == b" ":
            value = value[1:]
        if name == b"data":
            self._data.append(value)
            self._size += len(value) + 1
            if self._size > self._max:
                self._spoil()
        elif name == b"event":
            self._event = value.decode("utf-8", "replace")

    def _spoil(self) -> None:
        if not self._skipping_event:
            self.oversized += 1
        self._skipping_event = True
        self._event, self._data, self._size = "", [], 0


def _line_end(chunk: bytes, start: int) -> int:
    """Index of the first CR or LF at or after `start`, or -1."""
    lf = chunk.find(b"\n", start)
    cr = chunk.find(b"\r", start, lf if lf >= 0 else len(chunk))
    return cr if cr >= 0 else lf
