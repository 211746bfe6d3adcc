"""What a `/v1/watch` request must be to register anything: who may ask, how often, and in what body.

- `is_loopback(host)`: registration without a token is open only on a listener reachable from this host alone.
- `TokenBucket`: the request rate (`STEPSCOPE_WATCH_RATE`, bursts of twice that); `take()` never blocks and
  returns how long to wait, for a `Retry-After`.
- `parse_watch_body(body)`: a small flat UTF-8 JSON object of strings (`{"thread_id": "thread_..."}`; which fields
  mean what is the protocol's `Registrations`); anything else raises `InvalidWatchBody`, whose message is a fixed
  text naming the problem and never echoes the input (it goes into a 400 answer and a log line).

Pure functions and one small class over an injected clock: no I/O, no logging. `stepscope.receivers.http` turns their
answers into HTTP statuses, counts and logs.
"""

from __future__ import annotations

import ipaddress
import json
import time
from collections.abc import Callable
from typing import Any

MAX_FIELDS = 8
MAX_VALUE_CHARS = 256
DEFAULT_WATCH_RATE = 20.0


def is_loopback(host: str) -> bool:
    """True when `host` is a loopback address or `localhost`; a wildcard, a LAN address or another name is not."""
    host = host.strip().strip("[]").lower().rstrip(".")
    if host == "localhost":
        return True
    try:
        addr = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped.is_loopback
    return addr.is_loopback


class TokenBucket:
    """`rate` requests per second on average with bursts of `burst`; `take()` answers 0.0 when a request may go,
    else the seconds until one may."""

    def __init__(self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._rate = rate
        self._burst = max(1.0, burst)
        self._clock = clock
        self._tokens = self._burst
        self._last = clock()

    def take(self) -> float:
        now = self._clock()
        self._tokens = min(self._burst, self._tokens + max(0.0, now - self._last) * self._rate)
        self._last = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return 0.0
        return (1.0 - self._tokens) / self._rate


class InvalidWatchBody(Exception):
    """A `/v1/watch` body that registers nothing (answered 400); the message is a fixed text, never the input.

    Not a `ValueError`: it is raised from inside `json.loads` (repeated keys) and must not read as bad JSON.
    """


def _flat_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """`object_pairs_hook` refusing repeated keys, which would let two parsers read two different ids."""
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise InvalidWatchBody("repeated field in the body")
    return dict(pairs)


def parse_watch_body(body: bytes) -> dict[str, str]:
    """The fields of a body that must be a small flat UTF-8 JSON object of strings (at most `MAX_FIELDS`, each at
    most `MAX_VALUE_CHARS`); `InvalidWatchBody` naming the problem (never echoing the input) otherwise. What the
    fields must be is the protocol's to say."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidWatchBody("body must be UTF-8 JSON") from None
    if not text.lstrip().startswith("{"):
        raise InvalidWatchBody('body must be a JSON object, e.g. {"thread_id": "thread_..."}')
    try:
        data = json.loads(text, object_pairs_hook=_flat_object)
    except RecursionError:  # deep nesting inside the object
        raise InvalidWatchBody("body must be a flat JSON object") from None
    except ValueError:
        raise InvalidWatchBody("body must be JSON") from None
    if not isinstance(data, dict):
        raise InvalidWatchBody("body must be a JSON object")
    if len(data) > MAX_FIELDS:
        raise InvalidWatchBody("too many fields")
    if not all(isinstance(v, str) and 0 < len(v) <= MAX_VALUE_CHARS for v in data.values()):
        raise InvalidWatchBody(f"every field must be a string of 1 to {MAX_VALUE_CHARS} characters")
    return data
