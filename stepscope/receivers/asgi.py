"""The ASGI interface both of stepscope's applications implement (the HTTP surface and the proxy), and the few
helpers they share: `respond()` for a whole small answer, `error_body()` for the OpenAI-shaped error body, and
`lifespan()` for the application's side of the lifespan protocol.

Two extensions of our own server (`stepscope.receivers.server`) appear in `scope["extensions"]`; an application
must work without them (under `httpx.ASGITransport` in unit tests, for instance):

- `DISCONNECT`: an `asyncio.Future[None]` done the moment the client's connection is lost. It lets an application
  stop waiting on something else (the proxy's upstream) without a second task reading `receive()`.
- `TUNNEL`: present on a request that asks to switch protocols (`Upgrade:`), and only when the listener relays
  upgrades. An application that answers such a request with `http.response.start` status 101 then owns the raw
  byte streams: `receive()` gives `{"type": "tunnel.data", "data": bytes}` until `{"type": "http.disconnect"}`,
  and it sends `{"type": "tunnel.data", "data": bytes}`, then `{"type": "tunnel.close"}`. Any other status is an
  ordinary answer, after which the connection closes.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

DISCONNECT = "stepscope.disconnect"
"""Extension key: a future done when the client went away (see the module docstring)."""
TUNNEL = "stepscope.tunnel"
"""Extension key: this request may be answered 101 and then relayed as raw bytes (see the module docstring)."""
TUNNEL_DATA = "tunnel.data"
TUNNEL_CLOSE = "tunnel.close"
ASGI_VERSION = {"version": "3.0", "spec_version": "2.3"}


class AbortResponse(Exception):
    """Raised by an application to cut its answer short: the server closes the connection without logging, as when
    the proxy's upstream broke off mid-answer."""


def error_body(message: str, code: str, error_type: str = "proxy_error") -> bytes:
    """The OpenAI-shaped error body: `{"error": {"message", "type", "param": null, "code"}}`."""
    return json.dumps({"error": {"message": message, "type": error_type, "param": None, "code": code}}).encode()


async def respond(
    send: Send,
    status: int,
    body: bytes | str | Mapping[str, Any],
    headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    """Send one whole answer: a mapping as JSON, text as UTF-8 plain text, bytes as JSON (an `error_body()`)."""
    if isinstance(body, bytes):
        payload, ctype = body, b"application/json"
    elif isinstance(body, str):
        payload, ctype = body.encode(), b"text/plain; charset=utf-8"
    else:
        payload, ctype = json.dumps(body).encode(), b"application/json"
    head = [(b"content-type", ctype), (b"content-length", str(len(payload)).encode()), *(headers or [])]
    await send({"type": "http.response.start", "status": status, "headers": head})
    await send({"type": "http.response.body", "body": payload})


async def lifespan(
    receive: Receive,
    send: Send,
    *,
    startup: Callable[[], None] | None = None,
    shutdown: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """The application's side of the ASGI lifespan protocol: `startup()` runs before startup completes and
    `shutdown()` before shutdown completes; either raising reports the failure to the server."""
    while True:
        message = await receive()
        kind = message["type"]
        if kind == "lifespan.startup":
            try:
                if startup is not None:
                    startup()
            except Exception as exc:  # reported to the server, which fails its start with it
                await send({"type": "lifespan.startup.failed", "message": f"{type(exc).__name__}: {exc}"})
                return
            await send({"type": "lifespan.startup.complete"})
        elif kind == "lifespan.shutdown":
            try:
                if shutdown is not None:
                    await shutdown()
            except Exception as exc:  # reported to the server, which logs it
                await send({"type": "lifespan.shutdown.failed", "message": f"{type(exc).__name__}: {exc}"})
                return
            await send({"type": "lifespan.shutdown.complete"})
            return
