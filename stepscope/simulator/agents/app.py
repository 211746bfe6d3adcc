"""The ASGI app that serves the Agents API beside (or instead of) the simulated Assistants API.

`AgentsApp` extends the Assistants `SimApp`: requests under `{prefix}/agents` go through the same pipeline of
Bearer auth, request budget, per-endpoint faults (latency, 429 bursts, 5xx, dropped connections, truncated and
malformed bodies, drift) and error bodies, with endpoint names from `AGENTS_ENDPOINTS`, and must carry
`OpenAI-Beta: agents=v1` (400 `invalid_beta` otherwise, as the Assistants API does for its header). `GET
/_sim/truth` answers the simulator's combined truth; the other `/_sim` endpoints and, unless the simulator serves
only the Agents API, every other path go to the Assistants app. Drift on Agents objects adds an unknown field and
may set an unknown `type` or `status` value or leave out `usage`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from stepscope.simulator.agents.handlers import AgentsHandlers
from stepscope.simulator.api import JSON_HEADER, STATIC_HEADERS, Receive, Scope, Send, SimApp, parse_query, respond
from stepscope.simulator.faults import FaultInjector
from stepscope.simulator.handlers import ApiError, Request
from stepscope.simulator.serializers import dumps

BETA = b"agents=v1"
_BETA_MESSAGE = (
    "You must provide the 'OpenAI-Beta' header to access the Agents API. Please try again by setting the header "
    "'OpenAI-Beta: agents=v1'."
)


def route(method: str, segs: list[str]) -> tuple[str, dict[str, str]] | None:
    """Endpoint name and path ids for a GET under `agents/sessions`, or None."""
    n = len(segs)
    if method != "GET" or n < 2 or segs[:2] != ["agents", "sessions"]:
        return None
    if n == 2:
        return "list_agent_sessions", {}
    ids = {"session_id": segs[2]}
    rest = segs[3:]
    if not rest:
        return "get_agent_session", ids
    if rest in (["items"], ["traces"], ["turns"], ["subagents"]):
        return f"list_agent_{'session_items' if rest[0] == 'items' else rest[0]}", ids
    if rest[0] == "turns":
        ids["turn_id"] = rest[1]
        if len(rest) == 2:
            return "get_agent_turn", ids
        return ("list_agent_turn_items", ids) if rest[2:] == ["items"] else None
    if rest[0] != "subagents":
        return None
    ids["subagent_id"] = rest[1]
    tail = rest[2:]
    if not tail:
        return "get_agent_subagent", ids
    if tail in (["turns"], ["items"]):
        return f"list_agent_subagent_{tail[0]}", ids
    if tail[0] == "turns" and len(tail) in (2, 3):
        ids["turn_id"] = tail[1]
        if len(tail) == 2:
            return "get_agent_subagent_turn", ids
        return ("list_agent_subagent_turn_items", ids) if tail[2] == "items" else None
    return None


class AgentsApp(SimApp):
    """`SimApp` plus the Agents routes; `serve_assistants=False` answers 404 outside `/agents` and `/_sim`."""

    def __init__(
        self, assistants: SimApp, agents: AgentsHandlers, *, serve_assistants: bool, truth: Callable[[], Any]
    ) -> None:
        super().__init__(
            assistants.handlers, assistants.injector, prefix=assistants.prefix, azure=False,
            accepted_keys=assistants.accepted_keys, lifespan=assistants._lifespan,
        )  # fmt: skip
        self.agents = agents
        self.serve_assistants = serve_assistants
        self._truth = truth
        self._agent_requests = 0

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        base = self.prefix + "/agents"
        if path == "/_sim/truth" and scope["method"] == "GET":
            await respond(send, 200, dumps(self._truth()), [JSON_HEADER])
        elif path == base or path.startswith(base + "/"):
            await self._agents_http(scope, send)
        elif self.serve_assistants or path.startswith("/_sim/"):
            await super()._http(scope, receive, send)
        else:
            body = {"error": {"message": f"Invalid URL ({scope['method']} {path})", "type": "invalid_request_error",
                              "param": None, "code": None}}  # fmt: skip
            await respond(send, 404, dumps(body), [JSON_HEADER, *STATIC_HEADERS])

    async def _agents_http(self, scope: Scope, send: Send) -> None:
        started = time.perf_counter()
        self._agent_requests += 1
        headers = [JSON_HEADER, (b"x-request-id", b"req_ag%022x" % self._agent_requests), *STATIC_HEADERS]
        injector = self.injector
        path: str = scope["path"]
        try:
            found = route(scope["method"], [s for s in path[len(self.prefix) :].split("/") if s])
            if found is None:
                raise ApiError(404, f"Invalid URL ({scope['method']} {path})")
            endpoint, ids = found
            spec = injector.config.for_endpoint(endpoint)
            req_headers = dict(scope["headers"])
            self._authorize(req_headers, spec.auth_fail)
            self._spend_budget(headers, self.agents.engine.clock.monotonic())
            if BETA not in [v.strip() for v in req_headers.get(b"openai-beta", b"").split(b",")]:
                raise ApiError(400, _BETA_MESSAGE, code="invalid_beta")
            if spec.active and await self._inject(endpoint, spec, headers, send):
                return
            query, include = parse_query(scope["query_string"])
            req = Request(ids, query, include, {}, self.agents.engine.now(), False, as_dicts=True)
            obj = getattr(self.agents, endpoint)(req).obj
            payload = dumps(_drifted(obj, spec.drift_rate, injector) if spec.drift_rate > 0 else obj)
            if injector.chance(spec.truncate_rate):
                payload = payload[: len(payload) // 2]
            elif injector.chance(spec.malformed_rate):
                payload = b'{"object": "list", "data": [<html>upstream error</html>'
            status = 200
        except ApiError as err:
            status = err.status
            payload = dumps({"error": {"message": err.message, "type": err.type, "param": err.param,
                                       "code": err.code}})  # fmt: skip
        headers.append((b"openai-processing-ms", str(int((time.perf_counter() - started) * 1000)).encode()))
        await respond(send, status, payload, headers)


def _drifted(obj: Any, rate: float, injector: FaultInjector) -> Any:
    if isinstance(obj, dict) and isinstance(obj.get("data"), list):
        return {**obj, "data": [drift(o, injector) if injector.chance(rate) else o for o in obj["data"]]}
    return drift(obj, injector) if injector.chance(rate) else obj


def drift(obj: dict[str, Any], injector: FaultInjector) -> dict[str, Any]:
    """A drifted copy of one Agents object: an unknown field, and maybe an unknown enum value or no `usage`."""
    out = {**obj, "x_sim_drift": {"note": "field unknown to the client"}}
    if injector.chance(0.5):
        if "type" in out and "turn_id" in out:  # an item
            out["type"] = "sim_drifted_item"
        elif "status" in out:
            out["status"] = "sim_drifted_status"
    if injector.chance(0.5):
        out.pop("usage", None)
    return out
