"""Verifying the platform's webhooks (OpenAI signs them as Standard Webhooks) and reading what they are about.

A delivery carries three headers: `webhook-id` (the same on every retry of one event), `webhook-timestamp` (Unix
seconds at signing) and `webhook-signature`, one or more space-separated `v1,<base64 HMAC-SHA256>` values of the
bytes `"{webhook-id}.{webhook-timestamp}." + body`, keyed with the base64-decoded part after `whsec_` of the
endpoint's secret (or the secret's own bytes without that prefix). This is what `openai`'s
`client.webhooks.verify_signature` checks, with one difference: a signature without the `v1,` version prefix is
not accepted here, as the Standard Webhooks format requires it.

`WebhookVerifier.verify()` returns the delivery's `WebhookEvent` or raises `WebhookRefused` (status 400 for a
malformed delivery, 401 for a signature that does not match or a timestamp more than `tolerance_s` away from our
clock). A delivery whose `webhook-id` was accepted within the tolerance window comes back with `duplicate=True`:
the sender's retry of a delivery whose answer it never saw, or a replay, and either way nothing to act on. The
remembered ids are bounded (`max_remembered`; the oldest go first), so a flood costs bounded memory.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass

DEFAULT_TOLERANCE_S = 300
"""Five minutes either way, the SDK's default."""
DEFAULT_MAX_REMEMBERED = 10_000
_TIMESTAMP = re.compile(r"[0-9]{1,12}")
_WEBHOOK_ID = re.compile(r"[\x21-\x7e]{1,256}")  # printable ASCII: it is part of the signed bytes and a dict key
OBJECT_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")


class WebhookRefused(Exception):
    """A delivery that must not be acted on; `status` is the HTTP answer, the message a fixed text."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class WebhookEvent:
    """A verified delivery: its `webhook_id`, event `type`, the id of the object it is about (`data.id`, when it is
    a plain id; None otherwise) and whether the same `webhook_id` was accepted before within the window."""

    webhook_id: str
    type: str
    object_id: str | None
    duplicate: bool = False


def signing_key(secret: str) -> bytes:
    """The HMAC key of a `whsec_<base64>` secret, or of a raw secret; `ValueError` for bad base64."""
    if not secret.startswith("whsec_"):
        return secret.encode()
    try:
        return base64.b64decode(secret[6:], validate=True)
    except binascii.Error:
        raise ValueError("the part after whsec_ must be base64") from None


def signature(key: bytes, webhook_id: str, timestamp: str, body: bytes) -> bytes:
    """The base64 HMAC-SHA256 a `v1,` signature of this delivery must equal."""
    signed = f"{webhook_id}.{timestamp}.".encode() + body
    return base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest())


class WebhookVerifier:
    """Checks deliveries against one secret. `wall` is the clock timestamps are compared with."""

    def __init__(
        self,
        secret: str,
        *,
        tolerance_s: int = DEFAULT_TOLERANCE_S,
        max_remembered: int = DEFAULT_MAX_REMEMBERED,
        wall: Callable[[], float] = time.time,
    ) -> None:
        if not secret:
            raise ValueError("a webhook secret is required")
        self._key = signing_key(secret)
        self._tolerance = tolerance_s
        self._max = max(1, max_remembered)
        self._wall = wall
        self._seen: OrderedDict[str, float] = OrderedDict()  # webhook id -> wall time accepted, oldest first

    def __repr__(self) -> str:
        return f"WebhookVerifier(secret='***', tolerance_s={self._tolerance})"

    def verify(self, body: bytes, headers: Mapping[str, str]) -> WebhookEvent:
        """The event of a delivery whose signature and timestamp hold; `WebhookRefused` otherwise.

        `headers` maps lower-case names to values. Nothing is remembered for a refused delivery.
        """
        webhook_id, timestamp, signatures = (headers.get(h) for h in ("webhook-id", "webhook-timestamp",
                                                                       "webhook-signature"))  # fmt: skip
        if webhook_id is None or timestamp is None or signatures is None:
            raise WebhookRefused(400, "unsigned: webhook-id, webhook-timestamp and webhook-signature are required")
        if not _WEBHOOK_ID.fullmatch(webhook_id) or not _TIMESTAMP.fullmatch(timestamp):
            raise WebhookRefused(400, "malformed webhook-id or webhook-timestamp")
        now = self._wall()
        if abs(now - int(timestamp)) > self._tolerance:
            raise WebhookRefused(401, f"webhook-timestamp more than {self._tolerance} s from this host's clock")
        expected = signature(self._key, webhook_id, timestamp, body)
        given = [part[3:].encode() for part in signatures.split() if part.startswith("v1,")]
        # Every candidate is compared (no early exit), each in constant time.
        if not sum(hmac.compare_digest(expected, sig) for sig in given):
            raise WebhookRefused(401, "no v1 signature matches this endpoint's secret")
        event_type, object_id = _event(body)
        self._forget(now)
        if webhook_id in self._seen:
            return WebhookEvent(webhook_id, event_type, object_id, duplicate=True)
        self._seen[webhook_id] = now
        if len(self._seen) > self._max:
            self._seen.popitem(last=False)
        return WebhookEvent(webhook_id, event_type, object_id)

    def _forget(self, now: float) -> None:
        """Drop ids accepted longer ago than the window: a replay of those fails the timestamp check anyway."""
        while self._seen:
            webhook_id, at = next(iter(self._seen.items()))
            if now - at <= self._tolerance:
                return
            del self._seen[webhook_id]


def _event(body: bytes) -> tuple[str, str | None]:
    """`(type, data.id when it is a plain id)` of a signed body; `WebhookRefused` 400 when unreadable."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        raise WebhookRefused(400, "body must be a JSON event object") from None
    if not isinstance(data, dict) or not isinstance(data.get("type"), str):
        raise WebhookRefused(400, "body must be a JSON event object with a type")
    inner = data.get("data")
    object_id = inner.get("id") if isinstance(inner, dict) else None
    return data["type"], object_id if isinstance(object_id, str) and OBJECT_ID.fullmatch(object_id) else None
