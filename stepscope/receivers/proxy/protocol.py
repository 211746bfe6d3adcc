"""The proxy's HTTP/1.1 server protocol: uvicorn's httptools protocol that refuses what a reverse proxy must not
relay before any application code runs.

httptools parses the request target into a path, so the ASGI scope cannot tell `GET /v1/x` from
`GET http://elsewhere/v1/x`; this protocol looks at the raw target itself. An absolute-form target gets 400 and
`CONNECT` (authority form) 405, each with an OpenAI-shaped JSON error, and the connection is closed. httptools
rather than h11: it halves the latency the proxy adds (tests/benchmarks/bench_proxy.py).
"""

from __future__ import annotations

import json

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

_REASONS = {400: b"Bad Request", 405: b"Method Not Allowed"}
_MESSAGES = {
    400: ("absolute-form request targets are refused: this proxy only reaches its configured upstream",
          "absolute_form_refused"),
    405: ("CONNECT is not supported: this is not a forward proxy", "method_not_allowed"),
}  # fmt: skip


def refusal(status: int) -> bytes:
    """The whole HTTP response refusing a request with `status` (400 or 405), closing the connection."""
    message, code = _MESSAGES[status]
    body = json.dumps({"error": {"message": message, "type": "proxy_error", "param": None, "code": code}}).encode()
    head = [
        b"HTTP/1.1 %d %s" % (status, _REASONS[status]),
        b"content-type: application/json",
        b"content-length: %d" % len(body),
        b"connection: close",
        *([b"allow: GET, POST, DELETE"] if status == 405 else []),
    ]
    return b"\r\n".join(head) + b"\r\n\r\n" + body


class _Refused(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


class ProxyHttpProtocol(HttpToolsProtocol):
    """`HttpToolsProtocol` answering CONNECT and absolute-form targets itself (see the module docstring)."""

    def on_headers_complete(self) -> None:
        method = self.parser.get_method()
        if method == b"CONNECT":
            raise _Refused(405)
        if not bytes(self.url).startswith(b"/"):
            raise _Refused(400)
        super().on_headers_complete()

    def data_received(self, data: bytes) -> None:
        # uvicorn's own data_received, plus the refusal: an exception in a parser callback surfaces as an
        # HttpParserCallbackError whose cause is the callback's exception.
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            refused = exc.__context__ if isinstance(exc.__context__, _Refused) else exc.__cause__
            if isinstance(refused, _Refused):
                self.transport.write(refusal(refused.status))
                self.transport.close()
                return
            message = "Invalid HTTP request received."
            self.logger.warning(message)
            self.send_400_response(message)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
