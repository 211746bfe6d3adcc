"""The proxy's side toward the API: the one upstream origin, the headers that cross, and the bounded pools.

Only hop-by-hop headers (RFC 9110 section 7.6.1: `Connection` and the headers it names, `Keep-Alive`,
`Proxy-Connection`, `TE`, `Trailer`, `Transfer-Encoding`, `Upgrade`, `Proxy-Authenticate`,
`Proxy-Authorization`, plus `Expect` and `Host`, which belong to each connection) stay behind; an upgrade request
keeps its `Upgrade` and `Connection: upgrade`, which ask the upstream for the same switch.

The bounds, so that one hanging route can never starve the others:

- requests: one pool of `POOL_CONNECTIONS` (512) connections, 64 kept idle for 30 s; connect 10 s; the upstream
  read timeout, 600 s, bounds the wait for the answer's head and each wait between its bytes (the SDK's own
  request timeout is 600 s, and a run's stream may be quiet that long); a request that finds no free connection
  within `POOL_WAIT_S` (5 s) gets 503 `upstream_busy`;
- `RouteShares`: requests of one route (method and path, ids masked) waiting for the upstream's head hold at
  most `ROUTE_SHARE` (384) of the pool's connections; past it the request gets 503 `upstream_busy` at once, so
  128 connections always remain for every other route;
- an application that leaves frees its upstream request at once: the proxy cancels it when the client's
  connection is lost, before, while and after the upstream's head arrives (`ProxyApp`);
- upgrades (WebSocket) use a pool of their own, `TUNNEL_CONNECTIONS` (256), so long-lived sockets never take
  connections from requests; the upstream has 30 s to answer the handshake.
"""

from __future__ import annotations

import http.cookiejar
import re
from urllib.parse import urlsplit

import httpx

HOP_BY_HOP = frozenset(
    {
        b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer", b"transfer-encoding", b"upgrade",
        b"proxy-authenticate", b"proxy-authorization",
    }
)  # fmt: skip
_REQUEST_ONLY = frozenset({b"host", b"expect"})  # set per connection: the upstream's host, the server's 100-continue
POOL_CONNECTIONS = 512
ROUTE_SHARE = 384
POOL_WAIT_S = 5.0
TUNNEL_CONNECTIONS = 256
UPSTREAM_TIMEOUT = httpx.Timeout(connect=10.0, read=600.0, write=600.0, pool=POOL_WAIT_S)
UPSTREAM_LIMITS = httpx.Limits(max_connections=POOL_CONNECTIONS, max_keepalive_connections=64, keepalive_expiry=30.0)
TUNNEL_TIMEOUT = httpx.Timeout(connect=10.0, read=30.0, write=30.0, pool=POOL_WAIT_S)
TUNNEL_LIMITS = httpx.Limits(max_connections=TUNNEL_CONNECTIONS, max_keepalive_connections=0)
_ID_SEGMENT = re.compile(rb"/[^/]*[0-9][^/]*")


def upstream_origin(base_url: str) -> str:
    """`https://user:pw@host:8443/api/projects/p` -> `https://host:8443`; ValueError for anything not http(s)."""
    parts = urlsplit(base_url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an http:// or https:// URL")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{parts.scheme}://{host}" + (f":{parts.port}" if parts.port else "")


def _client(timeout: httpx.Timeout, limits: httpx.Limits) -> httpx.AsyncClient:
    jar = http.cookiejar.CookieJar(policy=http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))
    return httpx.AsyncClient(timeout=timeout, limits=limits, cookies=jar, follow_redirects=False)


def make_upstream_client() -> httpx.AsyncClient:
    """The default upstream client: no cookie jar that keeps anything, no redirects followed, the bounds above."""
    return _client(UPSTREAM_TIMEOUT, UPSTREAM_LIMITS)


def make_tunnel_client() -> httpx.AsyncClient:
    """The client of upgrade requests: its own pool (see the module docstring), nothing kept idle."""
    return _client(TUNNEL_TIMEOUT, TUNNEL_LIMITS)


def _connection_named(headers: list[tuple[bytes, bytes]]) -> set[bytes]:
    named: set[bytes] = set()
    for name, value in headers:
        if name.lower() == b"connection":
            named.update(v.strip().lower() for v in value.split(b",") if v.strip())
    return named


def end_to_end(headers: list[tuple[bytes, bytes]], *, request: bool) -> list[tuple[bytes, bytes]]:
    """`headers` without hop-by-hop ones (and, for a request, without `Host` and `Expect`), order kept."""
    drop = HOP_BY_HOP | _connection_named(headers) | (_REQUEST_ONLY if request else frozenset())
    return [(name, value) for name, value in headers if name.lower() not in drop]


def upgrade_request(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """An upgrade request's headers for the upstream: end-to-end ones, then `Connection: upgrade` and its
    `Upgrade` value(s)."""
    upgrade = [(name, value) for name, value in headers if name.lower() == b"upgrade"]
    return [*end_to_end(headers, request=True), (b"connection", b"upgrade"), *upgrade]


def route_key(method: str, raw_path: bytes) -> bytes:
    """The route a request counts against in `RouteShares`: its method and path, each segment holding a digit
    (an id) masked, so all requests for runs of all threads are one route."""
    return method.encode("latin-1") + b" " + _ID_SEGMENT.sub(b"/*", raw_path)


class RouteShares:
    """How many requests of each route wait for the upstream's head; `take()` refuses past `share`."""

    __slots__ = ("_share", "_waiting")

    def __init__(self, share: int = ROUTE_SHARE) -> None:
        self._share = share
        self._waiting: dict[bytes, int] = {}

    def take(self, key: bytes) -> bool:
        held = self._waiting.get(key, 0)
        if held >= self._share:
            return False
        self._waiting[key] = held + 1
        return True

    def release(self, key: bytes) -> None:
        held = self._waiting.get(key, 0) - 1
        if held > 0:
            self._waiting[key] = held
        else:
            self._waiting.pop(key, None)

    def waiting(self, key: bytes) -> int:
        return self._waiting.get(key, 0)
