"""Reading a routed answer as it passes, for the protocol's `AnswerSink`: events from a stream, or a JSON body.

`AnswerReader` sees the same raw bytes the application got, after it got them, and turns them into sink calls: it
decompresses (gzip or deflate), then splits a `text/event-stream` into events (the sink says which are worth
parsing, by name, before any JSON is parsed) or collects a JSON body and parses it once complete. It never
changes, holds back or delays a byte. What it keeps is bounded: a JSON body up to `max_body` bytes (past that it
gives up and counts `proxy_body_too_large`), one pending event up to `max_body` bytes, and a decompression window of
`_WINDOW` bytes. A body compressed another way, malformed JSON or nesting deeper than the parser allows is counted
as `proxy_unreadable`, never raised.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Mapping
from typing import Any

from stepscope.contract.vocabulary import DropReason
from stepscope.core.records import Drops
from stepscope.protocols.base import AnswerSink
from stepscope.receivers.proxy.sse import SseParser

DEFAULT_MAX_BODY = 1024 * 1024
"""Bytes of a routed JSON answer (or of one event) read at most; a run or response object is a few kilobytes."""
_WINDOW = 64 * 1024  # decompressed bytes produced per step


def _decoder(encoding: str) -> zlib._Decompress | None:
    """A decompressor for gzip or deflate (zlib-wrapped), None for identity; ValueError otherwise."""
    names = [e.strip().lower() for e in encoding.split(",") if e.strip() and e.strip().lower() != "identity"]
    if not names:
        return None
    if names in (["gzip"], ["x-gzip"]):
        return zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    if names == ["deflate"]:
        return zlib.decompressobj(wbits=zlib.MAX_WBITS)
    raise ValueError(encoding)


def parse_json(text: str | bytes | bytearray) -> tuple[bool, Any]:
    """`(True, value)` for valid JSON, `(False, None)` for anything else, absurd nesting included."""
    try:
        return True, json.loads(text)
    except (ValueError, RecursionError):
        return False, None


class AnswerReader:
    """Decodes one 2xx answer to a routed request for `sink`. Call `chunk()` per raw body chunk, then `finish()`.

    `content_type` and `content_encoding` are the answer's headers. Never raises for what the bytes contain; what
    the sink raises propagates (the caller guards it).
    """

    def __init__(
        self,
        sink: AnswerSink,
        *,
        content_type: str,
        content_encoding: str = "",
        max_body: int = DEFAULT_MAX_BODY,
        drops: Drops,
    ) -> None:
        self._sink = sink
        self._max = max_body
        self._drops = drops
        stream = content_type.split(";", 1)[0].strip().lower() == "text/event-stream"
        self._parser = SseParser(max_body) if stream else None
        self._body = bytearray()
        self._active = True
        self._finished = False
        try:
            self._decompress = _decoder(content_encoding)
        except ValueError:
            self._decompress, self._active = None, False
            drops.dropped(DropReason.PROXY_UNREADABLE)

    def chunk(self, raw: bytes) -> None:
        if not self._active or not raw:
            return
        if self._decompress is None:
            self._take(raw)
            return
        try:
            self._take(self._decompress.decompress(raw, _WINDOW))
            while self._active and self._decompress.unconsumed_tail:
                self._take(self._decompress.decompress(self._decompress.unconsumed_tail, _WINDOW))
        except zlib.error:
            self._give_up(DropReason.PROXY_UNREADABLE)

    def finish(self, complete: bool) -> None:
        """The answer ended: `complete` when every byte arrived and went on to the application."""
        if self._finished:
            return
        self._finished = True
        if self._parser is None and complete and self._active:
            ok, value = parse_json(self._body)
            self._body = bytearray()
            if not ok:
                self._drops.dropped(DropReason.PROXY_UNREADABLE)
            else:
                self._sink.body(value)
        self._sink.ended(complete, self._parser is not None)

    def _take(self, data: bytes) -> None:
        if self._parser is None:
            if len(self._body) + len(data) > self._max:
                self._give_up(DropReason.PROXY_BODY_TOO_LARGE)
                return
            self._body += data
            return
        before = self._parser.oversized
        for event in self._parser.feed(data):
            if self._sink.wants(event.event):
                ok, value = parse_json(event.data)
                self._sink.event(event.event, value if ok and isinstance(value, Mapping) else None)
        if self._parser.oversized != before:
            self._drops.dropped(DropReason.PROXY_BODY_TOO_LARGE, self._parser.oversized - before)

    def _give_up(self, reason: DropReason) -> None:
        self._active = False
        self._body = bytearray()
        self._drops.dropped(reason)
