"""The simulator's raw ASGI application: routing, auth, headers, faults and the `/_sim` control endpoints.

OpenAI flavour: `/v1/...`, `Authorization: Bearer <key>`, `OpenAI-Beta: assistants=v2` required. Azure flavour
(Foundry Agents classic): `/api/projects/{project}/...` without `/v1`, `api-version` query parameter required,
`api-key: <key>` or `Authorization: Bearer <token>`.

Control endpoints, outside the API prefix and without auth: `GET /_sim/truth` (see `Simulator.truth`),
`GET|POST /_sim/faults` (read or replace the `FaultConfig`, JSON as in `FaultConfig.from_dict`), `GET /_sim/health`.

A dropped connection is signalled to the server with the `x-sim-drop` response header: `server.py` aborts the
socket before anything is written, and `SimTransport` (for in-process use) raises `httpx.RemoteProtocolError`.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import parse_qsl

from stepscope.simulator.faults import FaultConfig, FaultInjector, FaultSpec
from stepscope.simulator.handlers import ApiError, Handlers, Reply, Request
from stepscope.simulator.serializers import dumps
from stepscope.simulator.state import SimRun
from stepscope.simulator.streaming import stream_run

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

DROP_HEADER = b"x-sim-drop"
JSON_HEADER = (b"content-type", b"application/json")
STATIC_HEADERS = [(b"openai-version", b"2020-10-01"), (b"openai-organization", b"stepscope-sim")]
_TOKEN_HEADERS = [
    (b"x-ratelimit-limit-tokens", b"150000"),
    (b"x-ratelimit-remaining-tokens", b"149984"),
    (b"x-ratelimit-reset-tokens", b"6m0s"),
]
_BETA_MESSAGE = (
    "You must provide the 'OpenAI-Beta' header to access the Assistants API. Please try again by setting the "
    "header 'OpenAI-Beta: assistants=v2'."
)


def _route(method: str, segs: list[str]) -> tuple[str, dict[str, str]] | None:
    """Endpoint name and path ids for `method` on path segments after the prefix, or None."""
    n = len(segs)
    if n == 0:
        return None
    head = segs[0]
    if head == "assistants":
        if n == 1:
            return ("create_assistant" if method == "POST" else "list_assistants"), {}
        return ("get_assistant", {"assistant_id": segs[1]}) if n == 2 and method == "GET" else None
    if head != "threads":
        return None
    if n == 1:
        name = {"POST": "create_thread", "GET": "list_threads"}.get(method)
        return (name, {}) if name else None
    if n == 2:
        if segs[1] == "runs":
            return ("create_thread_and_run", {}) if method == "POST" else None
        return ("get_thread", {"thread_id": segs[1]}) if method == "GET" else None
    ids = {"thread_id": segs[1]}
    if segs[2] == "messages":
        if n == 3:
            name = {"POST": "create_message", "GET": "list_messages"}.get(method)
            return (name, ids) if name else None
        if n == 4 and method == "GET":
            return "get_message", {**ids, "message_id": segs[3]}
        return None
    if segs[2] != "runs":
        return None
    if n == 3:
        return ("create_run" if method == "POST" else "list_runs"), ids
    ids["run_id"] = segs[3]
    if n == 4:
        return ("modify_run" if method == "POST" else "get_run"), ids
    action = segs[4]
    if n == 5 and method == "POST" and action in ("cancel", "submit_tool_outputs"):
        return ("cancel_run" if action == "cancel" else "submit_tool_outputs"), ids
    if action == "steps" and method == "GET":
        if n == 5:
            return "list_steps", ids
        if n == 6:
            ids["step_id"] = segs[5]
            return "get_step", ids
    return None


class SimApp:
    """ASGI callable serving one `Simulator`'s engine. Lifespan events start and stop the simulator."""

    def __init__(
        self,
        handlers: Handlers,
        injector: FaultInjector,
        *,
        prefix: str,
        azure: bool,
        accepted_keys: frozenset[str],
        lifespan: tuple[Callable[[], Awaitable[None]], Callable[[], Awaitable[None]]] | None = None,
    ) -> None:
        self.handlers = handlers
        self.engine = handlers.engine
        self.injector = injector
        self.prefix = prefix
        self.azure = azure
        self.accepted_keys = accepted_keys
        self._lifespan = lifespan
        self._requests = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan_loop(receive, send)

    async def _lifespan_loop(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                if self._lifespan:
                    await self._lifespan[0]()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self._lifespan:
                    await self._lifespan[1]()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        path: str = scope["path"]
        if path.startswith("/_sim/"):
            status, body = await self._control(scope["method"], path, receive)
            await respond(send, status, dumps(body), [JSON_HEADER])
            return
        self._requests += 1
        headers = [JSON_HEADER, (b"x-request-id", b"req_%024x" % self._requests), *STATIC_HEADERS]
        injector = self.injector
        endpoint = "unknown"
        try:
            if not path.startswith(self.prefix):
                raise ApiError(404, f"Invalid URL ({scope['method']} {path})")
            route = _route(scope["method"], [s for s in path[len(self.prefix) :].split("/") if s])
            if route is None:
                raise ApiError(404, f"Invalid URL ({scope['method']} {path})")
            endpoint, ids = route
            spec = injector.config.for_endpoint(endpoint)
            req_headers = dict(scope["headers"])
            self._authorize(req_headers, spec.auth_fail)
            self._spend_budget(headers, self.engine.clock.monotonic())
            query, include = parse_query(scope["query_string"])
            if self.azure and not query.get("api-version"):
                raise ApiError(400, "Missing required query parameter: api-version", param="api-version",
                               code="BadRequest")  # fmt: skip
            if not self.azure and req_headers.get(b"openai-beta") != b"assistants=v2":
                raise ApiError(400, _BETA_MESSAGE, code="invalid_beta")
            if spec.active and await self._inject(endpoint, spec, headers, send):
                return
            body = await read_body(receive) if scope["method"] == "POST" else {}
            req = Request(ids, query, include, body, self.engine.now(), self.azure, as_dicts=spec.drift_rate > 0)
            reply: Reply = getattr(self.handlers, endpoint)(req)
            if reply.stream is not None:
                await self._stream(endpoint, spec, reply.stream, (req.t, headers), (receive, send))
                return
            status, payload = 200, self._encode(reply, spec.drift_rate)
            if spec.active:
                if injector.chance(spec.truncate_rate):
                    payload = payload[: len(payload) // 2]
                elif injector.chance(spec.malformed_rate):
                    payload = b'{"object": "list", "data": [<html>upstream error</html>'
        except ApiError as err:
            status = err.status
            payload = dumps({"error": {"message": err.message, "type": err.type, "param": err.param,
                                       "code": err.code}})  # fmt: skip
        ms = int((time.perf_counter() - started) * 1000)
        headers.append((b"openai-processing-ms", str(ms).encode()))
        await respond(send, status, payload, headers)

    async def _stream(
        self, endpoint: str, spec: FaultSpec, run: SimRun, start: tuple[float, list[tuple[bytes, bytes]]],
        channel: tuple[Receive, Send],
    ) -> None:  # fmt: skip
        """Answer a streamed request with the run's events from `start` (time, headers); `truncate_rate` cuts the
        stream short."""
        since, headers = start
        cut = 2 if spec.active and self.injector.chance(spec.truncate_rate) else None
        await stream_run(*channel, self.engine, run, since=since, headers=headers,
                         created=endpoint != "submit_tool_outputs", new_thread=endpoint == "create_thread_and_run",
                         cut_after=cut)  # fmt: skip

    async def _inject(self, endpoint: str, spec: FaultSpec, headers: list[tuple[bytes, bytes]], send: Send) -> bool:
        """Apply the faults that replace an answer; True when the connection was dropped (nothing more to send)."""
        injector = self.injector
        delay = injector.latency_s(spec)
        if delay:
            await asyncio.sleep(delay)
        if injector.rate_limited(endpoint, spec):
            headers.append((b"retry-after", str(spec.retry_after_s).encode()))
            raise ApiError(429, "Rate limit reached for requests. Please try again later.", type_="requests",
                           code="rate_limit_exceeded")  # fmt: skip
        if injector.chance(spec.error_rate):
            raise ApiError(injector.error_status(spec), "The server had an error while processing your request. "
                           "Sorry about that!", type_="server_error")  # fmt: skip
        if injector.chance(spec.drop_rate):
            await respond(send, 500, b"", [(DROP_HEADER, b"1")])
            return True
        return False

    def _spend_budget(self, headers: list[tuple[bytes, bytes]], monotonic: float) -> None:
        """Spend one request of the rate budget, adding the rate headers to `headers`; ApiError 429 (with
        `retry-after`) when the budget is spent."""
        allowed, limit, remaining, reset = self.injector.budget(monotonic)
        headers += _rate_headers(limit, remaining, reset)
        if not allowed:
            retry = max(1, int(reset + 0.999))
            headers.append((b"retry-after", str(retry).encode()))
            message = f"Rate limit reached for requests: Limit {limit}, Used {limit}, Requested 1. Try in {retry}s."
            raise ApiError(429, message, type_="requests", code="rate_limit_exceeded")

    def _authorize(self, headers: dict[bytes, bytes], force_fail: bool) -> None:
        auth = headers.get(b"authorization", b"").decode("latin-1")
        key = auth[7:].strip() if auth[:7].lower() == "bearer " else None
        if key is None and self.azure:
            key = headers.get(b"api-key", b"").decode("latin-1") or None
        if not force_fail and key in self.accepted_keys:
            return
        shown = f"{key[:3]}***{key[-4:]}" if key and len(key) > 8 else (key or "")
        message = (
            f"Incorrect API key provided: {shown}. You can find your API key at https://platform.openai.com/account/api-keys."
            if key
            else "You didn't provide an API key. You need to provide your API key in an Authorization header."
        )
        raise ApiError(401, message, code="invalid_api_key")

    def _encode(self, reply: Reply, drift_rate: float) -> bytes:
        if reply.raw is not None:
            return reply.raw
        obj = reply.obj
        if drift_rate > 0 and isinstance(obj, dict):
            chance, drift = self.injector.chance, self.injector.drift
            if isinstance(obj.get("data"), list):
                obj = {**obj, "data": [drift(o) if chance(drift_rate) else o for o in obj["data"]]}
            elif chance(drift_rate):
                obj = drift(obj)
        return dumps(obj)

    async def _control(self, method: str, path: str, receive: Receive) -> tuple[int, Any]:
        if path == "/_sim/truth" and method == "GET":
            return 200, self.engine.truth()
        if path == "/_sim/health":
            return 200, {"status": "ok", "now": int(self.engine.now())}
        if path == "/_sim/faults":
            if method == "POST":
                try:
                    self.injector.replace(FaultConfig.from_dict(await read_body(receive)))
                except (ValueError, TypeError, ApiError) as exc:
                    return 400, {"error": {"message": str(exc), "type": "invalid_request_error", "param": None,
                                           "code": None}}  # fmt: skip
            return 200, self.injector.config.to_dict()
        return 404, {"error": {"message": f"Invalid URL ({method} {path})", "type": "invalid_request_error",
                               "param": None, "code": None}}  # fmt: skip


def _rate_headers(limit: int, remaining: int, reset: float) -> list[tuple[bytes, bytes]]:
    reset_text = f"{int(reset * 1000)}ms" if reset < 1 else f"{reset:.3g}s"
    return [
        (b"x-ratelimit-limit-requests", str(limit).encode()),
        (b"x-ratelimit-remaining-requests", str(remaining).encode()),
        (b"x-ratelimit-reset-requests", reset_text.encode()),
        *_TOKEN_HEADERS,
    ]


def parse_query(raw: bytes) -> tuple[dict[str, str], list[str]]:
    if not raw:
        return {}, []
    query: dict[str, str] = {}
    include: list[str] = []
    for key, value in parse_qsl(raw.decode("latin-1"), keep_blank_values=True):
        if key in ("include[]", "include"):
            include.append(value)
        else:
            query[key] = value
    return query, include


async def read_body(receive: Receive) -> dict[str, Any]:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            break
    raw = b"".join(chunks)
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except ValueError:
        raise ApiError(400, "We could not parse the JSON body of your request.") from None
    if not isinstance(body, dict):
        raise ApiError(400, "The request body must be a JSON object.")
    return body


async def respond(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
