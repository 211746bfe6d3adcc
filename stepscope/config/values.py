"""The value types and parsers of settings: what one setting's text may be, and what it becomes.

Every parser takes the setting's text (from a flag, the environment or the TOML file, already a string) and
returns the typed value, or raises `ValueError` whose message is the reason, written to follow the setting's name
(`STEPSCOPE_POLL_INTERVAL (poll.interval): must be > 0`). A parser never echoes a secret's text in its error.
Nothing here knows the settings table or the `Config` dataclasses (`stepscope.config` pairs them with parsers).

`Secret` and `Url` are the two value types that hide themselves in `repr()`: an API key entirely, a URL's
userinfo (`redact_url`), so neither reaches a config summary, a log line or a traceback.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable
from enum import StrEnum
from typing import Any, TypeVar

_E = TypeVar("_E", bound=StrEnum)
# Full-match patterns (used with `fullmatch`): `$` alone would accept "thread_ok\n" and split a log line.
THREAD_ID = re.compile(r"thread_[A-Za-z0-9_-]{1,64}")
RUN_ID = re.compile(r"run_[A-Za-z0-9_-]{1,64}")
OBJECT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}")
"""Any API object's id, as the commands take them: letters, digits, `_`, `.`, `:` and `-`."""
_PROTOCOL_RE = re.compile(r"[a-z][a-z0-9_]{0,31}")
_AGENT_ID_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
_SIZE_RE = re.compile(r"^\s*(\d+)\s*([KMG]i?B|B)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10, "mib": 2**20, "gib": 2**30}
# Greedy up to the last "@" before the path: an unescaped "@" in a password must not leave its tail showing.
_USERINFO_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://)[^/?#\s]*@")


class Secret(str):
    """A string that never shows itself in `repr()` (and so not in config summaries or tracebacks)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "'***'" if self else "''"


EMPTY_SECRET = Secret("")


def redact_url(text: str) -> str:
    """`https://user:pass@host/v1` -> `https://***@host/v1`; text without userinfo comes back unchanged."""
    return _USERINFO_RE.sub(r"\1***@", text, count=1)


class Url(str):
    """A URL whose `repr()` hides its userinfo (`user:pass@`), as `Secret` hides keys; `str()` keeps it for use."""

    __slots__ = ()

    def __repr__(self) -> str:
        return repr(redact_url(self))


# --- parsers: each returns the value or raises ValueError with the reason ------------------------------------


def parse_duration(text: str) -> float:
    """`"90"`, `"90s"`, `"1.5m"`, `"1h"`, `"2d"`, `"250ms"` -> seconds."""
    match = _DURATION_RE.match(text)
    if not match:
        raise ValueError("must be a duration such as 30s, 5m, 1h or a number of seconds")
    return float(match.group(1)) * _DURATION_UNITS[match.group(2)]


def duration_text(seconds: float) -> str:
    """A duration as a user writes it: `24h`, `5m`, `30s`, `1.5s`, `250ms`."""
    for unit, size in (("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s" if seconds >= 1 or seconds == 0 else f"{seconds * 1000:g}ms"


def size_text(n: int) -> str:
    """A size as a user writes it: `8MiB`, `16KiB`, `1000` (bytes)."""
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n and n % size == 0:
            return f"{n // size}{unit}"
    return str(n)


def positive_duration(text: str) -> float:
    """A duration > 0 seconds."""
    value = parse_duration(text)
    if value <= 0:
        raise ValueError("must be > 0")
    return value


def protocol_name(text: str) -> str:
    """A protocol's name as registered (`assistants`, `agents`): lower-case letters, digits and `_`; whether one
    is registered under it is checked when the protocol is built."""
    name = text.strip().lower()
    if not _PROTOCOL_RE.fullmatch(name):
        raise ValueError("must be a protocol name such as assistants or agents")
    return name


def parse_bool(text: str) -> bool:
    """`1/true/yes/on` -> True, `0/false/no/off` or empty -> False, case-insensitive."""
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("must be true or false")


def _positive(cast: Callable[[str], float], kind: str) -> Callable[[str], Any]:
    """A parser for numbers > 0: `cast` is int or float, `kind` names it in the error."""

    def parse(text: str) -> Any:
        try:
            value = cast(text)
        except ValueError:
            raise ValueError(f"must be {kind}") from None
        if value <= 0:
            raise ValueError("must be > 0")
        return value

    return parse


positive_int = _positive(int, "an integer")
positive_float = _positive(float, "a number")


def parse_size(text: str) -> int:
    """`"8MiB"`, `"512KiB"`, `"1MB"`, `"65536"` -> bytes, > 0."""
    match = _SIZE_RE.match(text)
    if not match:
        raise ValueError("must be a size such as 8MiB, 512KiB or a number of bytes")
    value = int(match.group(1)) * _SIZE_UNITS[(match.group(2) or "b").lower()]
    if value <= 0:
        raise ValueError("must be > 0")
    return value


def choice(options: tuple[str, ...], *, upper: bool = False) -> Callable[[str], str]:
    """A parser for one of `options`, compared in lower case (upper case with `upper=True`)."""

    def parse(text: str) -> str:
        value = text.strip().upper() if upper else text.strip().lower()
        if value not in options:
            raise ValueError(f"must be one of {', '.join(options)}")
        return value

    return parse


def enum_choice(kind: type[_E]) -> Callable[[str], _E]:
    """A parser for one of `kind`'s values (case-insensitive), returning the member."""
    choose = choice(tuple(kind))

    def parse(text: str) -> _E:
        return kind(choose(text))

    return parse


def parse_url(text: str) -> Url:
    """An http(s) URL without its trailing slashes."""
    value = text.strip().rstrip("/")
    if not re.match(r"^https?://[^/\s]+", value):
        raise ValueError("must be an http:// or https:// URL")
    return Url(value)


def thread_ids(text: str) -> tuple[str, ...]:
    """Comma-separated `thread_...` ids, duplicates dropped, order kept."""
    ids = tuple(dict.fromkeys(t.strip() for t in text.split(",") if t.strip()))
    bad = [t for t in ids if not THREAD_ID.fullmatch(t)]  # the shape /v1/watch accepts too
    if bad:
        raise ValueError(f"invalid thread id(s) {', '.join(bad[:3])}: expected thread_...")
    return ids


def agent_ids(text: str) -> tuple[str, ...]:
    """Comma-separated agent ids, duplicates dropped, order kept."""
    ids = tuple(dict.fromkeys(a.strip() for a in text.split(",") if a.strip()))
    bad = [a for a in ids if not _AGENT_ID_RE.fullmatch(a)]
    if bad:
        raise ValueError(f"invalid agent id(s) {', '.join(bad[:3])}: letters, digits, _ . : and -, at most 128")
    return ids


_FOUNDRY_PROJECT_RE = re.compile(
    r"/subscriptions/[^/\s]+/resourceGroups/[^/\s]+/providers/Microsoft\.CognitiveServices/accounts/[^/\s]+"
    r"/projects/[^/\s]+",
    re.IGNORECASE,
)


def foundry_project_id(text: str) -> str:
    """A Foundry project's Azure resource id, as the portal shows it (its JSON view)."""
    value = text.strip()
    if not _FOUNDRY_PROJECT_RE.fullmatch(value):
        raise ValueError("must be /subscriptions/<id>/resourceGroups/<group>/providers/"
                         "Microsoft.CognitiveServices/accounts/<account>/projects/<project>")  # fmt: skip
    return value


def webhook_secret(text: str) -> Secret:
    """A `whsec_<base64>` signing secret (or raw text, as the SDK accepts); never echoed in the error."""
    value = text.strip()
    if value.startswith("whsec_"):
        try:
            if not base64.b64decode(value[6:], validate=True):
                raise ValueError("the part after whsec_ is empty")
        except (binascii.Error, ValueError):
            raise ValueError("must be whsec_ followed by base64, as the platform shows it") from None
    return Secret(value)


def listen_address(text: str) -> str:
    """`HOST:PORT` with a port in 0..65535 (`[::1]:9464` for IPv6)."""
    host, sep, port = text.strip().rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError("must be HOST:PORT, e.g. 127.0.0.1:9464")
    return text.strip()


def shard(text: str) -> tuple[int, int]:
    """`INDEX/COUNT` -> `(index, count)` with 0 <= index < count."""
    match = re.match(r"^\s*(\d+)\s*/\s*(\d+)\s*$", text)
    if not match:
        raise ValueError("must be INDEX/COUNT, e.g. 0/3")
    index, count = int(match.group(1)), int(match.group(2))
    if count < 1 or index >= count:
        raise ValueError("needs 0 <= INDEX < COUNT")
    return index, count


def stripped(text: str) -> str:
    """Any text, without surrounding whitespace."""
    return text.strip()


def secret(text: str) -> Secret:
    """Any text as a `Secret`, without surrounding whitespace."""
    return Secret(text.strip())
