"""Server-sent events for streamed runs (`"stream": true` on create-run, create-thread-and-run and
`submit_tool_outputs`), as the Assistants API sends them (`thread.run.*`, `thread.run.step.*` and
`thread.message.*` events).

The events are read off the run's timeline as simulated time passes: `thread.created` (create-thread-and-run
only), `thread.run.created` (create requests only), then each run status change as `thread.run.<status>` and each
step's `thread.run.step.created`, `thread.run.step.in_progress` and `thread.run.step.<final status>`. Within a
`message_creation` step come its message's events: `thread.message.created` and `thread.message.in_progress`
(empty) right after the step starts, a `thread.message.delta` per chunk of text as it arrives, and
`thread.message.completed` (or `thread.message.incomplete`) right before the step ends. Every object is
serialised as of the instant of its event. The stream ends after `thread.run.requires_action` (the client resumes
it with a streamed `submit_tool_outputs`) or the run's terminal status, with `event: done` / `data: [DONE]`. A
client that goes away ends it too. `cut_after=N` (the `truncate_rate` fault) ends the body after N events without
`done`: a stream cut short.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from stepscope.simulator import serializers as ser
from stepscope.simulator.engine import Engine
from stepscope.simulator.messages import RunMessage, chunk_times
from stepscope.simulator.state import RUN_TERMINAL, SimRun

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

SSE_CONTENT_TYPE = b"text/event-stream; charset=utf-8"
DONE = b"event: done\ndata: [DONE]\n\n"
_TICK_S = 0.01  # real seconds between looks at the clock when it cannot say how fast it runs
_MAX_SLEEP_S = 0.05  # a cancel can rebuild the timeline at any moment: look again at least this often
# Order of simultaneous events: a run starts (or resumes) before its steps; step k's events come before step k+1's
# (a step ends before the next one starts); a run asks for outputs after its step exists and ends after its last
# step. Within a step: start, its message's start, text deltas, its message's end, the step's end.
_RUN_CHANGE, _STEP, _RUN_ACTION, _RUN_END = range(4)
_STEP_START, _MESSAGE_START, _MESSAGE_DELTA, _MESSAGE_END, _STEP_END = range(5)
_KIND = {_STEP_START: "step", _MESSAGE_START: "message", _MESSAGE_DELTA: "delta", _MESSAGE_END: "message_end",
         _STEP_END: "step_end"}  # fmt: skip
Due = tuple[float, int, int, int, int]  # (time, rank, step index, phase within the step, index)


def _frame(event: str, data: dict[str, Any]) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + ser.dumps(data) + b"\n\n"


def _due(run: SimRun, after: float, until: float) -> list[Due]:
    """Events in (after, until], in the order the API would send them. Run events carry their transition's index,
    deltas their chunk's."""
    due: list[Due] = []
    for i, (t, status, _) in enumerate(run.trans):
        if after < t <= until:
            rank = _RUN_END if status in RUN_TERMINAL else _RUN_ACTION if status == "requires_action" else _RUN_CHANGE
            due.append((t, rank, 0, 0, i))
    for k, step in enumerate(run.steps):
        message = step.plan.kind == "message_creation"
        if after < step.created <= until:
            due.append((step.created, _STEP, k, _STEP_START, 0))
            if message:
                due.append((step.created, _STEP, k, _MESSAGE_START, 0))
        if message:
            due += [(ct, _STEP, k, _MESSAGE_DELTA, j) for j, ct in enumerate(chunk_times(step))
                    if after < ct <= until and ct <= step.end]  # fmt: skip
        if after < step.end <= until:
            if message:
                due.append((step.end, _STEP, k, _MESSAGE_END, 0))
            due.append((step.end, _STEP, k, _STEP_END, 0))
    due.sort()
    return due


def _frames(run: SimRun, due: list[Due], azure: bool) -> tuple[list[bytes], bool]:
    """The frames of `due`, and whether the stream ends with them (requires_action or a terminal run)."""
    frames: list[bytes] = []
    for t, rank, k, phase, i in due:
        if rank != _STEP:
            status = run.trans[i][1]
            frames.append(_frame(f"thread.run.{status}", ser.run_dict(run, t, azure=azure)))
            if status == "requires_action" or status in RUN_TERMINAL:
                return frames, True
            continue
        step = run.steps[k]
        kind = _KIND[phase]
        if kind == "delta":
            frames.append(
                _frame(
                    "thread.message.delta",
                    ser.message_delta(step.plan.message_id or "", step.plan.text[i], first=i == 0),
                )
            )
        elif kind in ("message", "message_end"):
            obj = ser.message_dict(RunMessage(run, k), t, opening=kind == "message")
            names = ("created", "in_progress") if kind == "message" else (obj["status"],)
            frames += [_frame(f"thread.message.{name}", obj) for name in names]
        else:
            obj = ser.step_dict(run, step, t, content=False, azure=azure)
            if kind == "step":
                frames += [_frame("thread.run.step.created", obj), _frame("thread.run.step.in_progress", obj)]
            else:
                frames.append(_frame(f"thread.run.step.{step.end_status}", obj))
    return frames, False


async def stream_run(
    receive: Receive,
    send: Send,
    engine: Engine,
    run: SimRun,
    *,
    since: float,
    headers: list[tuple[bytes, bytes]],
    created: bool,
    new_thread: bool = False,
    cut_after: int | None = None,
) -> None:
    """Send `run`'s events from simulated time `since` until it waits for outputs or ends.

    `created` adds `thread.run.created` first (a create request), `new_thread` `thread.created` before it (a
    create-thread-and-run request); `headers` are the response headers, whose content type this replaces. Returns
    when the stream is done, the client has gone or `cut_after` events went.
    """
    head = [(k, v) for k, v in headers if k != b"content-type"] + [(b"content-type", SSE_CONTENT_TYPE)]
    await send({"type": "http.response.start", "status": 200, "headers": head})
    gone = asyncio.Event()

    async def watch_disconnect() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        gone.set()

    watcher = asyncio.create_task(watch_disconnect())
    sent = 0
    try:
        # Transitions at `since` itself belong to this stream: a create's `queued`, a submit's `queued`.
        last = since - 1e-6
        pending = [_frame("thread.run.created", ser.run_dict(run, since, azure=engine.azure))] if created else []
        if new_thread:
            pending.insert(0, _frame("thread.created", ser.thread_dict(engine.threads[run.thread_id])))
        while not gone.is_set():
            now = engine.now()
            frames, done = _frames(run, _due(run, last, now), engine.azure)
            last = now
            for frame in pending + frames:
                if cut_after is not None and sent >= cut_after:
                    return
                await send({"type": "http.response.body", "body": frame, "more_body": True})
                sent += 1
            pending = []
            if done:
                await send({"type": "http.response.body", "body": DONE, "more_body": False})
                return
            await asyncio.sleep(_pause(engine, run, now))
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
        if gone.is_set() or (cut_after is not None and sent >= cut_after):
            with contextlib.suppress(Exception):  # the client may be gone already
                await send({"type": "http.response.body", "body": b"", "more_body": False})


def _pause(engine: Engine, run: SimRun, now: float) -> float:
    """Real seconds until the run's next event, as far as the clock's speed tells, within bounds."""
    speed = getattr(engine.clock, "speed", None)
    chunks = [ct for s in run.steps if s.plan.text for ct in chunk_times(s)]
    times = [t for t in (*run.trans_times, *run.step_created, *(s.end for s in run.steps), *chunks) if t > now]
    if not isinstance(speed, int | float) or speed <= 0 or not times:
        return _TICK_S
    return min(max((min(times) - now) / speed, 0.001), _MAX_SLEEP_S)
