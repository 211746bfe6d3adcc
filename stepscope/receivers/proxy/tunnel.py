"""Relaying an upgrade (a WebSocket: the openai SDK's `client.responses.connect()` opens `ws://{base_url}/responses`)
so that the application never breaks because stepscope is in its path.

The upgrade request goes to the upstream with the same method, path, query and end-to-end headers, plus its
`Connection: upgrade` and `Upgrade`, on the tunnels' own pool (`upstream.py`). An answer other than 101 (a 401,
a 404) is relayed as any answer, and the connection then closes. After a 101, relayed with the upstream's headers
as they came, the two byte streams are spliced both ways unchanged until either side closes; the server bounds
the tunnel by idleness only (`ServerLimits.tunnel_idle_timeout`, 600 s without a byte either way).

Observed: a WebSocket (`Upgrade: websocket`) whose path the protocol's `ProxyObserver.route("GET", path)` routes
and whose handshake negotiated no extension gets its server-to-client bytes queued, after they went on to the
application, for a `WebSocketReader` (JSON text messages with a `type` become `event(type, data)`; the end is
`ended(complete, stream=True)`). With an extension (`permessage-deflate`) the frames are compressed: it is
relayed unobserved, counted once as `proxy_unreadable`. The openai SDK negotiates none.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import httpx

from stepscope.contract.vocabulary import DropReason
from stepscope.core.records import Drops
from stepscope.mapping.ids import valid_traceparent
from stepscope.receivers.asgi import TUNNEL_CLOSE, TUNNEL_DATA, Receive, Scope, Send, error_body, respond
from stepscope.receivers.proxy.guard import GuardedObserver, RareLog
from stepscope.receivers.proxy.observations import ObservationQueue, Observed
from stepscope.receivers.proxy.relay import relay_answer, send_upstream
from stepscope.receivers.proxy.upstream import upgrade_request

_READ = 64 * 1024


class TunnelRelay:
    """Relays upgrade requests through `client` to the origin `base` (see the module docstring)."""

    def __init__(
        self, client: httpx.AsyncClient, base: httpx.URL, observer: GuardedObserver, queue: ObservationQueue, *,
        drops: Drops, rare: RareLog,
    ) -> None:  # fmt: skip
        self._http = client
        self._base = base
        self._observer = observer
        self._queue = queue
        self._drops = drops
        self._rare = rare
        self.open = 0  # tunnels spliced now

    async def relay(self, scope: Scope, raw_path: bytes, receive: Receive, send: Send, *, upstream: str) -> None:
        headers: list[tuple[bytes, bytes]] = scope["headers"]
        query: bytes = scope.get("query_string", b"")
        url = self._base.copy_with(raw_path=raw_path + (b"?" + query if query else b""))
        request = httpx.Request(scope["method"], url, headers=upgrade_request(headers))
        response = await send_upstream(self._http, request, send, upstream=upstream, rare=self._rare,
                                       drops=self._drops)  # fmt: skip
        if response is None:
            return
        try:
            if response.status_code != 101:
                await relay_answer(response, send, queue=self._queue, answer=None, rare=self._rare, upstream=upstream)
                return
            stream = response.extensions.get("network_stream")
            if stream is None:
                await respond(send, 502, error_body(f"upstream {upstream} switched protocols unusably", "bad_gateway"))
                return
            await send({"type": "http.response.start", "status": 101, "headers": list(response.headers.raw)})
            answer = self._observe(scope, raw_path, headers, response)
            self.open += 1
            try:
                await self._splice(stream, receive, send, answer)
            finally:
                self.open -= 1
        finally:
            await response.aclose()

    def _observe(
        self, scope: Scope, raw_path: bytes, headers: list[tuple[bytes, bytes]], response: httpx.Response
    ) -> Observed | None:
        if response.headers.get("upgrade", "").strip().lower() != "websocket":
            return None  # another protocol: relayed, never read
        route = self._observer.route("GET", raw_path.decode("latin-1"))
        if route is None:
            return None
        if response.headers.get("sec-websocket-extensions"):
            with contextlib.suppress(Exception):
                self._drops.dropped(DropReason.PROXY_UNREADABLE)
            return None
        traceparent = valid_traceparent(next((v for k, v in headers if k.lower() == b"traceparent"), None))
        return self._queue.begin(route, traceparent, websocket=True)

    async def _splice(self, stream: Any, receive: Receive, send: Send, answer: Observed | None) -> None:
        """Client to upstream in this task, upstream to client in another, until either side closes."""
        down = asyncio.ensure_future(self._downstream(stream, send, answer))
        clean = False
        try:
            while True:
                message = await receive()
                if message["type"] != TUNNEL_DATA:
                    break  # the client went away (or the idle bound closed it)
                await stream.write(message["data"])
            clean = True
        except Exception as exc:  # the upstream failed a write: the tunnel ends, as a broken socket would
            self._rare.warning("tunnel", "proxy: a relayed upgrade broke off (%s)", type(exc).__name__)
        finally:
            down.cancel()
            done = await asyncio.gather(down, return_exceptions=True)
            await send({"type": TUNNEL_CLOSE})
            if answer is not None:
                self._queue.end(answer, clean or done[0] is True)

    async def _downstream(self, stream: Any, send: Send, answer: Observed | None) -> bool:
        """Upstream to client until the upstream closes (True) or fails (False); then the client's side closes."""
        try:
            while data := await stream.read(_READ):
                await send({"type": TUNNEL_DATA, "data": data})
                if answer is not None:
                    self._queue.chunk(answer, data)
        except Exception as exc:  # a reset upstream: the tunnel ends
            self._rare.warning("tunnel", "proxy: a relayed upgrade broke off (%s)", type(exc).__name__)
            return False
        finally:
            await send({"type": TUNNEL_CLOSE})  # the client's receive() then ends the other direction
        return True
