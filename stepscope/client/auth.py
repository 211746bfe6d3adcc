"""Credentials for the Assistants API, one class per `STEPSCOPE_AUTH` mode.

| mode             | class               | header                            |
|------------------|---------------------|-----------------------------------|
| `bearer`         | `BearerAuth`        | `Authorization: Bearer <key>`     |
| `api-key`        | `ApiKeyAuth`        | `api-key: <key>` (Azure OpenAI)   |
| `token-file`     | `TokenFileAuth`     | `Authorization: Bearer <file>`    |
| `azure-identity` | `AzureIdentityAuth` | `Authorization: Bearer <Entra>`   |

Secrets never leave these objects except in the headers they return: `repr()` and every exception message
redact them. `azure.identity` is imported lazily so it stays an optional extra (`stepscope[azure]`).
"""

from __future__ import annotations

import asyncio
import inspect
import os
from pathlib import Path
from typing import Any, Protocol

from stepscope.client.retry import SystemClock
from stepscope.contract.vocabulary import AUTH_MODES, AuthMode
from stepscope.core.records import Clock
from stepscope.errors import AuthError, ConfigError

AZURE_AI_SCOPE = "https://ai.azure.com/.default"
"""Entra scope of Foundry Agents; Azure OpenAI (classic) uses `https://cognitiveservices.azure.com/.default`."""


class Auth(Protocol):
    """Produces the authentication headers for one request.

    `headers()` may do I/O (read a file, fetch a token) and raises only `AuthError`. `invalidate()` is called
    after a 401 so the next `headers()` re-reads or refreshes instead of reusing a cached credential.
    """

    async def headers(self) -> dict[str, str]: ...

    def invalidate(self) -> None: ...


class _StaticKeyAuth:
    """A static key in one header; subclasses name the header and its format. Nothing to refresh."""

    __slots__ = ("_key",)
    _header = "Authorization"
    _format = "{}"

    def __init__(self, key: str) -> None:
        if not key.strip():
            raise ConfigError(["api.api_key: empty"])
        self._key = key.strip()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(key=<redacted>)"

    async def headers(self) -> dict[str, str]:
        return {self._header: self._format.format(self._key)}

    def invalidate(self) -> None:
        """Nothing to refresh: a static key stays what it is."""


class BearerAuth(_StaticKeyAuth):
    """A static key sent as `Authorization: Bearer <key>` (OpenAI, or an OpenAI-compatible proxy)."""

    __slots__ = ()
    _format = "Bearer {}"


class ApiKeyAuth(_StaticKeyAuth):
    """A static key sent as `api-key: <key>` (Azure OpenAI key authentication)."""

    __slots__ = ()
    _header = "api-key"


class TokenFileAuth:
    """A bearer token read from a file (a mounted Kubernetes secret or projected token), re-read when it changes.

    The file is stat'ed at most every `check_interval` seconds; a new mtime, size or inode (atomic
    symlink swaps change the inode) triggers a re-read. Surrounding whitespace is stripped. A missing, unreadable
    or empty file raises `AuthError` naming the path, never the content.
    """

    __slots__ = ("_check_interval", "_clock", "_next_check", "_path", "_signature", "_token")

    def __init__(
        self, path: str | os.PathLike[str], *, clock: Clock | None = None, check_interval: float = 1.0
    ) -> None:
        self._path = Path(path)
        self._clock: Clock = clock or SystemClock()
        self._check_interval = check_interval
        self._signature: tuple[int, int, int] | None = None
        self._token: str | None = None
        self._next_check = float("-inf")

    def __repr__(self) -> str:
        return f"TokenFileAuth(path={str(self._path)!r}, token=<redacted>)"

    async def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._current()}"}

    def invalidate(self) -> None:
        """Force a stat (and a re-read if the file changed) on the next request."""
        self._next_check = float("-inf")

    def _current(self) -> str:
        now = self._clock.monotonic()
        if self._token is not None and now < self._next_check:
            return self._token
        self._next_check = now + self._check_interval
        try:
            st = self._path.stat()
        except OSError as exc:
            raise AuthError(f"token file {self._path} cannot be read: {type(exc).__name__}") from None
        signature = (st.st_mtime_ns, st.st_size, st.st_ino)
        if self._token is not None and signature == self._signature:
            return self._token
        try:
            token = self._path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise AuthError(f"token file {self._path} cannot be read: {type(exc).__name__}") from None
        if not token:
            raise AuthError(f"token file {self._path} is empty")
        self._token = token
        self._signature = signature
        return token


class AzureIdentityAuth:
    """An Entra ID bearer token from an azure-identity credential, refreshed `refresh_margin` s before expiry.

    `credential` is anything with `get_token(scope)` returning an object with `token` and `expires_on` (Unix
    seconds), sync or async; a sync one runs in a worker thread. Without it, `azure.identity`'s (sync)
    `DefaultAzureCredential` is created on first use (needs the `stepscope[azure]` extra) and closed by
    `aclose()`. Concurrent callers share one refresh.
    """

    __slots__ = ("_clock", "_credential", "_expires_on", "_lock", "_owned", "_refresh_margin", "_scope", "_token_cache")

    def __init__(
        self,
        credential: Any = None,
        *,
        scope: str = AZURE_AI_SCOPE,
        clock: Clock | None = None,
        refresh_margin: float = 300.0,
    ) -> None:
        self._credential = credential
        self._owned = credential is None
        self._scope = scope
        self._clock: Clock = clock or SystemClock()
        self._refresh_margin = refresh_margin
        self._expires_on = float("-inf")
        self._lock: asyncio.Lock | None = None
        self._token_cache: str | None = None

    def __repr__(self) -> str:
        return f"AzureIdentityAuth(scope={self._scope!r}, token=<redacted>)"

    async def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {await self._token()}"}

    def invalidate(self) -> None:
        """Drop the cached token so the next request asks the credential again."""
        self._expires_on = float("-inf")

    async def aclose(self) -> None:
        """Close the credential if this object created it; idempotent."""
        if not self._owned or self._credential is None:
            return
        credential, self._credential = self._credential, None
        self.invalidate()
        close = getattr(credential, "close", None)
        if close is not None:
            result = close()
            if inspect.isawaitable(result):
                await result

    def _fresh(self) -> bool:
        return self._token_cache is not None and self._clock.time() < self._expires_on - self._refresh_margin

    async def _token(self) -> str:
        if self._fresh():
            assert self._token_cache is not None
            return self._token_cache
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if not self._fresh():
                await self._refresh()
            assert self._token_cache is not None
            return self._token_cache

    async def _refresh(self) -> None:
        credential = self._credential or self._default_credential()
        self._credential = credential
        try:
            if inspect.iscoroutinefunction(credential.get_token):
                result = await credential.get_token(self._scope)
            else:
                result = await asyncio.to_thread(credential.get_token, self._scope)
                if inspect.isawaitable(result):  # a sync-looking wrapper around an async credential
                    result = await result
        except Exception as exc:
            # Azure credential errors describe the chain of credentials tried; they never contain the token.
            detail = str(exc).splitlines()[0][:200] if str(exc) else ""
            raise AuthError(f"no Entra token for scope {self._scope}: {type(exc).__name__}: {detail}") from None
        token = getattr(result, "token", None)
        expires_on = getattr(result, "expires_on", None)
        if not isinstance(token, str) or not token or not isinstance(expires_on, int | float):
            raise AuthError(f"the credential returned no usable token for scope {self._scope}")
        self._token_cache = token
        self._expires_on = float(expires_on)

    @staticmethod
    def _default_credential() -> Any:
        # The sync credential (run in a worker thread) needs only azure-identity's own dependencies; the aio one
        # also needs aiohttp, which the extra does not pull in. A token fetch is rare, so a thread costs nothing.
        try:
            from azure.identity import DefaultAzureCredential  # noqa: PLC0415 - optional extra, import lazily
        except ImportError:
            raise AuthError(
                "STEPSCOPE_AUTH=azure-identity needs azure-identity: pip install 'stepscope[azure]'"
            ) from None
        return DefaultAzureCredential()


def make_auth(
    mode: str,
    *,
    key: str | None = None,
    token_file: str | os.PathLike[str] | None = None,
    scope: str = AZURE_AI_SCOPE,
    clock: Clock | None = None,
) -> Auth:
    """Build the `Auth` for a `STEPSCOPE_AUTH` mode; raises `ConfigError` naming what is missing."""
    if mode in {AuthMode.BEARER, AuthMode.API_KEY}:
        if not key or not key.strip():
            raise ConfigError([f"api.api_key: required for auth mode {mode!s}"])
        return BearerAuth(key) if mode == AuthMode.BEARER else ApiKeyAuth(key)
    if mode == AuthMode.TOKEN_FILE:
        if not token_file:
            raise ConfigError([f"api.token_file: required for auth mode {AuthMode.TOKEN_FILE!s}"])
        return TokenFileAuth(token_file, clock=clock)
    if mode == AuthMode.AZURE_IDENTITY:
        return AzureIdentityAuth(scope=scope, clock=clock)
    raise ConfigError([f"api.auth: unknown mode {mode!r} (expected one of {', '.join(AUTH_MODES)})"])
