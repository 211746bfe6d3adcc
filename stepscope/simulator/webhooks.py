"""Webhook delivery shared by the simulated APIs, signed as OpenAI signs webhooks (Standard Webhooks).

Each event is POSTed as its JSON body (`{"id": "evt_...", "object": "event", "type", "created_at", "data": {"id":
...}}`; the event source gives everything but `id`) with headers `webhook-id` (stable across retries, so
receivers can deduplicate), `webhook-timestamp` (wall-clock Unix seconds at signing: receivers check it against
their own clock, whatever the simulator's speed) and `webhook-signature: v1,<base64 HMAC-SHA256 of
"{webhook-id}.{timestamp}.{body}">`. The key is the base64 after `whsec_` in the secret, or the secret's bytes
when it has no such prefix, as `openai`'s `client.webhooks.verify_signature` reads it.

`WebhookDelivery` is one background task: it takes the events that fell due (simulated time) from its source and
delivers them in order, one at a time; any answer other than 2xx, or no answer, is retried with doubling delays
up to `attempts` tries, then given up and counted. The queue is bounded; overflow is dropped and counted.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import hmac
import json
import logging
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx

log = logging.getLogger(__name__)
_MAX_BACKOFF_S = 8.0
_LOG_SIZE = 1000

DueEvents = Callable[[], list[dict[str, Any]]]
"""An event source: the bodies (without `id`) of the events due now, in simulated-time order."""


@dataclass(frozen=True, slots=True)
class WebhookTarget:
    """Where and how to deliver: `url`, the signing `secret`, `attempts` per event, per-attempt `timeout_s`."""

    url: str
    secret: str
    attempts: int = 5
    timeout_s: float = 5.0
    backoff_s: float = 0.5

    def __repr__(self) -> str:
        return f"WebhookTarget(url={self.url!r}, secret='***', attempts={self.attempts})"

    def validate(self) -> list[str]:
        """Every problem as `field: reason`; empty when usable."""
        problems = []
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            problems.append(f"webhook_url: must be an http(s) URL, got {self.url!r}")
        if not self.secret:
            problems.append("webhook_secret: must not be empty")
        elif self.secret.startswith("whsec_"):
            try:
                base64.b64decode(self.secret[6:], validate=True)
            except (binascii.Error, ValueError):
                problems.append("webhook_secret: the part after whsec_ must be base64")
        if self.attempts < 1:
            problems.append("webhook_attempts: must be >= 1")
        if self.timeout_s <= 0 or self.backoff_s < 0:
            problems.append("webhook_timeout: must be > 0")
        return problems


def signing_key(secret: str) -> bytes:
    return base64.b64decode(secret[6:]) if secret.startswith("whsec_") else secret.encode()


def sign(secret: str, webhook_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` header value for `body`."""
    signed = f"{webhook_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(signing_key(secret), signed, hashlib.sha256).digest()).decode()


class WebhookDelivery:
    """Delivers the events `due` returns to `target`. `start()` returns at once; `shutdown()` is idempotent.

    `rng` draws the event and webhook ids (seeded, so the same workload gives the same ids); `subject` names the
    `data.id` in the delivery log (`session_id`, `response_id`).
    """

    def __init__(
        self,
        due: DueEvents,
        target: WebhookTarget,
        *,
        rng: random.Random,
        subject: str,
        client: httpx.AsyncClient | None = None,
        wall: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        tick_s: float = 0.05,
        max_queue: int = 10_000,
    ) -> None:
        self._due = due
        self.target = target
        self._subject = subject
        self._client = client
        self._own_client = client is None
        self._wall = wall
        self._sleep = sleep
        self._tick_s = tick_s
        self._queue: deque[dict[str, Any]] = deque()
        self._max_queue = max_queue
        self._rng = rng
        self._task: asyncio.Task[None] | None = None
        self._down = False
        self.log: deque[dict[str, Any]] = deque(maxlen=_LOG_SIZE)
        self.counts = {"emitted": 0, "delivered": 0, "given_up": 0, "dropped": 0, "attempts": 0}

    async def start(self) -> None:
        if self._task is None or self._task.done():
            if self._client is None:
                self._client = httpx.AsyncClient(timeout=self.target.timeout_s)
            self._task = asyncio.get_running_loop().create_task(self._run(), name=f"sim-webhooks-{self._subject}")

    async def shutdown(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._own_client and self._client is not None:
            client, self._client = self._client, None
            await client.aclose()

    def _collect(self) -> None:
        for body in self._due():
            self.counts["emitted"] += 1
            if len(self._queue) >= self._max_queue:
                self.counts["dropped"] += 1
                continue
            event_id = f"evt_{self._rng.getrandbits(128):032x}"
            webhook_id = f"wh_{self._rng.getrandbits(128):032x}"
            self._queue.append({"webhook_id": webhook_id, "body": {"id": event_id, **body}})

    async def _run(self) -> None:
        while True:
            self._collect()
            while self._queue:
                await self._deliver(self._queue.popleft())
                self._collect()
            await self._sleep(self._tick_s)

    async def _deliver(self, message: dict[str, Any]) -> None:
        body = json.dumps(message["body"], separators=(",", ":")).encode()
        entry = {"webhook_id": message["webhook_id"], "id": message["body"]["id"], "type": message["body"]["type"],
                 self._subject: message["body"]["data"]["id"], "attempts": 0, "delivered": False,
                 "last_status": None}  # fmt: skip
        self.log.append(entry)
        for attempt in range(1, self.target.attempts + 1):
            entry["attempts"] = attempt
            self.counts["attempts"] += 1
            entry["last_status"] = status = await self._post(message["webhook_id"], body)
            if isinstance(status, int) and 200 <= status < 300:
                entry["delivered"] = True
                self.counts["delivered"] += 1
                if self._down:
                    self._down = False
                    log.info("webhook receiver accepts deliveries again url=%s", self.target.url)
                return
            if attempt < self.target.attempts:
                await self._sleep(min(self.target.backoff_s * 2 ** (attempt - 1), _MAX_BACKOFF_S))
        self.counts["given_up"] += 1
        if not self._down:
            self._down = True
            log.warning("webhook delivery failing url=%s last=%s; events are given up after %d attempts",
                        self.target.url, entry["last_status"], self.target.attempts)  # fmt: skip

    async def _post(self, webhook_id: str, body: bytes) -> int | str:
        """The receiver's HTTP status, or the transport error's class name."""
        assert self._client is not None
        timestamp = int(self._wall())
        headers = {
            "content-type": "application/json",
            "webhook-id": webhook_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(self.target.secret, webhook_id, timestamp, body),
        }
        try:
            response = await self._client.post(self.target.url, content=body, headers=headers,
                                               timeout=self.target.timeout_s)  # fmt: skip
        except httpx.HTTPError as exc:
            return type(exc).__name__
        return response.status_code

    def truth(self) -> dict[str, Any]:
        """Counts and the last deliveries (`webhook_id`, event `id`, `type`, the subject id, `attempts`,
        `delivered`, `last_status`)."""
        return {"url": self.target.url, **self.counts, "pending": len(self._queue), "deliveries": list(self.log)}
