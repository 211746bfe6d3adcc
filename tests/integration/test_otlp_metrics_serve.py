"""`stepscope serve` with `OTEL_METRICS_EXPORTER=otlp` against the simulator and a real OTLP metrics receiver.

Each case runs `serve` as a subprocess on a finite workload and decodes the `ExportMetricsServiceRequest`s it
sends: every instrument has the conventions' name, unit, kind, bucket boundaries, attributes and temporality, and
the sums equal the simulator's truth and `/metrics`. The receiver is down while the workload is counted and comes
back later (cumulative), or goes down and comes back once everything was sent (delta, with the newest GenAI token
counters): polling never stalls, and nothing is counted twice.
"""

from __future__ import annotations

import socket
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from stepscope.export.genai_metrics import AGENT_DURATION_BUCKETS, TOKEN_BUCKETS
from stepscope.export.prometheus import RUN_DURATION_BUCKETS
from stepscope.export.selfmetrics import API_BUCKETS
from stepscope.mapping.ids import trace_id_for_run
from stepscope.simulator import SimulatorServer
from stepscope.testing import OtlpReceiver, ReceivedPoint
from tests.integration._collectors import expected_from, finished, mismatches, scrape, total, truth, wait_for, workload
from tests.procs import serve

pytestmark = pytest.mark.slow

RUNS = 8
UNIT_KEYS = {"gen_ai.operation.name", "gen_ai.provider.name", "gen_ai.agent.id", "gen_ai.request.model"}


def serve_env(server: SimulatorServer, port: int, **extra: str) -> dict[str, str]:
    return {
        "OPENAI_BASE_URL": server.url,
        "OPENAI_API_KEY": "sk-sim",
        "STEPSCOPE_THREADS": ",".join(truth(server)["threads"]),
        "STEPSCOPE_POLL_INTERVAL": "0.2",
        "STEPSCOPE_DISCOVERY_INTERVAL": "0.5",
        "OTEL_TRACES_EXPORTER": "none",
        "OTEL_METRICS_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": f"http://127.0.0.1:{port}/v1/metrics",
        "OTEL_METRIC_EXPORT_INTERVAL": "300",
        "OTEL_METRIC_EXPORT_TIMEOUT": "1000",
        **extra,
    }


@contextmanager
def reserved_port() -> Iterator[socket.socket]:
    """A port bound but not listening: connections to it are refused until a receiver takes it over."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    try:
        yield sock
    finally:
        sock.close()


def latest(points: list[ReceivedPoint]) -> dict[str, list[ReceivedPoint]]:
    """The points of the newest export request by metric: with cumulative temporality, the totals so far."""
    last = max((p.request for p in points), default=0)
    out: dict[str, list[ReceivedPoint]] = defaultdict(list)
    for point in points:
        if point.request == last:
            out[point.metric].append(point)
    return out


def summed(points: list[ReceivedPoint], metric: str, **attrs: str) -> float:
    """Sum of the values (a histogram's sum) of `metric`'s points whose attributes include `attrs`."""
    return sum(
        p.value for p in points if p.metric == metric and all(p.attributes.get(k) == v for k, v in attrs.items())
    )


def counted(points: list[ReceivedPoint], metric: str) -> int:
    return sum(p.count for p in points if p.metric == metric)


def test_conventions_sums_and_an_outage_cumulative(tmp_path: Path) -> None:
    """With the receiver down, the workload is counted on /metrics and failures are counted; once it is back, one
    export holds every instrument as the conventions define it, with sums equal to the truth and /metrics, and later
    exports repeat the same totals (nothing counted twice)."""
    receiver = OtlpReceiver()
    with reserved_port() as sock, workload(seed=21, total_runs=RUNS) as server:
        port = sock.getsockname()[1]
        try:
            with serve(tmp_path, serve_env(server, port)) as (proc, base):
                assert wait_for(lambda: finished(server, RUNS), 30), "the simulator workload did not finish"
                world = truth(server)
                want = expected_from(world)
                assert wait_for(lambda: not mismatches(scrape(base), want), 15), proc.output()
                assert wait_for(lambda: total(scrape(base), "stepscope_metric_export_failures_total") >= 2, 10)
                sock.close()  # the receiver comes back on the very port serve was refused on
                receiver = OtlpReceiver(port=port).start()
                assert receiver.wait_for_points(lambda ps: summed(ps, "stepscope.runs") >= RUNS, 15), proc.output()
                first = receiver.metric_requests
                assert receiver.wait_for_points(lambda ps: max(p.request for p in ps) >= first + 2, 10)
                scraped = scrape(base)
                now = latest(receiver.points)
                requests = receiver.metric_requests
            assert proc.popen.returncode == 0, proc.output()
            assert receiver.metric_requests > requests, "the stop sends one last export"
        finally:
            receiver.shutdown()
    assert "OTLP metric export to" in proc.output() and "recovered" in proc.output()
    assert proc.output().count("OTLP metric export to http") == 2  # failing, then recovered: once per episode

    # The domain counters equal the truth and /metrics, so dashboards over OTLP read what /metrics says.
    points = [p for ps in now.values() for p in ps]
    assert summed(points, "stepscope.runs") == RUNS == sum(want.runs.values())
    for status, n in want.runs.items():
        assert summed(points, "stepscope.runs", status=status) == n
    for token_type, n in want.tokens.items():
        assert summed(points, "stepscope.tokens", token_type=token_type) == n
        assert summed(points, "gen_ai.client.token.usage", **{"gen_ai.token.type": token_type}) == n
    assert summed(points, "stepscope.run_steps") == want.steps == total(scraped, "stepscope_run_steps_total")
    assert summed(points, "stepscope.tool_calls") == want.tool_calls == total(scraped, "stepscope_tool_calls_total")
    assert counted(points, "gen_ai.invoke_agent.duration") == total(scraped, "stepscope_run_duration_seconds_count")
    assert counted(points, "gen_ai.execute_tool.duration") == want.tool_calls
    assert summed(points, "stepscope.dropped") == total(scraped, "stepscope_dropped_total")
    assert summed(points, "stepscope.metric_export.failures") >= 2

    # Each instrument as the conventions define it: name, unit, kind, buckets, attributes, temporality.
    agent = now["gen_ai.invoke_agent.duration"]
    assert {(p.unit, p.kind, p.temporality, p.bounds) for p in agent} == {
        ("s", "histogram", "cumulative", AGENT_DURATION_BUCKETS)
    }
    assert all(set(p.attributes) >= UNIT_KEYS for p in agent)
    assert {p.attributes["gen_ai.operation.name"] for p in agent} == {"invoke_agent"}
    assert {p.attributes["gen_ai.provider.name"] for p in agent} == {"openai"}
    failed = {p.attributes.get("error.type") for p in agent if p.attributes.get("error.type")}
    assert failed, "the workload's failed runs carry error.type"
    usage = now["gen_ai.client.token.usage"]
    assert {(p.unit, p.kind, p.temporality, p.bounds) for p in usage} == {
        ("{token}", "histogram", "cumulative", TOKEN_BUCKETS)
    }
    assert {p.attributes["gen_ai.token.type"] for p in usage} == {"input", "output"}
    assert all(set(p.attributes) <= UNIT_KEYS | {"gen_ai.token.type"} for p in usage)
    tools = now["gen_ai.execute_tool.duration"]
    assert all({"gen_ai.tool.name", "gen_ai.tool.type"} <= set(p.attributes) for p in tools)
    assert {(p.unit, p.bounds) for p in tools} == {("s", AGENT_DURATION_BUCKETS)}
    runs = now["stepscope.runs"]
    assert {(p.unit, p.kind, p.temporality, p.monotonic) for p in runs} == {("{run}", "sum", "cumulative", True)}
    assert {tuple(sorted(p.attributes)) for p in runs} == {("assistant_id", "model", "protocol", "status")}
    assert {p.bounds for p in now["stepscope.run.duration"]} == {RUN_DURATION_BUCKETS}
    api = now["stepscope.api.request.duration"]
    assert {(p.unit, p.kind, p.temporality, p.bounds) for p in api} == {("s", "histogram", "cumulative", API_BUCKETS)}
    assert {"list_runs", "list_steps"} <= {p.attributes["endpoint"] for p in api}
    # Counted since the component started, so at most what /metrics counted since the process did.
    assert (
        0
        < counted(points, "stepscope.api.request.duration")
        <= total(scraped, "stepscope_api_request_duration_seconds_count")
    )
    assert "gen_ai.client.inference.usage.input_tokens" not in now
    assert {p.resource["service.name"] for p in points} == {"stepscope"}
    ids = {r["id"] for r in world["runs"]} | {r["thread_id"] for r in world["runs"]}
    ids |= {s["id"] for r in world["runs"] for s in r["steps"]}
    assert not ids & {str(v) for p in points for v in p.attributes.values()}, "ids never become attributes"


def test_latest_experimental_token_counters_delta(tmp_path: Path) -> None:
    """With gen_ai_latest_experimental and delta temporality, the newest token counters replace the token histogram
    and their deltas add up to the truth; a receiver down and back later gets no increment twice."""
    with OtlpReceiver() as receiver, workload(seed=22, total_runs=RUNS) as server:
        port = int(receiver.metrics_url.split(":")[2].split("/")[0])
        env = serve_env(server, port, OTEL_SEMCONV_STABILITY_OPT_IN="gen_ai_latest_experimental",
                        OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE="delta")  # fmt: skip
        with serve(tmp_path, env) as (proc, base):
            assert wait_for(lambda: finished(server, RUNS), 30), "the simulator workload did not finish"
            world = truth(server)
            want = expected_from(world)
            assert wait_for(lambda: not mismatches(scrape(base), want), 15), proc.output()
            name = "gen_ai.client.inference.usage.input_tokens"

            def all_sent(ps: list[ReceivedPoint]) -> bool:
                return summed(ps, name) == want.tokens["input"] and summed(ps, "stepscope.runs") == RUNS

            assert receiver.wait_for_points(all_sent, 10), proc.output()
            receiver.shutdown()
            before = list(receiver.points)
            assert wait_for(lambda: total(scrape(base), "stepscope_metric_export_failures_total") >= 2, 10)
            polls = total(scrape(base), "stepscope_api_requests_total")
            assert wait_for(lambda: total(scrape(base), "stepscope_api_requests_total") > polls, 5), "polling stalled"
            with OtlpReceiver(port=port) as back:
                assert back.wait_for_points(lambda ps: len({p.request for p in ps}) >= 2, 10)
                after = list(back.points)
    every = before + after
    for token_type, n in want.tokens.items():
        counter = f"gen_ai.client.inference.usage.{token_type}_tokens"
        assert summed(every, counter) == n
        assert summed(every, "stepscope.tokens", token_type=token_type) == n
    assert summed(every, "stepscope.runs") == RUNS
    assert not [p for p in every if p.metric == "gen_ai.client.token.usage"]
    inference = [p for p in every if p.metric.startswith("gen_ai.client.inference.usage.")]
    assert {(p.unit, p.kind, p.temporality, p.monotonic) for p in inference} == {("{token}", "sum", "delta", True)}
    assert {p.attributes["gen_ai.token.modality"] for p in inference} == {"unknown"}
    agent = [p for p in every if p.metric == "gen_ai.invoke_agent.duration"]
    assert {p.temporality for p in agent} == {"delta"}
    # Exemplars are sampled per collection: the receiver was up when these runs were recorded, so they carry them.
    traces = {f"{trace_id_for_run(r['id']):032x}" for r in world["runs"]}
    exemplars = {trace for p in agent for trace, _ in p.exemplars}
    assert exemplars and exemplars <= traces
    gauges = {p.temporality for p in every if p.metric == "stepscope.tracked_runs"}
    assert gauges == {""}
