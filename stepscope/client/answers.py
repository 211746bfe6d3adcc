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

from stepscope.errors import AuthError, BadRequest, NotFound, RateLimited, SourceError, Unavailable

MESSAGE_LIMIT = 200
"""Characters of the server's `error.message` (or a transport problem) kept in an exception's message."""


def status_error(status: int, message: str, retry_after: float | None, ctx: dict[str, Any]) -> SourceError:
    if status in (401, 403):
        return AuthError(message, status_code=status, **ctx)
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
