"""One way to connect to the API from the configuration, for `serve`, `backfill` and `inspect` alike.

`connect()` returns an `ApiConnection`: the httpx pool (connect timeout, connection limit), the credential, and
the request options every bound the configuration sets (body cap, request deadline, page cap) for the protocol's
clients, which are built on it. `aclose()` releases the pool and the credential (an Entra ID token provider holds
its own session).

The pool is httpx's API on aiohttp's transport (`HTTP_AIOHTTP`, the default): the same requests, responses, errors
and proxy settings, at well under half the CPU per request of httpx's own transport, whose connection pool and
anyio layers were most of stepscope's cost (`tests/benchmarks/bench_profile.py`). `HTTP_HTTPX` keeps httpx's own.
On top of `httpx_aiohttp`'s transport, `AiohttpTransport` raises the httpx error that says what happened (its
package maps every connection problem to `ConnectTimeout`, which would name a refused connection or a TLS failure
"connect timed out") and leaves credentials in a URL to httpx, which has already turned them into a header.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import httpx
import httpx_aiohttp

from stepscope.client.auth import Auth, make_auth
from stepscope.client.core import CoreOptions
from stepscope.config import Config
from stepscope.core.records import RequestObserver

CONNECT_TIMEOUT_S = 5.0
HTTP_AIOHTTP = "aiohttp"
HTTP_HTTPX = "httpx"
HTTP_TRANSPORTS = (HTTP_AIOHTTP, HTTP_HTTPX)


# Most specific first: the first class an aiohttp error is an instance of names the httpx error it becomes.
_ERRORS: tuple[tuple[type[BaseException], type[httpx.TransportError]], ...] = (
    (aiohttp.ConnectionTimeoutError, httpx.ConnectTimeout),
    (aiohttp.ServerTimeoutError, httpx.ReadTimeout),
    (aiohttp.ClientProxyConnectionError, httpx.ProxyError),
    (aiohttp.ClientHttpProxyError, httpx.ProxyError),
    (aiohttp.ClientConnectorError, httpx.ConnectError),  # refused, unresolved, TLS: the OS or ssl error is its cause
    (aiohttp.InvalidURL, httpx.UnsupportedProtocol),
    (aiohttp.ServerDisconnectedError, httpx.RemoteProtocolError),
    (aiohttp.ClientPayloadError, httpx.ReadError),
    (aiohttp.ClientResponseError, httpx.RemoteProtocolError),  # an answer that is not HTTP
    (aiohttp.ClientError, httpx.ReadError),  # a reset or another socket error after connecting
)


def _httpx_error(exc: httpx.TransportError) -> httpx.TransportError:
    """The httpx error for what `httpx_aiohttp` raised from an aiohttp error (its cause)."""
    cause = exc.__cause__
    for aiohttp_type, httpx_type in _ERRORS:
        if isinstance(cause, aiohttp_type):
            if type(exc) is httpx_type:
                return exc
            mapped = httpx_type(str(cause) or type(cause).__name__)
            mapped.__cause__ = cause
            return mapped
    return exc


class _Body(httpx.AsyncByteStream):
    """A response body whose read errors are named like the request's."""

    def __init__(self, inner: httpx.AsyncByteStream) -> None:
        self._inner = inner

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._inner:
                yield chunk
        except httpx.TransportError as exc:
            raise _httpx_error(exc) from exc.__cause__

    async def aclose(self) -> None:
        await self._inner.aclose()


class AiohttpTransport(httpx_aiohttp.AiohttpTransport):
    """`httpx_aiohttp`'s transport with errors named by what happened; see the module docstring."""

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.userinfo:
            # httpx already sent them as an Authorization header; aiohttp refuses a URL with them beside that header.
            request.url = request.url.copy_with(username=None, password=None)
        try:
            response = await super().handle_async_request(request)
        except httpx.TransportError as exc:
            raise _httpx_error(exc) from exc.__cause__
        response.stream = _Body(response.stream)  # type: ignore[arg-type]  # an AsyncByteStream, as httpx reads it
        return response


class _AiohttpClient(httpx.AsyncClient):
    """An httpx client whose own transports, direct or through a proxy, are `AiohttpTransport`s."""

    def _init_transport(self, *args: Any, transport: httpx.AsyncBaseTransport | None = None, **kwargs: Any) -> Any:
        if transport is not None:
            return transport
        return AiohttpTransport(*args, **kwargs)

    def _init_proxy_transport(  # noqa: PLR0917 - httpx's own signature
        self,
        proxy: httpx.Proxy,
        verify: ssl.SSLContext | str | bool = True,
        cert: Any = None,
        trust_env: bool = True,
        http1: bool = True,
        http2: bool = False,
        limits: httpx.Limits = httpx.Limits(),  # noqa: B008 - immutable; httpx always passes its own
    ) -> Any:
        return AiohttpTransport(verify, cert, trust_env, http1, http2, limits, proxy=proxy)


def http_client(
    *,
    timeout: httpx.Timeout,
    limits: httpx.Limits,
    kind: str = HTTP_AIOHTTP,
    transport: httpx.AsyncBaseTransport | None = None,
) -> httpx.AsyncClient:
    """An httpx client on the transport `kind` names; a given `transport` (a test's) wins over `kind`."""
    if kind not in HTTP_TRANSPORTS:
        raise ValueError(f"unknown HTTP transport {kind!r}; known: {', '.join(HTTP_TRANSPORTS)}")
    if kind == HTTP_AIOHTTP and transport is None:
        # Direct and proxied (HTTPS_PROXY, NO_PROXY) requests alike go through aiohttp.
        return _AiohttpClient(timeout=timeout, limits=limits)
    return httpx.AsyncClient(transport=transport, timeout=timeout, limits=limits)


@dataclass(slots=True)
class ApiConnection:
    """The HTTP pool, the credential and the request options every client on them shares; a component whose
    `stop()` closes the pool and the credential (an Entra ID token provider holds its own session)."""

    http: httpx.AsyncClient
    auth: Auth
    options: CoreOptions
    name = "api connection"

    async def start(self) -> None:
        return None

    async def stop(self, budget_s: float = 1.0) -> None:
        """Close the pool and the credential. Idempotent."""
        await self.aclose()

    async def aclose(self) -> None:
        await self.http.aclose()
        close_auth = getattr(self.auth, "aclose", None)
        if close_auth is not None:
            await close_auth()


def connect(
    config: Config,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    auth: Auth | None = None,
    observer: RequestObserver | None = None,
    stop: asyncio.Event | None = None,
    http_transport: str = HTTP_AIOHTTP,
) -> ApiConnection:
    """The connection `config` describes. `transport` and `auth` are seams for tests; `http_transport` picks the pool's
    transport (`HTTP_AIOHTTP` or `HTTP_HTTPX`) when no `transport` is given."""
    api = config.api
    http = http_client(
        timeout=httpx.Timeout(api.timeout, connect=min(CONNECT_TIMEOUT_S, api.timeout)),
        limits=httpx.Limits(max_connections=config.poll.concurrency + 4),
        kind=http_transport,
        transport=transport,
    )
    auth = auth or make_auth(api.auth, key=str(api.api_key), token_file=api.token_file)
    return ApiConnection(http, auth, client_options(config, observer=observer, stop=stop))


def client_options(
    config: Config, *, observer: RequestObserver | None = None, stop: asyncio.Event | None = None
) -> CoreOptions:
    """The request options `config` sets for every client on one connection: headers and bounds."""
    api = config.api
    return CoreOptions(
        organization=api.org_id,
        project=api.project_id,
        observer=observer,
        stop=stop,
        max_body=api.max_body,
        deadline=api.timeout,
        max_pages=api.max_pages,
    )
