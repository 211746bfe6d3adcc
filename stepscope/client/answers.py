"""Reading and describing one HTTP answer: the capped body, status -> exception, the server's own words, and
what a message may show (no credential, no URL userinfo). Pure helpers of `stepscope.client.core`.
"""

from __future__ import annotations

import base64
import json
import socket
import ssl
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

from stepscope.errors import AuthError, BadRequest, NotFound, RateLimited, SourceError, Unavailable, UnknownRoute

MESSAGE_LIMIT = 200
"""Characters of the server's `error.message` (or a transport problem) kept in an exception's message."""
ROUTE_MARKERS = ("invalid url", "unknown request url", "resource not found")
"""How OpenAI-style servers begin the `error.message` of a 404 for a path they do not serve: OpenAI and the
simulator `Invalid URL (GET /path)`, OpenAI's newer `Unknown request URL: GET /path. ...`, Azure `Resource not
found` (an unknown path, deployment or api-version). Compared in lower case."""
_EVIDENCE_LIMIT = 60


def status_error(
    status: int, message: str, retry_after: float | None, ctx: dict[str, Any], *, route: tuple[str, str] | None = None
) -> SourceError:
    """The exception for an HTTP error status; `route` is `(request, evidence)` when a 404 is for the path itself
    (`unknown_route`), which makes it an `UnknownRoute`."""
    if status in (401, 403):
        return AuthError(message, status_code=status, **ctx)
    if status == 404 and route is not None:
        return UnknownRoute(message, request=route[0], evidence=route[1], status_code=status, **ctx)
    if status == 404:
        return NotFound(message, status_code=status, **ctx)
    if status == 429:
        return RateLimited(message, retry_after=retry_after, status_code=status, **ctx)
    if status in (408, 409) or status >= 500:
        return Unavailable(message, retry_after=retry_after, status_code=status, **ctx)
    return BadRequest(message, status_code=status, **ctx)


async def read_capped(response: httpx.Response, cap: int) -> bytearray | None:
    """The decoded body, or None as soon as it (or its declared length) exceeds `cap` bytes."""
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > cap:
        return None
    body = bytearray()
    async for chunk in response.aiter_bytes():
        body += chunk
        if len(body) > cap:
            return None
    return body


def connect_reason(exc: BaseException) -> str:
    """Why a connection could not be made, in a few words, from the first telling cause in the chain."""
    cause: BaseException | None = exc
    for _ in range(8):  # httpx -> httpcore -> anyio -> OS error: the telling one is a few links down
        if cause is None:
            break
        if isinstance(cause, ssl.SSLError) and isinstance(cause.__cause__, ssl.SSLError):
            cause = cause.__cause__  # a library's wrapper (aiohttp's) around the ssl module's own error
            continue
        if isinstance(cause, ConnectionRefusedError):
            return "connection refused"
        if isinstance(cause, socket.gaierror):
            return f"name not resolved: {cause.strerror or cause}"
        if isinstance(cause, ssl.SSLCertVerificationError):
            return f"TLS: {cause.verify_message or cause.reason}"
        if isinstance(cause, ssl.SSLError):  # reason reads like WRONG_VERSION_NUMBER
            return f"TLS: {(cause.reason or str(cause)).lower().replace('_', ' ')}"
        cause = cause.__cause__ or cause.__context__
    return str(exc) or type(exc).__name__


def strip_userinfo(url: str) -> str:
    """`url` without its userinfo: `https://user:pw@host/v1` -> `https://host/v1`; other URLs unchanged."""
    parts = urlsplit(url)
    _, at, host = parts.netloc.rpartition("@")
    return urlunsplit(parts._replace(netloc=host)) if at else url


def size_text(n: int) -> str:
    return f"{n / 1048576:g} MiB" if n >= 1048576 else f"{n} bytes"


def server_message(content: bytes | bytearray | None) -> str:
    """`error.message` (or a bare `message`) from an error body, with `error.code` when present; else ''."""
    if content is None:
        return ""
    try:
        body = json.loads(content)
    except ValueError:
        return ""
    err = body.get("error") if isinstance(body, dict) else None
    source = err if isinstance(err, dict) else body if isinstance(body, dict) else {}
    message = source.get("message")
    text = message[:MESSAGE_LIMIT] if isinstance(message, str) else ""
    code = source.get("code")
    if isinstance(code, str) and code:
        text = f"{text} ({code})" if text else code
    return text


def unknown_route(content: bytes | bytearray | None, secrets: tuple[str, ...] = ()) -> str | None:
    """What shows that a 404 is for the path itself rather than for an object the path names, in a few words; None
    when the body is an API error, which is how a missing object is answered.

    OpenAI-style servers (the simulator too) answer a missing object with `{"error": {"message": "No thread found
    with id ..."}}`. Anything else is a route the server does not have: an `error.message` starting with one of
    `ROUTE_MARKERS` (or `error.code` `unknown_url`), a JSON body without an `error.message` (a web framework's
    `{"detail": "Not Found"}`), or no JSON at all (a web server's HTML page, a line of text, an empty body). Text
    quoted from the body has `secrets` redacted before it is cut short.
    """
    if content is None:
        return "a body too large for an API error"
    text = bytes(content).decode("utf-8", "replace").strip()
    if not text:
        return "an empty body"
    try:
        body = json.loads(text)
    except ValueError:
        return "an HTML page" if text.startswith("<") else _snippet(redact(text, secrets))
    err = body.get("error") if isinstance(body, dict) else None
    message = err.get("message") if isinstance(err, dict) else None
    if not isinstance(message, str) or not message.strip():
        return _snippet(redact(text, secrets))
    lowered = message.strip().lower()
    for marker in ROUTE_MARKERS:
        if lowered.startswith(marker):
            return message.strip()[: len(marker)]
    if isinstance(err, dict) and err.get("code") == "unknown_url":
        return _snippet(redact(message, secrets))
    return None


def _snippet(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= _EVIDENCE_LIMIT else line[: _EVIDENCE_LIMIT - 3] + "..."


def secrets_of(auth_headers: Mapping[str, str]) -> tuple[str, ...]:
    """Every form in which a credential of these headers could come back in an answer: the header values, the
    token after the scheme, and the base64 (standard and URL-safe) of each, longest first, so a server that echoes a
    key, or its base64 the way Basic auth carries one, never gets it into a message."""
    plain: list[str] = []
    for value in auth_headers.values():
        plain.append(value)
        scheme, _, token = value.partition(" ")
        if token and scheme.lower() in ("bearer", "basic"):
            plain.append(token)
    forms = set(plain)
    for value in plain:
        raw = value.encode()
        for encoded in (base64.b64encode(raw), base64.urlsafe_b64encode(raw)):
            forms.add(encoded.decode())
            forms.add(encoded.decode().rstrip("="))
    return tuple(sorted((v for v in forms if len(v) >= 4), key=len, reverse=True))


def redact(text: str, secrets: tuple[str, ...]) -> str:
    for secret in secrets:
        text = text.replace(secret, "<redacted>")
    return text
