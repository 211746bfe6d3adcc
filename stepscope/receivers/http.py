"""The sidecar's HTTP surface (ASGI, served by `HttpServer`, stepscope's own server, on the event loop).

- `GET /metrics`: Prometheus text, or OpenMetrics with exemplars when the scraper asks for it.
- `GET /healthz`: 200 while the event loop and the poller are alive (liveness).
- `GET /readyz`: 200 once started, the store is open and writable, and the server is up; 503 while a write fails.
  Never depends on reaching the Assistants API: a sidecar's readiness gates its whole pod.
- `POST /v1/watch`, `DELETE /v1/watch`: register or drop what the protocol's `Registrations` take (for
  Assistants a thread and optionally a run: `{"thread_id": "thread_...", "run_id": "run_..."}`); 404 for a
  protocol that takes none. Bearer-token protected when a token is configured; without
  a token only a loopback-only listener accepts registrations (anything else answers 403), since anyone who can
  reach the port could otherwise make stepscope spend API requests. Rate-limited (429 with `Retry-After`); a body
  must be a small flat JSON object, and anything else is a 4xx, never a 500. Those rules (loopback, rate, body)
  are `stepscope.receivers.watch`; this module answers, counts and logs.
- `GET /v1/status`: JSON health for humans and scripts.
- `POST /v1/webhooks`: the platform's webhooks, verified with the endpoint's signing secret
  (`stepscope.receivers.webhooks`); a verified, first-seen delivery is handed to the protocol's handler as
  `(type, data.id)`.
  Without a secret it answers 404 saying how to enable it; a delivery that does not verify is a 400 or 401, is
  counted (`webhook_invalid`) and changes nothing; a repeated `webhook-id` is answered 200 and ignored.
"""

from __future__ import annotations

import hmac
import logging
import math
import time
from collections.abc import Callable
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, make_asgi_app

from stepscope.contract.vocabulary import DropReason
from stepscope.core.records import NO_DROPS, Drops
from stepscope.errors import StoreError
from stepscope.protocols.base import InvalidRegistration, RegistrationFull, Registrations, WebhookHandler
from stepscope.receivers.asgi import Receive, Scope, Send, lifespan, respond
from stepscope.receivers.server import AsgiServer, ServerLimits
from stepscope.receivers.watch import DEFAULT_WATCH_RATE, InvalidWatchBody, TokenBucket, is_loopback, parse_watch_body
from stepscope.receivers.webhooks import WebhookRefused, WebhookVerifier

log = logging.getLogger("stepscope.receivers.http")


class SidecarControl(Protocol):
    """What the HTTP surface asks of the running sidecar: liveness, readiness, status."""

    def alive(self) -> bool: ...

    def ready(self) -> bool: ...

    def status(self) -> dict[str, Any]: ...


class HttpError(Exception):
    def __init__(self, status: int, message: str, *, headers: list[tuple[bytes, bytes]] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers or []


class HttpApp:
    """The ASGI application.

    `/v1/watch` takes bodies up to `max_body` bytes and `watch_rate` requests per second (bursts of twice that);
    `token`, when non-empty, must come as a bearer token. Without a token, registration is open only when
    `listen_host` is loopback; `None` means not known yet (`HttpServer` fills it in) and counts as not loopback.
    `drops` counts refused requests (`watch_rate`, `watch_invalid`, `webhook_invalid`); `clock` drives
    the rate limit. `registrations` serve `/v1/watch` (None: it answers 404). With a `webhook_secret`,
    `/v1/webhooks` takes signed deliveries (bodies up to `max_body` bytes, timestamps checked against `wall`) and
    hands each first-seen one to `webhooks`.
    """

    def __init__(
        self,
        service: SidecarControl,
        registry: CollectorRegistry,
        *,
        token: str = "",
        max_body: int = 16_384,
        listen_host: str | None = None,
        watch_rate: float = DEFAULT_WATCH_RATE,
        drops: Drops = NO_DROPS,
        clock: Callable[[], float] = time.monotonic,
        registrations: Registrations | None = None,
        webhook_secret: str = "",
        webhooks: WebhookHandler | None = None,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._service = service
        self._registrations = registrations
        self._webhooks = WebhookVerifier(webhook_secret, wall=wall) if webhook_secret else None
        self._on_webhook = webhooks
        self._metrics = make_asgi_app(registry)
        self._token = token
        self._max_body = max_body
        self.listen_host = listen_host
        self._rate = watch_rate
        self._bucket = TokenBucket(watch_rate, 2 * watch_rate, clock)
        self._drops = drops
        self._limited = 0  # requests refused in the current rate-limit episode

    @property
    def registration_open(self) -> bool:
        """Whether `/v1/watch` accepts requests at all: with a token, or on a loopback-only listener."""
        return bool(self._token) or (self.listen_host is not None and is_loopback(self.listen_host))

    def _closed_reason(self) -> str:
        where = self.listen_host if self.listen_host is not None else "an unknown address"
        return (
            f"registration is disabled: stepscope listens on {where}, which is not loopback-only, and "
            "STEPSCOPE_WATCH_TOKEN is not set; set it and send 'Authorization: Bearer <token>'"
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        path, method = scope["path"], scope["method"]
        if path == "/metrics":
            await self._metrics(scope, receive, send)
            return
        try:
            if path == "/healthz":
                self._only(method, "GET", "HEAD")
                ok = self._service.alive()
                await respond(send, 200 if ok else 503, "ok\n" if ok else "poll loop stopped\n")
            elif path == "/readyz":
                self._only(method, "GET", "HEAD")
                ok = self._service.ready()
                await respond(send, 200 if ok else 503, "ready\n" if ok else "not ready\n")
            elif path == "/v1/status":
                self._only(method, "GET")
                await respond(send, 200, self._service.status())
            elif path == "/v1/watch":
                self._only(method, "POST", "DELETE")
                await respond(send, *(await self._watch(scope, receive, method)))
            elif path == "/v1/webhooks":
                self._only(method, "POST")
                await respond(send, *(await self._webhook(scope, receive)))
            else:
                raise HttpError(404, "not found")
        except HttpError as exc:
            await respond(send, exc.status, {"error": str(exc)}, exc.headers)
        except StoreError as exc:
            log.warning("checkpoint store error serving %s: %s", path, exc)
            await respond(send, 503, {"error": "checkpoint store unavailable"})
        except Exception:
            # A bug, not bad input (bad input is an HttpError): answer JSON rather than the server's own 500.
            log.exception("internal error serving %s", path)
            await respond(send, 500, {"error": "internal error"})

    @staticmethod
    def _only(method: str, *allowed: str) -> None:
        if method not in allowed:
            raise HttpError(405, f"method {method} not allowed")

    async def _watch(self, scope: Scope, receive: Receive, method: str) -> tuple[int, dict[str, Any]]:
        registrations = self._registrations
        if registrations is None:
            raise HttpError(404, "this protocol takes no registrations: it finds its work by listing, webhooks and "
                                 "the proxy")  # fmt: skip
        if not self.registration_open:
            raise HttpError(403, self._closed_reason())
        headers = dict(scope["headers"])
        if self._token:
            given = headers.get(b"authorization", b"")
            if not hmac.compare_digest(given, f"Bearer {self._token}".encode()):
                raise HttpError(401, "missing or wrong bearer token")
        self._admit()
        try:
            fields = parse_watch_body(await self._read_body(headers, receive))
            if method == "DELETE":
                await registrations.unwatch(fields)
                return 200, {**fields, "watching": False}
            accepted = await registrations.watch(fields)
        except RegistrationFull as exc:  # counted and logged (once per episode) by discovery
            raise HttpError(429, f"{exc}; drop registrations with DELETE /v1/watch or raise the limit") from None
        except (HttpError, InvalidWatchBody, InvalidRegistration) as exc:
            self._drops.dropped(DropReason.WATCH_INVALID)
            status = exc.status if isinstance(exc, HttpError) else 400
            # The messages are fixed texts, never the input; the log's duplicate filter bounds a flood.
            log.info("refused a /v1/watch request (%d): %s", status, exc)
            raise HttpError(status, str(exc)) from None
        if not accepted:
            raise HttpError(409, "another shard owns this registration")
        return 202, {**fields, "watching": True}

    async def _webhook(self, scope: Scope, receive: Receive) -> tuple[int, dict[str, Any]]:
        if self._webhooks is None:
            raise HttpError(404, "webhooks are disabled: set STEPSCOPE_WEBHOOK_SECRET to the endpoint's signing secret")
        pairs = [(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in scope["headers"]]
        names = [k for k, _ in pairs if k.startswith("webhook-")]
        try:
            if len(set(names)) != len(names):  # two values of one header: which one was signed is ambiguous
                raise WebhookRefused(400, "repeated webhook-* header")
            body = await self._read_body(dict(scope["headers"]), receive)
            event = self._webhooks.verify(body, dict(pairs))
        except (HttpError, WebhookRefused) as exc:
            self._drops.dropped(DropReason.WEBHOOK_INVALID)
            log.info("refused a webhook delivery (%d): %s", exc.status, exc)  # fixed texts; the duplicate filter
            raise HttpError(exc.status, str(exc)) from None
        if not event.duplicate and self._on_webhook is not None:
            self._on_webhook(event.type, event.object_id)
        return 200, {"received": True, "duplicate": event.duplicate}

    def _admit(self) -> None:
        """Take a token from the bucket or raise 429 with `Retry-After`; log once per episode of refusals."""
        wait = self._bucket.take()
        if wait <= 0:
            if self._limited:
                log.info("/v1/watch back under its rate limit; %d request(s) were refused", self._limited)
                self._limited = 0
            return
        if not self._limited:
            log.warning("/v1/watch over %g request(s)/s (STEPSCOPE_WATCH_RATE): refusing with 429", self._rate)
        self._limited += 1
        self._drops.dropped(DropReason.WATCH_RATE)
        retry = str(max(1, math.ceil(wait))).encode()
        raise HttpError(429, "too many /v1/watch requests; retry later", headers=[(b"retry-after", retry)])

    async def _read_body(self, headers: dict[bytes, bytes], receive: Receive) -> bytes:
        # Required, not merely checked when present: a browser page can post text/plain (or nothing) cross-site
        # without a preflight, but never application/json.
        ctype = headers.get(b"content-type", b"").split(b";", 1)[0].strip().lower()
        if ctype != b"application/json":
            raise HttpError(415, "content-type must be application/json")
        declared = headers.get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self._max_body:
            raise HttpError(413, f"body larger than {self._max_body} bytes")
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise HttpError(400, "client disconnected")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self._max_body:
                raise HttpError(413, f"body larger than {self._max_body} bytes")
            chunks.append(chunk)
            if not message.get("more_body"):
                return b"".join(chunks)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        await lifespan(receive, send, startup=self._started)

    def _started(self) -> None:
        if not self.registration_open:
            log.warning("POST /v1/watch answers 403: %s", self._closed_reason())
        if self._webhooks is not None:
            log.info("POST /v1/webhooks accepts signed webhook deliveries")


class HttpServer(AsgiServer):
    """The HTTP surface on stepscope's own server (`stepscope.receivers.server`) within `limits` (default: 64
    connections, a 5 s header timeout; see `ServerLimits`); a port in use names `server.listen`. Upgrade requests
    (WebSocket) get 501. Refused connections and timeouts are counted in `drops` (default: the app's)."""

    def __init__(
        self, app: Any, host: str, port: int, *, limits: ServerLimits | None = None, drops: Drops | None = None
    ) -> None:
        if isinstance(app, HttpApp) and app.listen_host is None:
            app.listen_host = host  # the address it serves on decides whether registration needs a token
        counted = drops if drops is not None else app._drops if isinstance(app, HttpApp) else NO_DROPS
        super().__init__(app, host, port, setting="server.listen", name="http",
                         fix="choose another address with --listen or STEPSCOPE_LISTEN",
                         limits=limits or ServerLimits(), drops=counted, backlog=128)  # fmt: skip
