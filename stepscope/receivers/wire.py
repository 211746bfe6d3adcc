"""HTTP/1.1 on the wire for `stepscope.receivers.server`: status lines, response heads, and the whole answers the
server gives itself, before or instead of any application code (refusals, limits, timeouts).

Every answer of the server's own is an OpenAI-shaped JSON error (`asgi.error_body`) with `connection: close`: an
application's SDK reads it as it reads the API's errors, and retries a 503 as it would the API's.
"""

from __future__ import annotations

import http

from stepscope.receivers.asgi import error_body

_STATUS_LINES: dict[int, bytes] = {
    s.value: b"HTTP/1.1 %d %s\r\n" % (s.value, s.phrase.encode("ascii")) for s in http.HTTPStatus
}
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


def status_line(status: int) -> bytes:
    """`HTTP/1.1 200 OK\\r\\n`; a status without a registered phrase gets none."""
    line = _STATUS_LINES.get(status)
    if line is None:
        if not 100 <= status <= 999:
            raise ValueError(f"invalid HTTP status {status}")
        line = b"HTTP/1.1 %d \r\n" % status
    return line


def valid_field(name: bytes, value: bytes) -> bool:
    """Whether a response header can be written as is: no CR, LF or NUL in either part, a non-empty name without
    a colon or whitespace (a value from elsewhere must never split the response)."""
    if not name or b":" in name or b" " in name or b"\t" in name:
        return False
    return not any(c in name or c in value for c in (b"\r", b"\n", b"\0"))


class Refusal:
    """One answer the server gives itself: `status`, an error `code` and `message`, optional extra headers."""

    __slots__ = ("bytes", "code", "status")

    def __init__(self, status: int, code: str, message: str, extra: tuple[tuple[bytes, bytes], ...] = ()) -> None:
        self.status = status
        self.code = code
        body = error_body(message, code)
        head = [
            status_line(status),
            b"content-type: application/json\r\n",
            b"content-length: %d\r\n" % len(body),
            *(b"%s: %s\r\n" % pair for pair in extra),
            b"connection: close\r\n\r\n",
        ]
        self.bytes = b"".join(head) + body


ABSOLUTE_FORM = Refusal(
    400, "absolute_form_refused",
    "absolute-form request targets are refused: this proxy only reaches its configured upstream",
)  # fmt: skip
CONNECT = Refusal(
    405, "method_not_allowed", "CONNECT is not supported: this is not a forward proxy",
    ((b"allow", b"GET, POST, DELETE"),),
)  # fmt: skip
MALFORMED = Refusal(400, "invalid_request", "malformed HTTP request")
HEAD_TOO_LARGE = Refusal(431, "request_header_fields_too_large", "request head too large")
HEAD_TIMEOUT = Refusal(408, "request_timeout", "the request head did not arrive in time")
BODY_TIMEOUT = Refusal(408, "request_timeout", "the request body did not arrive in time")
NO_UPGRADE = Refusal(501, "upgrade_not_supported", "protocol upgrades (WebSocket) are not served here")
FULL = Refusal(
    503, "too_many_connections", "too many connections to stepscope at once; retry shortly",
    ((b"retry-after", b"1"),),
)  # fmt: skip
INTERNAL = Refusal(500, "internal_error", "internal error")
