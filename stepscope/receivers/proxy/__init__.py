"""Proxy mode: a reverse proxy in front of the Assistants API that sees runs the moment they are created.

`ProxyServer(ProxyApp(upstream, feed), host, port)` relays the application's requests to `upstream` and tells
`feed` (a `RunFeed`) about runs created or resumed through it and the events of streamed runs.
"""

from __future__ import annotations

from stepscope.receivers.proxy.feed import RecordingFeed, RunFeed, SafeFeed
from stepscope.receivers.proxy.routes import RunRoute, classify, valid_traceparent
from stepscope.receivers.proxy.server import ProxyApp, ProxyServer, UpstreamCut, make_upstream_client, upstream_origin

__all__ = [
    "ProxyApp",
    "ProxyServer",
    "RecordingFeed",
    "RunFeed",
    "RunRoute",
    "SafeFeed",
    "UpstreamCut",
    "classify",
    "make_upstream_client",
    "upstream_origin",
    "valid_traceparent",
]
