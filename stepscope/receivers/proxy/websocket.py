"""Reading a relayed WebSocket's server-to-client frames (RFC 6455) for the protocol's `AnswerSink`.

`WebSocketReader` sees a copy of the bytes the upstream sent, after they went on to the application, and changes
nothing. It splits them into frames (server frames are unmasked; a masked one is unmasked for reading), joins a
text message's continuation frames, and hands each text message that is a JSON object with a string `type` to
the sink as `event(type, data)`, asking `wants(type)` first (when the message starts with its `"type"` member,
before parsing it). Binary messages, pings and pongs are skipped; a close frame makes the end complete.

Bounded: a message (or frame) past `max_message` bytes is skipped to its end and counted as
`proxy_body_too_large`; the reader holds at most one frame of up to that size. Frames with RSV bits set (an
extension the proxy did not see negotiated) or a broken framing make it stop reading, counted as
`proxy_unreadable`. A WebSocket whose handshake negotiated an extension (`permessage-deflate`) is never given to a
reader: the proxy relays it unobserved.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from stepscope.contract.vocabulary import DropReason
from stepscope.core.records import Drops
from stepscope.protocols.base import AnswerSink
from stepscope.receivers.proxy.observe import parse_json

_CONTINUATION, _TEXT, _BINARY, _CLOSE = 0x0, 0x1, 0x2, 0x8
_LEADING_TYPE = re.compile(rb'\s*\{\s*"type"\s*:\s*"([A-Za-z0-9_.\-]{1,128})"')


class WebSocketReader:
    """Decodes one WebSocket's server-to-client bytes for `sink`: `chunk()` per relayed chunk, then `finish()`."""

    __slots__ = ("_buffer", "_closed", "_drops", "_finished", "_max", "_message", "_reading", "_sink", "_skip",
                 "_skipping_message", "_text")  # fmt: skip

    def __init__(self, sink: AnswerSink, *, max_message: int, drops: Drops) -> None:
        self._sink = sink
        self._max = max_message
        self._drops = drops
        self._buffer = bytearray()
        self._message = bytearray()  # the text message being assembled
        self._text = False  # a text message is in progress (its continuation frames are read)
        self._skipping_message = False  # the message in progress is past the bound, or binary
        self._skip = 0  # payload bytes of an oversized frame still to skip
        self._closed = False
        self._reading = True
        self._finished = False

    def chunk(self, data: bytes) -> None:
        if not self._reading:
            return
        if self._skip:
            skipped = min(self._skip, len(data))
            self._skip -= skipped
            data = data[skipped:]
            if self._skip or not data:
                return
        self._buffer += data
        while self._reading and self._frame():
            pass

    def _frame(self) -> bool:
        """Read one frame from the buffer; False when more bytes are needed."""
        buffer = self._buffer
        if len(buffer) < 2:
            return False
        first, second = buffer[0], buffer[1]
        if first & 0x70:
            return self._stop()  # RSV bits: an extension is in use, the payload is not plain
        fin, opcode, masked, length = bool(first & 0x80), first & 0x0F, bool(second & 0x80), second & 0x7F
        start = 2
        if length == 126:
            if len(buffer) < 4:
                return False
            length, start = int.from_bytes(buffer[2:4], "big"), 4
        elif length == 127:
            if len(buffer) < 10:
                return False
            length, start = int.from_bytes(buffer[2:10], "big"), 10
        mask = b""
        if masked:
            if len(buffer) < start + 4:
                return False
            mask, start = bytes(buffer[start : start + 4]), start + 4
        if opcode >= 0x8:
            if length > 125 or not fin:
                return self._stop()
        elif length > self._max:
            # Past the bound: skip the payload as it comes, and the rest of its message.
            self._oversized()
            del buffer[:start]
            skipped = min(length, len(buffer))
            del buffer[:skipped]
            self._skip = length - skipped
            self._text, self._skipping_message, self._message = False, not fin, bytearray()
            return not self._skip
        if len(buffer) < start + length:
            return False
        payload = bytes(buffer[start : start + length])
        del buffer[: start + length]
        if mask:
            payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        return self._data(fin, opcode, payload)

    def _data(self, fin: bool, opcode: int, payload: bytes) -> bool:
        if opcode == _CLOSE:
            self._closed = True
            return True
        if opcode > _CLOSE:
            return True  # ping, pong
        if opcode in (_TEXT, _BINARY):
            if self._text or self._skipping_message:
                return self._stop()  # a new message inside a fragmented one: broken framing
            self._text = opcode == _TEXT
            self._skipping_message = opcode == _BINARY
            self._message = bytearray()
        elif opcode != _CONTINUATION or not (self._text or self._skipping_message):
            return self._stop()
        if self._text:
            if len(self._message) + len(payload) > self._max:
                self._oversized()
                self._text, self._skipping_message, self._message = False, True, bytearray()
            else:
                self._message += payload
        if fin:
            if self._text:
                self._deliver(bytes(self._message))
            self._text, self._skipping_message, self._message = False, False, bytearray()
        return True

    def _deliver(self, text: bytes) -> None:
        leading = _LEADING_TYPE.match(text)
        if leading is not None and not self._sink.wants(leading.group(1).decode("ascii")):
            return
        ok, value = parse_json(text)
        if not ok:
            self._drops.dropped(DropReason.PROXY_UNREADABLE)
            return
        if not isinstance(value, Mapping) or not isinstance(kind := value.get("type"), str):
            return  # not an event: nothing for the sink
        if leading is None and not self._sink.wants(kind):
            return
        self._sink.event(kind, value)

    def _oversized(self) -> None:
        self._drops.dropped(DropReason.PROXY_BODY_TOO_LARGE)

    def _stop(self) -> bool:
        self._reading = False
        self._buffer = bytearray()
        self._message = bytearray()
        self._drops.dropped(DropReason.PROXY_UNREADABLE)
        return False

    def finish(self, complete: bool) -> None:
        """The WebSocket ended: complete when it closed cleanly (a close frame from the server, every byte relayed)."""
        if self._finished:
            return
        self._finished = True
        self._sink.ended(complete and self._closed and self._reading, True)
