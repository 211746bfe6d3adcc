"""Proxy mode: a reverse proxy in front of the API that sees work the moment the application starts it.

`ProxyServer(ProxyApp(upstream, observer, drops=...), host, port)` relays the application's requests (and its
WebSockets) to `upstream` and shows the answers of the requests the protocol's `ProxyObserver` routes to the sinks
it gives, from a task of its own: relaying never waits on observing.
"""

from __future__ import annotations

from stepscope.receivers.proxy.guard import GuardedObserver, RareLog
from stepscope.receivers.proxy.relay import UpstreamCut
from stepscope.receivers.proxy.server import ProxyApp, ProxyServer
from stepscope.receivers.proxy.upstream import make_upstream_client, upstream_origin

__all__ = [
    "GuardedObserver",
    "ProxyApp",
    "ProxyServer",
    "RareLog",
    "UpstreamCut",
    "make_upstream_client",
    "upstream_origin",
]
