"""Pacing responses on the simulated clock: following a response's events, SSE bodies, waiting for the end.

`follow` yields a response's events (events.py) as simulated time reaches them and stops after the last one
(the terminal event, or the cancel instant); it never stops for a response stuck in `queued`, only when the
client goes away. `stream_sse` sends them as `event: <type>` / `data: <json>` frames (no `[DONE]`: the Responses
API ends the body after the terminal event); `cut_after=N` (the `truncate_rate` fault) ends the body after N
events: a stream cut short. `wait_end` returns once a response is terminal (a plain create answers then).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any

from stepscope.simulator.responses.engine import ResponsesEngine
from stepscope.simulator.responses.events import events_until, next_instant
from stepscope.simulator.responses.state import SimResponse
from stepscope.simulator.serializers import dumps

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

SSE_CONTENT_TYPE = b"text/event-stream; charset=utf-8"
_TICK_S = 0.01  # real seconds between looks at the clock when it cannot say how fast it runs
_MAX_SLEEP_S = 0.05  # a cancel can cut the timeline at any moment: look again at least this often


def pause(engine: ResponsesEngine, resp: SimResponse, now: float) -> float:
    """Real seconds until the response's next event, as far as the clock's speed tells, within bounds."""
    speed = getattr(engine.clock, "speed", None)
    upcoming = next_instant(resp, now)
    if not isinstance(speed, int | float) or speed <= 0 or upcoming is None:
        return _TICK_S
    return min(max((upcoming - now) / speed, 0.001), _MAX_SLEEP_S)


async def follow(engine: ResponsesEngine, resp: SimResponse, *, after: int = -1,
                 gone: asyncio.Event | None = None) -> AsyncIterator[dict[str, Any]]:  # fmt: skip
    """Yield the events of `resp` numbered above `after` as they happen, until its last one or `gone` is set."""
    azure = engine.azure
    while gone is None or not gone.is_set():
        now = engine.now()
        for event in events_until(resp, now, azure=azure, after=after):
            after = event["sequence_number"]
            yield event
        if now >= resp.end:
            return
        await asyncio.sleep(pause(engine, resp, now))


async def wait_end(engine: ResponsesEngine, resp: SimResponse) -> float:
    """Sleep until `resp` is terminal on the simulated clock; returns the simulated time then."""
    while True:
        now = engine.now()
        if now >= resp.end:
            return now
        await asyncio.sleep(pause(engine, resp, now))


def frame(event: dict[str, Any]) -> bytes:
    return b"event: " + str(event["type"]).encode() + b"\ndata: " + dumps(event) + b"\n\n"


async def stream_sse(
    receive: Receive, send: Send, engine: ResponsesEngine, resp: SimResponse, *,
    headers: list[tuple[bytes, bytes]], after: int = -1, cut_after: int | None = None,
) -> None:  # fmt: skip
    """Answer with the events of `resp` numbered above `after`; returns when the stream is done, the client has
    gone or `cut_after` events went. `headers` are the response headers, whose content type this replaces."""
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
        async for event in follow(engine, resp, after=after, gone=gone):
            if cut_after is not None and sent >= cut_after:
                break
            await send({"type": "http.response.body", "body": frame(event), "more_body": True})
            sent += 1
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
        with contextlib.suppress(Exception):  # the client may be gone already
            await send({"type": "http.response.body", "body": b"", "more_body": False})
