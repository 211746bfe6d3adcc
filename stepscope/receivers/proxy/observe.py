"""Reading a run route's answer as it passes: a run object from a JSON body, events from a stream.

`AnswerObserver` sees the same raw bytes the application gets, after it got them, and tells the feed what they
say. It never changes, holds back or delays a byte. What it keeps is bounded: a JSON body up to `max_body`
bytes (past that it gives up and counts `proxy_body_too_large`), one pending event up to `max_body` bytes, and a
decompression window of `_WINDOW` bytes. A body compressed other than gzip or deflate is not read (counted as
`proxy_unreadable`).
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Callable, Mapping
from typing import Any

from stepscope.receivers.proxy.feed import RunFeed, no_count
from stepscope.receivers.proxy.routes import RunRoute
from stepscope.receivers.proxy.sse import SseParser

DEFAULT_MAX_BODY = 1024 * 1024
"""Bytes of a run route's JSON answer (or of one event) read at most; a run object is a few kilobytes."""
_WINDOW = 64 * 1024  # decompressed bytes produced per step
_RUN_EVENT = "thread.run."
_STEP_EVENT = "thread.run.step."
_DELTA = ".delta"


def _decoder(encoding: str) -> zlib._Decompress | None:
    """A decompressor for gzip or deflate (zlib-wrapped or raw), None for identity; ValueError otherwise."""
    names = [e.strip().lower() for e in encoding.split(",") if e.strip() and e.strip().lower() != "identity"]
    if not names:
        return None
    if names in (["gzip"], ["x-gzip"]):
        return zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    if names == ["deflate"]:
        return zlib.decompressobj(wbits=zlib.MAX_WBITS)
    raise ValueError(encoding)


class AnswerObserver:
    """Watches one 2xx answer to a run route. Call `chunk()` per raw body chunk, then `finish()` once.

    `content_type` and `content_encoding` are the answer's headers; `traceparent` is the request's valid
    `traceparent` (passed on for create routes when the run's metadata has none). Must not raise: a bug here
    would be a failed request, so `ProxyApp` guards it all the same.
    """

    def __init__(
        self,
        route: RunRoute,
        feed: RunFeed,
        *,
        content_type: str,
        content_encoding: str = "",
        traceparent: str | None = None,
        max_body: int = DEFAULT_MAX_BODY,
        dropped: Callable[[str, int], None] = no_count,
    ) -> None:
        self._route = route
        self._feed = feed
        self._traceparent = traceparent if route.creates else None
        self._max = max_body
        self._dropped = dropped
        self._stream = content_type.split(";", 1)[0].strip().lower() == "text/event-stream"
        self._body = bytearray()
        self._parser = SseParser(max_body) if self._stream else None
        self._thread_id, self._run_id = route.thread_id, route.run_id
        self._reported = False  # run_created went out
        self._done = False  # the stream's `done` event arrived
        self._active = True
        self._finished = False
        try:
            self._decompress = _decoder(content_encoding)
        except ValueError:
            self._decompress, self._active = None, False
            dropped("proxy_unreadable", 1)

    def chunk(self, raw: bytes) -> None:
        if not self._active or not raw:
            return
        if self._decompress is None:
            self._take(raw)
            return
        try:
            data = self._decompress.decompress(raw, _WINDOW)
            self._take(data)
            while self._active and self._decompress.unconsumed_tail:
                self._take(self._decompress.decompress(self._decompress.unconsumed_tail, _WINDOW))
        except zlib.error:
            self._give_up("proxy_unreadable")

    def finish(self, complete: bool) -> None:
        """The answer ended: `complete` when every byte arrived and went on to the application."""
        if self._finished:
            return
        self._finished = True
        if self._stream:
            self._feed.stream_ended(self._thread_id, self._run_id, complete and self._done)
        elif complete and self._active:
            try:
                obj = json.loads(self._body)
            except ValueError:
                self._dropped("proxy_unreadable", 1)
                return
            self._report(obj)

    def _take(self, data: bytes) -> None:
        if self._parser is None:
            if len(self._body) + len(data) > self._max:
                self._give_up("proxy_body_too_large")
                return
            self._body += data
            return
        before = self._parser.oversized
        for event in self._parser.feed(data):
            self._event(event.event, event.data)
        if self._parser.oversized != before:
            self._dropped("proxy_body_too_large", self._parser.oversized - before)

    def _give_up(self, reason: str) -> None:
        self._active = False
        self._body = bytearray()
        self._dropped(reason, 1)

    def _event(self, name: str, text: str) -> None:
        if name == "done":
            self._done = True
            return
        if not name.startswith(_RUN_EVENT) or name.endswith(_DELTA):
            return  # deltas are most of a tool call's stream and say nothing its completed step does not
        try:
            data = json.loads(text)
        except ValueError:
            self._dropped("proxy_unreadable", 1)
            return
        if not isinstance(data, dict):
            return
        step = name.startswith(_STEP_EVENT)
        if not step and not self._reported:
            self._report(data)
        self._remember_ids(data, step)
        self._feed.stream_event(name, data)

    def _report(self, obj: Any) -> None:
        if not isinstance(obj, Mapping) or obj.get("object") != "thread.run" or not isinstance(obj.get("id"), str):
            return
        self._reported = True
        metadata = obj.get("metadata")
        has_own = isinstance(metadata, Mapping) and bool(metadata.get("traceparent"))
        self._feed.run_created(obj, None if has_own else self._traceparent)

    def _remember_ids(self, data: Mapping[str, Any], step: bool) -> None:
        kind = data.get("object")
        thread_id = data.get("thread_id")
        run_id = data.get("run_id") if step else data.get("id")
        if kind in ("thread.run", "thread.run.step") and isinstance(thread_id, str) and isinstance(run_id, str):
            self._thread_id, self._run_id = thread_id, run_id
