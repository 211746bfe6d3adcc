"""Fault case 7: the registration endpoint under bad input, and secrets and content kept out of telemetry."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from stepscope.testing import OtlpReceiver
from tests.faults.harness import serve_env, step_spans
from tests.procs import Sim, serve, simulator

pytestmark = pytest.mark.slow
KEY = "sk-fault-SECRET-0123456789abcdef"
TOKEN = "watch-SECRET-token-42"
CONTENT_KEYS = ("gen_ai.tool.call.arguments", "gen_ai.tool.call.result")


def bad_requests(base: str) -> Iterator[tuple[str, httpx.Request]]:
    """Every malformed registration we try, each named."""
    url = f"{base}/v1/watch"
    auth = {"Authorization": f"Bearer {TOKEN}", "content-type": "application/json"}
    good = json.dumps({"thread_id": "thread_abc"}).encode()
    yield "no token", httpx.Request("POST", url, content=good)
    yield "wrong token", httpx.Request("POST", url, content=good, headers={"Authorization": "Bearer nope"})
    yield "basic auth", httpx.Request("POST", url, content=good, headers={"Authorization": f"Basic {TOKEN}"})
    for name, body in [
        ("malformed json", b'{"thread_id": '),
        ("not utf-8", b"\xff\xfe{}"),
        ("array", b'["thread_abc"]'),
        ("string", b'"thread_abc"'),
        ("empty", b""),
        ("no thread", b'{"run_id": "run_abc"}'),
        ("number id", b'{"thread_id": 42}'),
        ("path id", b'{"thread_id": "../../etc/passwd"}'),
        ("long id", json.dumps({"thread_id": "thread_" + "a" * 200}).encode()),
        ("space id", b'{"thread_id": "thread_a b"}'),
        ("unicode id", json.dumps({"thread_id": "thread_\u00e9t\u00e9"}).encode()),
        ("bad run", b'{"thread_id": "thread_abc", "run_id": "thread_abc"}'),
        ("nested", b'{"thread_id": {"$ne": null}}'),
        ("huge", b'{"thread_id": "' + b"a" * 2_000_000 + b'"}'),
    ]:
        yield name, httpx.Request("POST", url, content=body, headers=auth)
    chunks = (b"[" + b"1," * 50_000 + b"1]" for _ in range(1))
    yield "huge chunked", httpx.Request("POST", url, content=chunks, headers=auth)
    yield "bad delete", httpx.Request("DELETE", url, content=b"{nope", headers=auth)


def content_strings(sim: Sim, threads: list[str]) -> set[str]:
    """Tool-call arguments and outputs as the API returns them (the truth omits content)."""
    found: set[str] = set()
    headers = {"Authorization": f"Bearer {KEY}", "OpenAI-Beta": "assistants=v2"}
    for run in sim.truth()["runs"][:20]:
        steps = httpx.get(f"{sim.url}/threads/{run['thread_id']}/runs/{run['id']}/steps", headers=headers).json()
        for step in steps["data"]:
            for call in step["step_details"].get("tool_calls", []):
                fn = call.get("function") or {}
                found.update(v for v in (fn.get("arguments"), fn.get("output")) if isinstance(v, str) and len(v) > 8)
    return found


def test_registration_bad_input_and_secrecy(tmp_path: Path, receiver: OtlpReceiver) -> None:
    """Each bad registration gets a 4xx and the process lives on; the API key, the watch token and tool content
    appear in no log, span or metric, until content capture is opted in."""
    args = ("--scenario", "steady", "--speed", "20", "--seed", "17", "--api-key", KEY)
    with simulator(tmp_path, *args) as sim:
        threads = sim.truth()["threads"]
        assert isinstance(threads, list)
        env = serve_env(sim.url, receiver, threads, OPENAI_API_KEY=KEY, STEPSCOPE_WATCH_TOKEN=TOKEN)
        with serve(tmp_path, env) as (proc, base):
            answers = {}
            with httpx.Client(timeout=10) as client:
                for name, request in bad_requests(base):
                    answers[name] = client.send(request).status_code
                assert client.get(f"{base}/healthz").status_code == 200
                assert client.get(f"{base}/v1/status").json()["watched_threads"] == len(threads)
            assert receiver.wait_for(lambda spans: any(s.name.startswith("execute_tool") for s in spans), 30)
            metrics = httpx.get(f"{base}/metrics").text
            assert proc.stop() == 0, proc.output()
            output = proc.output()
        content = content_strings(sim, threads)
        captured = OtlpReceiver().start()
        opt_in = {**env, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": captured.url, "STEPSCOPE_CAPTURE_CONTENT": "true"}
        with serve(tmp_path, opt_in, name="capture") as (proc2, _):
            opted_in = captured.wait_for(lambda spans: any(CONTENT_KEYS[0] in s.attributes for s in spans), 30)
            proc2.stop()
        captured.shutdown()
    wrong = {name: code for name, code in answers.items() if not 400 <= code < 500}
    assert not wrong, f"not a 4xx: {wrong}"
    assert answers["huge"] == 413
    assert content, "the workload produced no tool content to look for"
    spans_text = json.dumps([[s.attributes, s.resource, s.name] for s in receiver.spans])
    for secret in (KEY, TOKEN, *sorted(content)[:50]):
        assert secret not in output, secret
        assert secret not in spans_text, secret
        assert secret not in metrics, secret
    assert not any(k in s.attributes for s in receiver.spans for k in CONTENT_KEYS)
    assert step_spans(receiver.spans)
    assert opted_in, "STEPSCOPE_CAPTURE_CONTENT=true did not put tool content on spans"
