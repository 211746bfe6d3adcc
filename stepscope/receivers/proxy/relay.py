"""The two halves of relaying one request that `ProxyApp` and `TunnelRelay` share: sending it upstream (with
every failure turned into an OpenAI-shaped answer), and relaying the upstream's answer back as it streams.

Failures toward the upstream are answered, counted where they refuse the application, and logged at most once a
minute per kind (`RareLog`): no free upstream connection within the pool's wait is 503 `upstream_busy`
(`proxy_upstream_busy`); no answer in time is 504 `upstream_timeout`; an upstream that cannot be reached is 502
`bad_gateway`. An upstream that breaks off mid-answer raises `UpstreamCut`, and the server closes the
application's connection, as the upstream closed the proxy's.
"""

from __future__ import annotations

import contextlib

import httpx

from stepscope.contract.vocabulary import DropReason
from stepscope.core.records import Drops
from stepscope.receivers.asgi import AbortResponse, Send, error_body, respond
from stepscope.receivers.proxy.guard import RareLog
from stepscope.receivers.proxy.observations import ObservationQueue, Observed
from stepscope.receivers.proxy.upstream import end_to_end

RETRY_SOON = [(b"retry-after", b"1")]


class UpstreamCut(AbortResponse):
    """The upstream broke off mid-answer: the application's connection is closed, as the upstream's was."""


async def busy(send: Send, upstream: str, why: str, drops: Drops) -> None:
    """503 `upstream_busy`, counted as `proxy_upstream_busy`."""
    with contextlib.suppress(Exception):
        drops.dropped(DropReason.PROXY_UPSTREAM_BUSY)
    await respond(send, 503, error_body(f"upstream {upstream} busy: {why}; retry shortly", "upstream_busy"),
                  RETRY_SOON)  # fmt: skip


async def send_upstream(
    client: httpx.AsyncClient, request: httpx.Request, send: Send, *, upstream: str, rare: RareLog, drops: Drops
) -> httpx.Response | None:
    """The upstream's answer (its head read, its body streaming), or None once the failure was answered."""
    try:
        return await client.send(request, stream=True)
    except httpx.PoolTimeout:
        rare.warning("busy", "proxy: no upstream connection to %s came free in time: answering 503", upstream)
        await busy(send, upstream, "no connection came free in time", drops)
    except httpx.TimeoutException:
        rare.warning("timeout", "proxy: the upstream %s did not answer in time", upstream)
        await respond(send, 504, error_body(f"upstream {upstream} did not answer in time", "upstream_timeout"))
    except httpx.TransportError as exc:
        reason = type(exc).__name__
        rare.warning("unreachable", "proxy: cannot reach the upstream %s (%s)", upstream, reason)
        await respond(send, 502, error_body(f"cannot reach upstream {upstream} ({reason})", "bad_gateway"))
    return None


async def relay_answer(
    response: httpx.Response,
    send: Send,
    *,
    queue: ObservationQueue,
    answer: Observed | None,
    rare: RareLog,
    upstream: str,
) -> None:
    """Relay the answer's head and body (each chunk before it is queued for `answer`'s observation)."""
    head = end_to_end(response.headers.raw, request=False)
    await send({"type": "http.response.start", "status": response.status_code, "headers": head})
    complete = False
    try:
        async for chunk in response.aiter_raw():
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
            if answer is not None:
                queue.chunk(answer, chunk)
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        complete = True
    except httpx.HTTPError as exc:
        rare.warning("cut", "proxy: the upstream %s broke off an answer (%s)", upstream, type(exc).__name__)
        raise UpstreamCut(type(exc).__name__) from None
    finally:
        if answer is not None:
            queue.end(answer, complete)
