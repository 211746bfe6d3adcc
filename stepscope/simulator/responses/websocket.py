"""The Responses WebSocket mode (`client.responses.connect()` of the openai SDK): `ws(s)://{base}/responses`.

The handshake takes the same auth and request budget as HTTP (a refusal is an HTTP 401/429 answer with the API's
error body where the server supports it, else a close with code 1008). On the socket the client sends JSON
events; each `response.create` (the create parameters at the top level; `stream` is implicit, `background` is not
supported there) is answered with the response's stream events, the same as over SSE, each echoing the request's
`stream_id` when it gave one. Requests on one socket are served one after another. Problems are `error` events
`{"type": "error", "status", "error": {"type", "code", "message", "param"}}`; the socket stays open. Faults of the
`create_response` endpoint apply per `response.create`: latency, 429 and 5xx as error events, a drop as a close
with code 1011.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import TYPE_CHECKING, Any

from stepscope.simulator.api import JSON_HEADER, Receive, Scope, Send
from stepscope.simulator.handlers import ApiError
from stepscope.simulator.responses.handlers import Call, error_body
from stepscope.simulator.responses.streaming import follow

if TYPE_CHECKING:
    from stepscope.simulator.responses.app import ResponsesApp

_ENDPOINT = "create_response"


def error_event(err: ApiError) -> dict[str, Any]:
    return {"type": "error", "status": err.status,
            "error": {"type": err.type, "code": err.code, "message": err.message, "param": err.param}}  # fmt: skip


async def _deny(scope: Scope, send: Send, err: ApiError, headers: list[tuple[bytes, bytes]]) -> None:
    """Refuse the handshake with an HTTP answer when the server can send one, else with a policy close."""
    if "websocket.http.response" not in scope.get("extensions", {}):
        await send({"type": "websocket.close", "code": 1008})
        return
    body = error_body(err)
    head = [JSON_HEADER, *headers, (b"content-length", str(len(body)).encode())]
    await send({"type": "websocket.http.response.start", "status": err.status, "headers": head})
    await send({"type": "websocket.http.response.body", "body": body})


async def serve_websocket(app: ResponsesApp, scope: Scope, receive: Receive, send: Send) -> None:
    """Serve one WebSocket connection until the client closes it."""
    if (await receive())["type"] != "websocket.connect":
        return
    headers: list[tuple[bytes, bytes]] = [(b"x-request-id", app.request_id())]
    path: str = scope["path"].rstrip("/")
    try:
        if path != app.prefix + "/responses":
            raise ApiError(404, f"Invalid URL (GET {scope['path']})")
        spec = app.injector.config.for_endpoint(_ENDPOINT)
        app._authorize(dict(scope["headers"]), spec.auth_fail)
        app._spend_budget(headers, app.responses.engine.clock.monotonic())
    except ApiError as err:
        await _deny(scope, send, err, headers)
        return
    await send({"type": "websocket.accept", "headers": headers})
    inbox: asyncio.Queue[str | None] = asyncio.Queue()
    gone = asyncio.Event()

    async def read() -> None:
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                gone.set()
                await inbox.put(None)
                return
            text = message.get("text")
            await inbox.put(text if text is not None else (message.get("bytes") or b"").decode("utf-8", "replace"))

    reader = asyncio.create_task(read())
    try:
        while (text := await inbox.get()) is not None:
            if not await _serve_one(app, text, send, gone):
                return
    finally:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader


async def _send(send: Send, event: dict[str, Any]) -> None:
    await send({"type": "websocket.send", "text": json.dumps(event, separators=(",", ":"))})


async def _serve_one(app: ResponsesApp, text: str, send: Send, gone: asyncio.Event) -> bool:
    """Answer one client event; False when the connection was closed (a drop fault)."""
    injector, engine = app.injector, app.responses.engine
    try:
        try:
            event = json.loads(text)
        except ValueError:
            raise ApiError(400, "We could not parse the JSON body of your request.") from None
        kind = event.get("type") if isinstance(event, dict) else None
        if kind != "response.create":
            raise ApiError(400, f"Invalid value: '{kind}'. Supported values are: 'response.create'.", param="type",
                           code="invalid_value")  # fmt: skip
        if event.get("background"):
            raise ApiError(400, "Background mode is not supported over WebSocket.", param="background")
        spec = injector.config.for_endpoint(_ENDPOINT)
        if spec.active:
            delay = injector.latency_s(spec)
            if delay:
                await asyncio.sleep(delay)
            if injector.rate_limited(_ENDPOINT, spec):
                raise ApiError(429, "Rate limit reached for requests. Please try again later.", type_="requests",
                               code="rate_limit_exceeded")  # fmt: skip
            if injector.chance(spec.error_rate):
                raise ApiError(injector.error_status(spec), "The server had an error while processing your "
                               "request. Sorry about that!", type_="server_error")  # fmt: skip
            if injector.chance(spec.drop_rate):
                await send({"type": "websocket.close", "code": 1011})
                return False
        body = {k: v for k, v in event.items() if k != "type"}
        answer = app.responses.create_response(Call({}, {}, body, engine.now()), websocket=True)
        assert answer.stream is not None
        async for out in follow(engine, answer.stream, gone=gone):
            await _send(send, {**out, **answer.extra})
    except ApiError as err:
        await _send(send, error_event(err))
    return True
