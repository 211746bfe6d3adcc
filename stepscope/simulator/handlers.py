"""Endpoint logic of the simulated Assistants API: validation, state changes and response bodies.

Handlers take a parsed `Request` and return a `Reply`: either an object (dict, drift-able) or, on the hot list
paths with no drift configured, pre-encoded bytes. Problems raise `ApiError`, which `api.py` renders as
`{"error": {"message", "type", "param", "code"}}`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from stepscope.simulator import serializers as ser
from stepscope.simulator.engine import Engine
from stepscope.simulator.messages import MessageError, NewMessage, parse_message
from stepscope.simulator.state import SimRun, SimThread, page_window

_PREFIX_OF = {"thread_id": "thread", "run_id": "run", "step_id": "step", "assistant_id": "asst", "message_id": "msg"}
_KIND_OF = {
    "thread_id": "thread", "run_id": "run", "step_id": "run step", "assistant_id": "assistant", "message_id": "message",
}  # fmt: skip
Lookup = Callable[[str], int | None]


class ApiError(Exception):
    """An error response: HTTP `status` and the four fields of the error body."""

    def __init__(
        self, status: int, message: str, *, type_: str = "invalid_request_error", param: str | None = None,
        code: str | None = None,
    ) -> None:  # fmt: skip
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.param = param
        self.code = code


@dataclass(slots=True)
class Request:
    """One parsed request: path ids, query (last value wins, `include[]` kept as a list) and JSON body."""

    ids: dict[str, str]
    query: dict[str, str]
    include: list[str]
    body: dict[str, Any]
    t: float
    azure: bool
    as_dicts: bool = False
    extra_headers: list[tuple[bytes, bytes]] = field(default_factory=list)


@dataclass(slots=True)
class Reply:
    obj: Any = None
    raw: bytes | None = None
    stream: SimRun | None = None  # `"stream": true`: answer with the run's events (streaming.py), not `obj`


class Handlers:
    """One method per endpoint; `api.py` routes to them by name."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    # --- lookups ------------------------------------------------------------------------------------------------

    def _id(self, req: Request, param: str) -> str:
        value = req.ids[param]
        if not value.startswith(_PREFIX_OF[param] + "_"):
            raise ApiError(
                400,
                f"Invalid '{param}': '{value}'. Expected an ID that begins with '{_PREFIX_OF[param]}'.",
                param=param,
            )
        return value

    def _missing(self, param: str, value: str) -> ApiError:
        return ApiError(404, f"No {_KIND_OF[param]} found with id '{value}'.", param=param)

    def _thread(self, req: Request) -> SimThread:
        tid = self._id(req, "thread_id")
        thread = self.engine.threads.get(tid)
        if thread is None:
            raise self._missing("thread_id", tid)
        return thread

    def _run(self, req: Request) -> SimRun:
        thread = self._thread(req)
        rid = self._id(req, "run_id")
        run = self.engine.runs.get(rid)
        if run is None or run.thread_id != thread.id:
            raise self._missing("run_id", rid)
        return run

    def _assistant(self, aid: object) -> dict[str, Any]:
        if not isinstance(aid, str) or not aid:
            raise ApiError(400, "Missing required parameter: 'assistant_id'.", param="assistant_id")
        if not aid.startswith("asst_"):
            raise ApiError(
                400, f"Invalid 'assistant_id': '{aid}'. Expected an ID that begins with 'asst'.", param="assistant_id"
            )
        assistant = self.engine.assistants.get(aid)
        if assistant is None:
            raise self._missing("assistant_id", aid)
        return assistant

    def _paging(self, req: Request) -> tuple[int, bool]:
        q = req.query
        try:
            limit = int(q.get("limit", "20"))
        except ValueError:
            raise ApiError(400, "Invalid 'limit': expected an integer.", param="limit") from None
        if not 1 <= limit <= 100:
            raise ApiError(400, f"Invalid 'limit': integer below minimum value. Expected 1..100, got {limit}.",
                           param="limit", code="integer_out_of_range")  # fmt: skip
        order = q.get("order", "desc")
        if order not in ("asc", "desc"):
            raise ApiError(400, f"Invalid 'order': expected 'asc' or 'desc', got '{order}'.", param="order")
        return limit, order == "desc"

    @staticmethod
    def _metadata(body: dict[str, Any]) -> dict[str, str]:
        meta = body.get("metadata")
        if meta is None:
            return {}
        if (
            not isinstance(meta, dict)
            or len(meta) > 16
            or not all(
                isinstance(k, str) and isinstance(v, str) and len(k) <= 64 and len(v) <= 512 for k, v in meta.items()
            )
        ):
            raise ApiError(400, "Invalid 'metadata': at most 16 string pairs (keys <= 64, values <= 512 chars).",
                           param="metadata")  # fmt: skip
        return meta

    # --- assistants and threads ---------------------------------------------------------------------------------

    def create_assistant(self, req: Request) -> Reply:
        if not isinstance(req.body.get("model"), str):
            raise ApiError(400, "Missing required parameter: 'model'.", param="model")
        self._metadata(req.body)
        return Reply(self.engine.create_assistant(req.body, req.t))

    def get_assistant(self, req: Request) -> Reply:
        return Reply(self._assistant(req.ids["assistant_id"]))

    def list_assistants(self, req: Request) -> Reply:
        limit, desc = self._paging(req)
        items = list(self.engine.assistants.values())
        pos = {a["id"]: i for i, a in enumerate(items)}
        return self._page(req, items, pos.get, limit=limit, desc=desc, to_obj=lambda a: a)

    def create_thread(self, req: Request) -> Reply:
        messages = self._new_messages(req.body.get("messages"), "messages")
        return Reply(ser.thread_dict(self.engine.create_thread(self._metadata(req.body), req.t, messages)))

    def get_thread(self, req: Request) -> Reply:
        return Reply(ser.thread_dict(self._thread(req)))

    def list_threads(self, req: Request) -> Reply:
        """The project's threads, newest first by default, paged like runs (Foundry Agents; OpenAI has none)."""
        if not req.azure:
            raise ApiError(404, "Invalid URL (GET /threads)")
        limit, desc = self._paging(req)
        items = list(self.engine.threads.values())  # creation order: threads are only ever appended
        pos = {t.id: i for i, t in enumerate(items)}
        return self._page(req, items, pos.get, limit=limit, desc=desc, to_obj=ser.thread_dict)

    # --- messages -----------------------------------------------------------------------------------------------

    def create_message(self, req: Request) -> Reply:
        thread = self._thread(req)
        new = self._new_message(req.body, "")
        active = thread.active_run(req.t)
        if active is not None:
            raise ApiError(400, f"Can't add messages to {thread.id} while a run {active.id} is active.")
        return Reply(ser.message_dict(self.engine.add_message(thread, new, req.t), req.t))

    def list_messages(self, req: Request) -> Reply:
        """The thread's messages (newest first by default); `run_id` keeps those a run wrote."""
        thread = self._thread(req)
        limit, desc = self._paging(req)
        t, log = req.t, thread.log
        items: Sequence[Any] = log.visible(t)
        lookup: Lookup = partial(log.index, t=t)
        run_id = req.query.get("run_id")
        if run_id is not None:
            items = [m for m in items if m.run_id == run_id]
            lookup = {m.id: i for i, m in enumerate(items)}.get
        return self._page(req, items, lookup, limit=limit, desc=desc, to_obj=lambda m: ser.message_dict(m, t))

    def get_message(self, req: Request) -> Reply:
        thread = self._thread(req)
        mid = self._id(req, "message_id")
        message = thread.log.find(mid, req.t)
        if message is None:
            raise self._missing("message_id", mid)
        return Reply(ser.message_dict(message, req.t))

    def _new_messages(self, raw: object, param: str) -> list[NewMessage]:
        """The messages of a body's `param` list (absent: none); 400 for the first one the API would refuse."""
        if raw is None:
            return []
        if not isinstance(raw, list):
            raise ApiError(400, f"Invalid '{param}': expected an array of messages.", param=param)
        return [self._new_message(item, f"{param}[{i}]") for i, item in enumerate(raw)]

    def _new_message(self, raw: object, where: str) -> NewMessage:
        try:
            new = parse_message(raw, where)
        except MessageError as exc:
            raise ApiError(400, str(exc), param=exc.param) from None
        new.metadata = self._metadata(raw if isinstance(raw, dict) else {})
        return new

    # --- runs ---------------------------------------------------------------------------------------------------

    def create_run(self, req: Request) -> Reply:
        thread = self._thread(req)
        extra = self._new_messages(req.body.get("additional_messages"), "additional_messages")
        return self._start_run(thread, req, req.body, extra=extra)

    def create_thread_and_run(self, req: Request) -> Reply:
        """A new thread (with `thread.messages`) and a run on it; everything is validated before either exists."""
        spec = req.body.get("thread") or {}
        spec = spec if isinstance(spec, dict) else {}
        assistant = self._assistant(req.body.get("assistant_id"))
        self._metadata(req.body)
        messages = self._new_messages(spec.get("messages"), "thread.messages")
        thread = self.engine.create_thread(self._metadata(spec), req.t, messages)
        return self._start_run(thread, req, req.body, assistant)

    def _start_run(
        self, thread: SimThread, req: Request, body: dict[str, Any], assistant: dict[str, Any] | None = None,
        extra: list[NewMessage] | None = None,
    ) -> Reply:  # fmt: skip
        """A run on `thread`, after `extra` messages are appended; 400 while the thread has an active run."""
        assistant = assistant or self._assistant(body.get("assistant_id"))
        self._metadata(body)
        active = thread.active_run(req.t)
        if active is not None:
            raise ApiError(400, f"Thread {thread.id} already has an active run {active.id}.")
        for new in extra or []:
            self.engine.add_message(thread, new, req.t)
        run = self.engine.create_run(thread, assistant, body, req.t)
        return Reply(ser.run_dict(run, req.t, azure=req.azure), stream=run if body.get("stream") is True else None)

    def get_run(self, req: Request) -> Reply:
        return Reply(ser.run_dict(self._run(req), req.t, azure=req.azure))

    def modify_run(self, req: Request) -> Reply:
        run = self._run(req)
        run.metadata = self._metadata(req.body)
        return Reply(ser.run_dict(run, req.t, azure=req.azure))

    def list_runs(self, req: Request) -> Reply:
        thread = self._thread(req)
        limit, desc = self._paging(req)
        # Every stored run was created at or before now (the workload creates runs at their scheduled time).
        return self._page(
            req,
            thread.runs,
            thread.run_pos.get,
            limit=limit,
            desc=desc,
            to_obj=lambda r: ser.run_dict(r, req.t, azure=req.azure),
        )

    def cancel_run(self, req: Request) -> Reply:
        run = self._run(req)
        problem = run.cancel(req.t)
        if problem:
            raise ApiError(400, problem)
        return Reply(ser.run_dict(run, req.t, azure=req.azure))

    def submit_tool_outputs(self, req: Request) -> Reply:
        run = self._run(req)
        raw = req.body.get("tool_outputs")
        if not isinstance(raw, list) or not all(isinstance(o, dict) and isinstance(o.get("tool_call_id"), str)
                                                for o in raw):  # fmt: skip
            raise ApiError(400, "Missing required parameter: 'tool_outputs'.", param="tool_outputs")
        outputs = {o["tool_call_id"]: str(o.get("output") or "") for o in raw}
        problem = run.submit(req.t, outputs)
        if problem:
            raise ApiError(400, problem, param="tool_outputs")
        stream = run if req.body.get("stream") is True else None
        return Reply(ser.run_dict(run, req.t, azure=req.azure), stream=stream)

    # --- steps --------------------------------------------------------------------------------------------------

    def list_steps(self, req: Request) -> Reply:
        run = self._run(req)
        limit, desc = self._paging(req)
        t = req.t
        n = run.visible(t)
        after = self._cursor(req, "after", run.step_pos.get, n)
        before = self._cursor(req, "before", run.step_pos.get, n)
        window, more = page_window(n, limit, desc, after, before)
        steps = run.steps
        content, azure = ser.wants_content(req.include), req.azure
        first = steps[window[0]].plan.id if window else None
        last = steps[window[-1]].plan.id if window else None
        if req.as_dicts:
            data = [ser.step_dict(run, steps[i], t, content=content, azure=azure) for i in window]
            return Reply(_envelope(data, first, last, more, azure))
        items = [ser.step_bytes(run, steps[i], t, content=content, azure=azure) for i in window]
        return Reply(raw=ser.list_bytes(items, first, last, more, azure=azure))

    def get_step(self, req: Request) -> Reply:
        run = self._run(req)
        sid = self._id(req, "step_id")
        i = run.step_index(sid, req.t)
        if i is None:
            raise self._missing("step_id", sid)
        content = ser.wants_content(req.include)
        return Reply(ser.step_dict(run, run.steps[i], req.t, content=content, azure=req.azure))

    # --- paging helpers -----------------------------------------------------------------------------------------

    def _cursor(self, req: Request, name: str, lookup: Lookup, count: int) -> int | None:
        value = req.query.get(name)
        if value is None:
            return None
        i = lookup(value)
        if i is None or i >= count:
            raise ApiError(400, f"Invalid '{name}': no object with id '{value}' in this list.", param=name)
        return i

    def _page(
        self, req: Request, items: Sequence[Any], lookup: Lookup, *, limit: int, desc: bool,
        to_obj: Callable[[Any], dict[str, Any]],
    ) -> Reply:  # fmt: skip
        n = len(items)
        window, more = page_window(n, limit, desc, self._cursor(req, "after", lookup, n),
                                   self._cursor(req, "before", lookup, n))  # fmt: skip
        objs = [to_obj(items[i]) for i in window]
        first = objs[0]["id"] if objs else None
        last = objs[-1]["id"] if objs else None
        return Reply(_envelope(objs, first, last, more, req.azure))


def _envelope(data: list[Any], first: str | None, last: str | None, more: bool, azure: bool) -> dict[str, Any]:
    if azure:
        return {"data": data, "last_id": last, "has_more": more}
    return {"object": "list", "data": data, "first_id": first, "last_id": last, "has_more": more}
