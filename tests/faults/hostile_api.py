"""A hostile Assistants v2 API over real HTTP: one healthy thread beside one thread per misbehaviour.

`HostileApi` serves `GET /v1/threads/{t}/runs[/{r}[/steps[/{s}]]]` and `GET /v1/assistants/{a}` on 127.0.0.1 from
a threaded `http.server` with keep-alive, streaming the bodies that must stream. Objects have the simulator's
shapes (`stepscope/simulator/serializers.py`); times are relative to the server's start, so every run lies inside
the default lookback. The threads, in `THREADS`:

- `thread_healthy`: three finished runs and one live run whose four steps finish over the first `LIVE_END_S`
  seconds (steps with function and code-interpreter calls). What it must export is `HEALTHY_STEPS`/`HEALTHY_RUNS`.
- `thread_big`: one run whose step listing is 100 MB with an honest `Content-Length`, one whose `GET` is 100 MB
  chunked without one.
- `thread_endless`: a step listing that is an endless chunked body, written as fast as the socket takes it.
- `thread_drip`: a step listing that trickles one byte every 0.2 s forever (no read ever times out).
- `thread_alternate`: step pages with `has_more: true` whose `last_id` alternates between two steps.
- `thread_fresh`: step pages with `has_more: true` and a new `last_id` on every page, forever.
- `thread_future`, `thread_negative`, `thread_tokens`: a finished run with sane steps and one or two steps with a
  timestamp of 10^12, a negative `created_at`, or 10^30 tokens (`INVALID_STEPS`; the sane ones are in
  `SIBLING_STEPS`).
- `thread_labels`: `FLOOD_RUNS` finished runs, each its own model and assistant, whose steps all have their own
  step type, status, assistant and tool type and name: far past every label cap and series budget.
- `thread_forever`: a run that never ends; its first step stays `in_progress` while a finished step is added
  every 1/`FOREVER_RATE` s.
- `thread_badjson`: one run whose `GET` body is cut-off JSON, one whose `GET` is JSON without a status.

A run whose `GET` misbehaves (`run_fault`) is left out of its thread's listing: stepscope takes a listed run from
the listing and never reads it by id, so the application registers these by id (`BY_ID`, `POST /v1/watch`).

Every API request is recorded in `requests` (arrival time, run, endpoint, items returned), so a test can compute
request rates and listing sizes. `shutdown()` also ends the bodies that would never end.
"""

from __future__ import annotations

import itertools
import json
import re
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

HEALTHY = "thread_healthy"
FOREVER = "thread_forever"
LABELS = "thread_labels"
THREADS = (
    HEALTHY,
    "thread_big",
    "thread_endless",
    "thread_drip",
    "thread_alternate",
    "thread_fresh",
    "thread_future",
    "thread_negative",
    "thread_tokens",
    LABELS,
    FOREVER,
    "thread_badjson",
)
PROBE_ASSISTANT = "asst_stepscope_credential_check"  # stepscope's start-up probe: answered 404, as OpenAI does
BIG = 100 * 1024 * 1024
LIVE_END_S = 8.0
FLOOD_RUNS = 120
FLOOD_STEPS = 12
FOREVER_RATE = 10.0
DRIP_EVERY_S = 0.2
_MIB = b" " * (1024 * 1024)
_PATH = re.compile(r"^/v1/(?:assistants/(?P<asst>[^/]+)|threads/(?P<thread>[^/]+)/runs(?:/(?P<run>[^/]+)"
                   r"(?:/steps(?:/(?P<step>[^/]+)|(?P<steps>))?)?)?)$")  # fmt: skip


@dataclass(frozen=True, slots=True)
class Request:
    """One API request as the server saw it; `items` is the number of objects a listing returned (-1: none)."""

    at: float  # monotonic
    endpoint: str  # list_runs, get_run, list_steps, get_step, get_assistant
    thread_id: str
    run_id: str | None
    items: int
    after: str | None = None  # a listing's cursor


@dataclass(frozen=True, slots=True)
class Step:
    """A step; times are seconds after the server's start (`end` None: never ends). `raw` overrides JSON fields."""

    id: str
    created: float
    end: float | None
    type: str = "message_creation"
    status: str = "completed"
    usage: tuple[int, int] = (120, 30)
    assistant_id: str | None = None
    calls: tuple[dict[str, Any], ...] = ()
    raw: tuple[tuple[str, Any], ...] = ()


@dataclass(slots=True)
class Run:
    """A run; `steps_fault`/`run_fault` name how its step listing or its `GET` misbehaves (None: they don't)."""

    id: str
    thread_id: str
    created: float
    end: float | None
    steps: list[Step] = field(default_factory=list)
    model: str = "gpt-4o"
    assistant_id: str = "asst_healthy"
    steps_fault: str | None = None
    run_fault: str | None = None


class HostileApi:
    """The server; a context manager. `url` is the API base (`http://127.0.0.1:PORT/v1`)."""

    def __init__(self) -> None:
        self.started = time.time()
        self.requests: list[Request] = []
        self._stopping = threading.Event()
        self._fresh = itertools.count()
        self.runs: dict[str, list[Run]] = {t: [] for t in THREADS}
        self._by_id: dict[str, Run] = {}
        for run in _scenario():
            self.runs[run.thread_id].append(run)
            self._by_id[run.id] = run
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as a real API; every answer has a length or is chunked
            disable_nagle_algorithm = True  # headers and body go out in two writes: no 40 ms delayed-ACK stall

            def do_GET(self) -> None:
                try:
                    api._handle(self)
                except OSError:  # the client hung up on a body it would not read: that is its right
                    self.close_connection = True

            def log_message(self, format: str, *args: Any) -> None:
                return

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            block_on_close = False
            request_queue_size = 128

        self._http = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._http.server_address[1]}/v1"
        self._thread = threading.Thread(target=self._http.serve_forever, name="hostile-api", daemon=True)

    # --- what the tests read ---------------------------------------------------------------------------------

    def now(self) -> float:
        """Seconds since the server started."""
        return time.time() - self.started

    def wall(self, t: float) -> int:
        """The Unix timestamp the server writes for `t` seconds after its start."""
        return int(self.started + t)

    def steps_of(self, run_id: str) -> list[Step]:
        """The steps of a run as of now (the forever run grows)."""
        return _visible(self._by_id[run_id], self.now())

    # --- lifecycle -------------------------------------------------------------------------------------------

    def __enter__(self) -> HostileApi:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    def shutdown(self) -> None:
        """Stop serving and end the endless bodies; idempotent."""
        self._stopping.set()
        if self._thread.is_alive():
            self._http.shutdown()
        self._http.server_close()

    # --- routing ---------------------------------------------------------------------------------------------

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        parts = urlsplit(h.path)
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        match = _PATH.match(parts.path)
        if match is None:
            _send(h, 404, _error("unknown path"))
            return
        at = time.monotonic()
        if match["asst"] is not None:
            self.requests.append(Request(at, "get_assistant", "", None, -1))
            asst = match["asst"]
            if asst == PROBE_ASSISTANT:
                _send(h, 404, _error(f"No assistant found with id '{asst}'."))
            else:
                created = int(self.started) - 3600
                name = f"Helper {asst[-3:]}"
                obj: dict[str, Any] = {"id": asst, "object": "assistant", "created_at": created, "name": name,
                                       "model": "gpt-4o", "tools": [], "metadata": {}}  # fmt: skip
                _send(h, 200, obj)
            return
        thread_id, run_id = match["thread"], match["run"]
        runs = self.runs.get(thread_id)
        run = self._by_id.get(run_id) if run_id else None
        if runs is None or (run_id is not None and (run is None or run.thread_id != thread_id)):
            self.requests.append(Request(at, "unknown", thread_id, run_id, -1))
            _send(h, 404, _error("No such thread or run."))
            return
        now = self.now()
        if run is None:
            self._list_runs(h, at, thread_id, runs, query, now)
        elif match["step"] is not None:
            self._get_step(h, at, run, match["step"], now)
        elif match["steps"] is not None:
            self._list_steps(h, at, run, query, now)
        else:
            self._get_run(h, at, run, now)

    def _list_runs(
        self, h: BaseHTTPRequestHandler, at: float, thread_id: str, runs: list[Run], q: dict[str, str], now: float
    ) -> None:
        newest_first = sorted((r for r in runs if r.run_fault is None), key=lambda r: r.created, reverse=True)
        page, more = _page([r.id for r in newest_first], q)
        self.requests.append(Request(at, "list_runs", thread_id, None, len(page), q.get("after")))
        _send(h, 200, _envelope([_run_json(self._by_id[i], now, self.started) for i in page], more))

    def _get_run(self, h: BaseHTTPRequestHandler, at: float, run: Run, now: float) -> None:
        self.requests.append(Request(at, "get_run", run.thread_id, run.id, -1))
        obj = _run_json(run, now, self.started)
        if run.run_fault == "big_chunked":
            _send_chunked(h, itertools.repeat(_MIB, BIG // len(_MIB)), self._stopping)
        elif run.run_fault == "bad_json":
            _send(h, 200, json.dumps(obj).encode()[:57])
        elif run.run_fault == "no_status":
            del obj["status"]
            _send(h, 200, obj)
        else:
            _send(h, 200, obj)

    def _get_step(self, h: BaseHTTPRequestHandler, at: float, run: Run, step_id: str, now: float) -> None:
        self.requests.append(Request(at, "get_step", run.thread_id, run.id, -1))
        step = next((s for s in _visible(run, now) if s.id == step_id), None)
        if step is None:
            _send(h, 404, _error(f"No step found with id '{step_id}'."))
        else:
            _send(h, 200, _step_json(run, step, now, self.started))

    def _list_steps(self, h: BaseHTTPRequestHandler, at: float, run: Run, q: dict[str, str], now: float) -> None:
        fault = run.steps_fault

        def record(items: int) -> None:
            self.requests.append(Request(at, "list_steps", run.thread_id, run.id, items, q.get("after")))

        if fault == "big_declared":
            record(-1)
            _send_declared(h, BIG, self._stopping)
        elif fault == "endless":
            record(-1)
            one = json.dumps(_step_json(run, run.steps[0], now, self.started)).encode() + b","
            _send_chunked(h, itertools.chain([b'{"object":"list","data":['], itertools.repeat(one * 256)),
                          self._stopping)  # fmt: skip
        elif fault == "drip":
            record(-1)
            head = [b'{"object":"list","data":[']
            _send_chunked(h, itertools.chain(head, itertools.repeat(b" ")), self._stopping, every=DRIP_EVERY_S)
        elif fault in ("alternate", "fresh"):
            if fault == "alternate":  # a, b, a, b, ...: the cursor it is given decides which comes next
                step = run.steps[1] if q.get("after") == run.steps[0].id else run.steps[0]
            else:
                n = next(self._fresh)
                step = Step(f"step_fresh_{n:07d}", 0.0, None)
            record(1)
            body = _envelope([_step_json(run, step, now, self.started)], True)
            _send(h, 200, body)
        else:
            page, more = _page([s.id for s in _visible(run, now)], q)
            record(len(page))
            by_id = {s.id: s for s in _visible(run, now)}
            _send(h, 200, _envelope([_step_json(run, by_id[i], now, self.started) for i in page], more))


# --- the scenario ----------------------------------------------------------------------------------------------


def _calls(prefix: str) -> tuple[dict[str, Any], ...]:
    return (
        {"id": f"call_{prefix}_f", "type": "function",
         "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}', "output": '{"temp":4}'}},
        {"id": f"call_{prefix}_c", "type": "code_interpreter",
         "code_interpreter": {"input": "print(1)", "outputs": [{"type": "logs", "logs": "1"}]}},
    )  # fmt: skip


def _ordinary_steps(prefix: str, start: float, every: float = 3.0) -> list[Step]:
    """Four finished steps: message, tool calls, tool calls, message."""
    kinds = ("message_creation", "tool_calls", "tool_calls", "message_creation")
    return [
        Step(f"step_{prefix}_{i}", start + i * every, start + (i + 1) * every, type=kind,
             calls=_calls(f"{prefix}_{i}") if kind == "tool_calls" else ())
        for i, kind in enumerate(kinds)
    ]  # fmt: skip


def _scenario() -> Iterator[Run]:
    for i, ago in enumerate((900, 600, 300)):
        yield Run(f"run_healthy_{i}", HEALTHY, -ago, -ago + 15, _ordinary_steps(f"healthy_{i}", -ago))
    live = LIVE_END_S / 5
    yield Run("run_healthy_live", HEALTHY, 0.0, LIVE_END_S, _ordinary_steps("healthy_live", 0.0, every=live))

    def finished(thread: str, name: str, **kw: Any) -> Run:
        return Run(f"run_{name}", thread, -200, -150, _ordinary_steps(name, -200), assistant_id="asst_hostile", **kw)

    yield finished("thread_big", "big_steps", steps_fault="big_declared")
    yield finished("thread_big", "big_run", run_fault="big_chunked")
    yield finished("thread_endless", "endless", steps_fault="endless")
    yield finished("thread_drip", "drip", steps_fault="drip")
    yield finished("thread_alternate", "alternate", steps_fault="alternate")
    yield Run("run_fresh", "thread_fresh", -100, None, [], assistant_id="asst_hostile", steps_fault="fresh")
    yield finished("thread_badjson", "badjson", run_fault="bad_json")
    yield Run("run_nostatus", "thread_badjson", -400, -350, _ordinary_steps("nostatus", -400),
              assistant_id="asst_hostile", run_fault="no_status")  # fmt: skip

    for thread, bad in (
        ("thread_future", [("created_at", 10**12)]),
        ("thread_negative", [("created_at", -5)]),
        ("thread_tokens", [("usage", {"prompt_tokens": 10**30, "completion_tokens": 10**30,
                                      "total_tokens": 2 * 10**30})]),
    ):  # fmt: skip
        name = thread.removeprefix("thread_")
        run = finished(thread, name)
        run.steps.insert(2, Step(f"step_{name}_bad", -195, -190, raw=tuple(bad)))
        if name == "future":  # an absurd end as well as an absurd start
            run.steps.insert(3, Step(f"step_{name}_badend", -194, -190, raw=(("completed_at", 10**12),)))
        yield run

    for r in range(FLOOD_RUNS):
        steps = [
            Step(f"step_flood_{r:03d}_{s:02d}", -500 + r, -499 + r, type=f"type_{r}_{s}", status=f"status_{r}_{s}",
                 usage=(10, 2), assistant_id=f"asst_fl_{r}_{s}",
                 calls=({"id": f"call_fl_{r}_{s}", "type": f"tool_{r}_{s}", f"tool_{r}_{s}": {"name": f"fn_{r}_{s}"}},))
            for s in range(FLOOD_STEPS)
        ]  # fmt: skip
        yield Run(f"run_flood_{r:03d}", LABELS, -500 + r, -498 + r, steps, model=f"model-flood-{r:03d}",
                  assistant_id=f"asst_flood_{r:03d}")  # fmt: skip

    yield Run("run_forever", FOREVER, 0.0, None, [Step("step_forever_00000", 0.0, None)], assistant_id="asst_hostile")


HEALTHY_RUNS = frozenset(f"run_healthy_{i}" for i in ("0", "1", "2", "live"))
HEALTHY_STEPS = frozenset(f"step_healthy_{i}_{n}" for i in ("0", "1", "2", "live") for n in range(4))
INVALID_STEPS = frozenset({"step_future_bad", "step_future_badend", "step_negative_bad", "step_tokens_bad"})
SIBLING_STEPS = frozenset(f"step_{name}_{n}" for name in ("future", "negative", "tokens") for n in range(4))
SIBLING_RUNS = frozenset({"run_future", "run_negative", "run_tokens"})
ALTERNATE_STEPS = frozenset({"step_alternate_0", "step_alternate_1"})


def forever_step_created(step_id: str) -> float:
    """When a finished step of the forever run appeared, in seconds after the server's start."""
    return int(step_id.rsplit("_", 1)[1]) / FOREVER_RATE


def _visible(run: Run, now: float) -> list[Step]:
    steps = [s for s in run.steps if s.created <= now]
    if run.id == "run_forever":
        made = int(now * FOREVER_RATE)
        steps += [Step(f"step_forever_{n:05d}", n / FOREVER_RATE, n / FOREVER_RATE) for n in range(1, made + 1)]
    return steps


# --- wire shapes -----------------------------------------------------------------------------------------------


def _ts(started: float, t: float | None) -> int | None:
    return None if t is None else int(started + t)


def _run_json(run: Run, now: float, started: float) -> dict[str, Any]:
    done = run.end is not None and now >= run.end
    status = "completed" if done else "in_progress"
    usage = None
    if done:
        valid = [s for s in run.steps if not s.raw]
        prompt, completion = sum(s.usage[0] for s in valid), sum(s.usage[1] for s in valid)
        usage = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
    return {
        "id": run.id, "object": "thread.run", "created_at": _ts(started, run.created), "assistant_id": run.assistant_id,
        "thread_id": run.thread_id, "status": status, "started_at": _ts(started, run.created),
        "expires_at": None if done else _ts(started, run.created + 600), "cancelled_at": None, "failed_at": None,
        "completed_at": _ts(started, run.end) if done else None, "required_action": None, "last_error": None,
        "model": run.model, "instructions": "", "tools": [], "metadata": {}, "incomplete_details": None,
        "usage": usage, "temperature": 1.0, "top_p": 1.0, "tool_choice": "auto", "parallel_tool_calls": True,
    }  # fmt: skip


def _step_json(run: Run, step: Step, now: float, started: float) -> dict[str, Any]:
    done = step.end is not None and now >= step.end
    status = step.status if done else "in_progress"
    end = _ts(started, step.end) if done else None
    if step.type == "message_creation":
        details: dict[str, Any] = {"type": "message_creation", "message_creation": {"message_id": f"msg_{step.id}"}}
    else:
        details = {"type": "tool_calls", "tool_calls": list(step.calls)}
    obj: dict[str, Any] = {
        "id": step.id, "object": "thread.run.step", "created_at": _ts(started, step.created),
        "run_id": run.id, "assistant_id": step.assistant_id or run.assistant_id, "thread_id": run.thread_id,
        "type": step.type, "status": status, "cancelled_at": None, "failed_at": None, "expired_at": None,
        "completed_at": end, "last_error": None, "step_details": details, "metadata": {},
        "usage": {"prompt_tokens": step.usage[0], "completion_tokens": step.usage[1],
                  "total_tokens": sum(step.usage)} if done else None,
    }  # fmt: skip
    obj.update(step.raw)
    return obj


def _envelope(items: list[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    first = items[0]["id"] if items else None
    last = items[-1]["id"] if items else None
    return {"object": "list", "data": items, "first_id": first, "last_id": last, "has_more": has_more}


def _error(message: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": None}}


def _page(ids: list[str], q: dict[str, str]) -> tuple[list[str], bool]:
    """A page of `ids` (already in the requested order) after `q["after"]`, `q["limit"]` long."""
    start = 0
    after = q.get("after")
    if after is not None:
        start = ids.index(after) + 1 if after in ids else len(ids)
    limit = max(1, min(int(q.get("limit", "20")), 100))
    page = ids[start : start + limit]
    return page, start + limit < len(ids)


# --- sending ---------------------------------------------------------------------------------------------------


def _send(h: BaseHTTPRequestHandler, status: int, body: dict[str, Any] | bytes) -> None:
    payload = body if isinstance(body, bytes) else json.dumps(body, separators=(",", ":")).encode()
    h.send_response(status)
    h.send_header("Content-Type", "application/json")
    h.send_header("Content-Length", str(len(payload)))
    h.end_headers()
    h.wfile.write(payload)


def _send_declared(h: BaseHTTPRequestHandler, size: int, stop: threading.Event) -> None:
    """`size` bytes with an honest Content-Length, written as long as the client reads them."""
    h.send_response(200)
    h.send_header("Content-Type", "application/json")
    h.send_header("Content-Length", str(size))
    h.end_headers()
    h.wfile.write(b'{"object":"list","data":[')
    left = size - 25
    while left > 0 and not stop.is_set():
        block = _MIB[: min(left, len(_MIB))]
        h.wfile.write(block)
        left -= len(block)
    h.close_connection = True


def _send_chunked(h: BaseHTTPRequestHandler, chunks: Iterable[bytes], stop: threading.Event, every: float = 0) -> None:
    """A chunked body of `chunks`, one every `every` seconds; an endless iterable ends only with `stop`."""
    h.send_response(200)
    h.send_header("Content-Type", "application/json")
    h.send_header("Transfer-Encoding", "chunked")
    h.end_headers()
    for chunk in chunks:
        if stop.is_set():
            h.close_connection = True
            return
        h.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        h.wfile.flush()
        if every:
            stop.wait(every)
    h.wfile.write(b"0\r\n\r\n")


BY_ID = tuple((run.thread_id, run.id) for run in _scenario() if run.run_fault is not None)
"""`(thread_id, run_id)` of the runs only a read by id reaches: register them through `/v1/watch`."""
