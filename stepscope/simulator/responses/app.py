"""The ASGI app that serves the simulated Responses and Conversations APIs, over HTTP and the WebSocket mode.

`ResponsesApp` extends the Assistants `SimApp`: requests under `{prefix}/responses` and `{prefix}/conversations`
(`/v1`; Foundry's `/api/projects/{project}/openai/v1`, which takes no `api-version`) go through the same pipeline
of auth (Bearer; also `api-key` on azure), request budget with the `x-ratelimit-*` headers, per-endpoint faults
(latency, 429 bursts with `retry-after`, 5xx, dropped connections, truncated and malformed bodies, a stream cut
short, drift) and error bodies, with endpoint names from `RESPONSES_ENDPOINTS`. Listing responses and
conversations exists on azure only; on openai those paths answer 404 like any unknown route. `GET /_sim/truth`
answers the simulator's combined truth; the other `/_sim` endpoints go to the Assistants app; everything else is
a 404. A WebSocket on `{prefix}/responses` is the WebSocket mode (websocket.py). Drift on a response adds an
unknown field and may set an unknown `status` or add an output item of an unknown type; on an item it may set an
unknown `type`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from stepscope.simulator.api import (
    JSON_HEADER,
    STATIC_HEADERS,
    Receive,
    Scope,
    Send,
    SimApp,
    parse_query,
    read_body,
    respond,
)
from stepscope.simulator.faults import FaultInjector
from stepscope.simulator.handlers import ApiError
from stepscope.simulator.responses import serializers as ser
from stepscope.simulator.responses.handlers import Call, ResponsesHandlers, error_body
from stepscope.simulator.responses.streaming import stream_sse, wait_end
from stepscope.simulator.responses.websocket import serve_websocket
from stepscope.simulator.serializers import dumps

_MALFORMED = b'{"object": "response", "output": [<html>upstream error</html>'


def route(method: str, segs: list[str], *, azure: bool) -> tuple[str, dict[str, str]] | None:
    """Endpoint name and path ids for a request under `responses` or `conversations`, or None."""
    n = len(segs)
    if n == 0 or n > 4:
        return None
    head = segs[0]
    if head == "responses" and n <= 3:
        if n == 1:
            name = {"POST": "create_response", "GET": "list_responses" if azure else None}.get(method)
            return (name, {}) if name else None
        ids = {"response_id": segs[1]}
        if n == 2:
            name = {"GET": "get_response", "DELETE": "delete_response"}.get(method)
            return (name, ids) if name else None
        if (segs[2], method) == ("cancel", "POST"):
            return "cancel_response", ids
        return ("list_input_items", ids) if (segs[2], method) == ("input_items", "GET") else None
    if head != "conversations":
        return None
    if n == 1:
        name = {"POST": "create_conversation", "GET": "list_conversations" if azure else None}.get(method)
        return (name, {}) if name else None
    ids = {"conversation_id": segs[1]}
    if method != "GET" or (n > 2 and segs[2] != "items"):
        return None
    if n == 4:
        ids["item_id"] = segs[3]
    return {2: "get_conversation", 3: "list_conversation_items", 4: "get_conversation_item"}[n], ids


class ResponsesApp(SimApp):
    """`SimApp` plus the Responses routes and the WebSocket mode; no Assistants paths are served."""

    def __init__(self, inner: SimApp, handlers: ResponsesHandlers, *, truth: Callable[[], Any]) -> None:
        super().__init__(
            inner.handlers, inner.injector, prefix=inner.prefix, azure=inner.azure,
            accepted_keys=inner.accepted_keys, lifespan=inner._lifespan,
        )  # fmt: skip
        self.responses = handlers
        self._truth = truth
        self._response_requests = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            await serve_websocket(self, scope, receive, send)
        else:
            await super().__call__(scope, receive, send)

    def request_id(self) -> bytes:
        self._response_requests += 1
        return b"req_rs%022x" % self._response_requests

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        if path == "/_sim/truth" and scope["method"] == "GET":
            await respond(send, 200, dumps(self._truth()), [JSON_HEADER])
        elif path.startswith((self.prefix + "/responses", self.prefix + "/conversations")):
            await self._responses_http(scope, receive, send)
        elif path.startswith("/_sim/"):
            await super()._http(scope, receive, send)
        else:
            await respond(send, 404, _invalid_url(scope["method"], path), [JSON_HEADER, *STATIC_HEADERS])

    async def _responses_http(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        headers = [JSON_HEADER, (b"x-request-id", self.request_id()), *STATIC_HEADERS]
        injector, engine = self.injector, self.responses.engine
        path: str = scope["path"]
        try:
            found = route(scope["method"], [s for s in path[len(self.prefix) :].split("/") if s], azure=self.azure)
            if found is None:
                raise ApiError(404, f"Invalid URL ({scope['method']} {path})")
            endpoint, ids = found
            spec = injector.config.for_endpoint(endpoint)
            self._authorize(dict(scope["headers"]), spec.auth_fail)
            self._spend_budget(headers, engine.clock.monotonic())
            if spec.active and await self._inject(endpoint, spec, headers, send):
                return
            query, _ = parse_query(scope["query_string"])
            body = await read_body(receive) if scope["method"] == "POST" else {}
            answer = getattr(self.responses, endpoint)(Call(ids, query, body, engine.now()))
            if answer.stream is not None:
                cut = 2 if spec.active and injector.chance(spec.truncate_rate) else None
                await stream_sse(receive, send, engine, answer.stream, headers=headers, after=answer.after,
                                 cut_after=cut)  # fmt: skip
                return
            obj = answer.obj
            if answer.wait is not None:
                obj = ser.response_dict(answer.wait, await wait_end(engine, answer.wait), azure=self.azure)
            payload = dumps(drifted(obj, spec.drift_rate, injector) if spec.drift_rate > 0 else obj)
            if injector.chance(spec.truncate_rate):
                payload = payload[: len(payload) // 2]
            elif injector.chance(spec.malformed_rate):
                payload = _MALFORMED
            status = 200
        except ApiError as err:
            status, payload = err.status, error_body(err)
        headers.append((b"openai-processing-ms", str(int((time.perf_counter() - started) * 1000)).encode()))
        await respond(send, status, payload, headers)


def _invalid_url(method: str, path: str) -> bytes:
    return error_body(ApiError(404, f"Invalid URL ({method} {path})"))


def drifted(obj: Any, rate: float, injector: FaultInjector) -> Any:
    """`obj` (an object or a list page) with each object drifted with probability `rate`."""
    if isinstance(obj, dict) and isinstance(obj.get("data"), list):
        return {**obj, "data": [drift(o, injector) if injector.chance(rate) else o for o in obj["data"]]}
    return drift(obj, injector) if isinstance(obj, dict) and injector.chance(rate) else obj


def drift(obj: dict[str, Any], injector: FaultInjector) -> dict[str, Any]:
    """A drifted copy of one object: an unknown field, and maybe an unknown status, item or item type."""
    out = {**obj, "x_sim_drift": {"note": "field unknown to the client"}}
    if out.get("object") == "response":
        if injector.chance(0.5):
            out["status"] = "sim_drifted_status"
        if injector.chance(0.5):
            unknown = {"id": "simdrift_item", "type": "sim_drifted_item", "status": "sim_drifted_status"}
            out["output"] = [*out.get("output", []), unknown]
    elif "type" in out and "object" not in out and injector.chance(0.5):  # an item
        out["type"] = "sim_drifted_item"
    return out
