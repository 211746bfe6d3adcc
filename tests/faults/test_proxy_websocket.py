"""A WebSocket through the proxy to the simulator: the official openai SDK's `client.responses.connect()` works
unchanged with stepscope in its path, byte for byte, and the protocol's sink sees its events."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import socket
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import openai
import pytest

from stepscope.protocols.base import AnswerSink, Route
from stepscope.simulator import SimClock, Simulator, SimulatorServer, scenario_named
from tests.kit.proxy import ProxyThread

KEY = "sk-sim-w3bs0cket"
TERMINAL = ("response.completed", "response.failed", "response.incomplete")
CALM: dict[str, Any] = {"failure_rate": 0.0, "incomplete_rate": 0.0, "cancel_rate": 0.0}


@dataclass
class Recording:
    """A `ProxyObserver` routing `GET .../responses` (the WebSocket) to a sink that keeps every call."""

    routes: list[tuple[str, str]] = field(default_factory=list)
    calls: list[tuple[str, Any]] = field(default_factory=list)

    def route(self, method: str, path: str) -> Route | None:
        self.routes.append((method, path))
        return Route("responses_socket") if method == "GET" and path.endswith("/responses") else None

    def answer(self, route: Route, traceparent: str | None) -> AnswerSink | None:
        return self

    def wants(self, event: str) -> bool:
        return True

    def event(self, event: str, data: Mapping[str, Any] | None) -> None:
        self.calls.append(("event", (event, dict(data) if data is not None else None)))

    def body(self, data: object) -> None:
        self.calls.append(("body", data))

    def ended(self, complete: bool, stream: bool) -> None:
        self.calls.append(("ended", (complete, stream)))


@pytest.fixture
def sim() -> Iterator[SimulatorServer]:
    simulator = Simulator(scenario_named("quiet", **CALM), api_key=KEY, clock=SimClock(speed=200), seed=5,
                          protocol="responses")  # fmt: skip
    with SimulatorServer(simulator) as server:
        yield server


def _until(predicate: Any, what: str, limit_s: float = 5.0) -> None:
    deadline = time.monotonic() + limit_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def test_the_sdks_websocket_mode_works_through_the_proxy_and_is_observed(sim: SimulatorServer) -> None:
    """`client.responses.connect()` through the proxy sends `response.create` twice and reads every event to the
    terminal one; the sink got the very same events in order (the protocol's route for `GET /v1/responses`) and
    a complete end once the SDK closed the socket."""
    recording = Recording()
    with ProxyThread(sim.url, observer=recording) as proxy:
        client = openai.OpenAI(base_url=proxy.root + "/v1", api_key=KEY, max_retries=0, timeout=10)
        got: list[dict[str, Any]] = []
        with client.responses.connect() as connection:
            for model in ("gpt-5", "gpt-4.1"):
                connection.response.create(model=model, input="hi", tools=[{"type": "web_search"}])
                for event in connection:
                    got.append(event.model_dump(mode="json", exclude_unset=True))
                    if event.type in TERMINAL:
                        break
        _until(lambda: any(name == "ended" for name, _ in recording.calls), "the socket's end")
    assert [e["type"] for e in got].count("response.completed") == 2
    assert recording.routes == [("GET", "/v1/responses")]
    events = [data for name, (_, data) in recording.calls if name == "event"]
    assert events == got
    assert recording.calls[-1] == ("ended", (True, True))


class _Tap:
    """A TCP relay between the proxy and the simulator that keeps every byte the simulator sent."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.downstream = bytearray()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                near, _ = self._listener.accept()
            except OSError:
                return
            far = socket.create_connection(self.target)
            threading.Thread(target=self._pipe, args=(near, far, None), daemon=True).start()
            threading.Thread(target=self._pipe, args=(far, near, self.downstream), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket, keep: bytearray | None) -> None:
        try:
            while data := source.recv(65536):
                if keep is not None:
                    keep += data
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._listener.close()


def test_the_proxy_relays_a_websocket_byte_for_byte(sim: SimulatorServer) -> None:
    """Every byte the simulator sent on the WebSocket, after its handshake, reaches the client unchanged and in
    the same framing."""
    host, port = sim.url.split("//", 1)[1].split("/", 1)[0].split(":")
    tap = _Tap((host, int(port)))
    try:
        with ProxyThread(f"http://127.0.0.1:{tap.port}", observer=Recording()) as proxy:
            received = _raw_websocket(proxy.server.port)
    finally:
        tap.close()
    _until(lambda: len(tap.downstream) >= len(received), "the tap's copy")
    sent_after_head = bytes(tap.downstream).split(b"\r\n\r\n", 1)[1]
    assert received == sent_after_head[: len(received)] and len(received) > 500
    assert b"response.completed" in received


def _raw_websocket(port: int) -> bytes:
    """A WebSocket by hand to the proxy: handshake, one masked `response.create`, then every byte until the
    terminal event; returns the bytes after the 101's head."""
    key = base64.b64encode(os.urandom(16)).decode()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        head_lines = ["GET /v1/responses HTTP/1.1", "Host: x", f"Authorization: Bearer {KEY}", "Connection: Upgrade",
                      "Upgrade: websocket", f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13"]  # fmt: skip
        sock.sendall(("\r\n".join(head_lines) + "\r\n\r\n").encode())
        data = b""
        while b"\r\n\r\n" not in data:
            data += sock.recv(65536)
        head, rest = data.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 101 "), head
        payload = json.dumps({"type": "response.create", "model": "gpt-5", "input": "hi"}).encode()
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        assert len(payload) < 126
        sock.sendall(bytes([0x81, 0x80 | len(payload)]) + mask + masked)
        received = rest
        while b"response.completed" not in received:
            received += sock.recv(65536)
        return received
