"""A hostile API: `stepscope serve` against one healthy thread and one thread per misbehaviour at once.

One module-scoped run (`hostile`) watches every thread of `HostileApi` for `WINDOW_S` seconds while the test samples
the process's memory, `/metrics` and `/healthz`; each test then checks one misbehaviour against what was
recorded. Settings are the defaults except a 2 s request deadline (so the trickling body hits it within the window)
and a 20-page listing cap (so a listing that never ends costs 20 requests a poll instead of 100, and the request
rate bound stays well clear of the healthy load). The last test runs the CLI against unusable state paths.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path

import httpx
import psutil  # type: ignore[import-untyped]  # no stubs installed; only Process.memory_info is used
import pytest

from stepscope.testing import OtlpReceiver, ReceivedSpan
from tests.faults.hostile_api import (
    ALTERNATE_STEPS,
    BY_ID,
    FLOOD_RUNS,
    FLOOD_STEPS,
    FOREVER,
    HEALTHY_RUNS,
    HEALTHY_STEPS,
    INVALID_STEPS,
    SIBLING_RUNS,
    SIBLING_STEPS,
    THREADS,
    HostileApi,
    Request,
    forever_step_created,
)
from tests.faults.neighbours import counted
from tests.procs import serve, stepscope_cmd

pytestmark = pytest.mark.slow

WINDOW_S = 22.0
"""How long serve runs against the hostile API: the live healthy run ends after 8 s, the forever run grows meanwhile."""
TAIL_S = 8.0
"""Request rates and listing sizes are measured over the last seconds of the window, once start-up bursts are over."""
SAMPLE_EVERY_S = 0.5
SLOW_S = 4.0  # the poll interval of a run that failed: 4 x STEPSCOPE_POLL_INTERVAL (1 s by default)
PASSWORD = "url-pass-S3CRET-9f8e"  # a test secret that must never be printed
KEY = "sk-hostile-0123456789abcdef"
FAMILIES = (
    "stepscope_run_steps_total",
    "stepscope_tokens_total",
    "stepscope_runs_total",
    "stepscope_run_step_duration_seconds",
    "stepscope_run_duration_seconds",
    "stepscope_run_queue_seconds",
    "stepscope_tool_calls_total",
)
MAX_SERIES = 2000  # STEPSCOPE_MAX_SERIES_PER_METRIC's default
OVERFLOW_LINES = 40  # a family's overflow label sets on top of its budget: a histogram's is 15 lines, tokens' 4
PEAK_RSS_MB = 200.0
"""About 60 MB at rest plus 16 requests in flight (STEPSCOPE_CONCURRENCY) with an 8 MiB body each; it was 899 MB."""
REQUESTS_PER_S = 60.0
"""About twice the steady load here (~30/s: 20 pages a second of the endless listing, polls, discovery); without
the bounds it was 180/s and more, forever."""
LISTING_ITEMS = 60
"""Steps per listing of the forever run: ~10 a poll; a listing that restarted at its open first step would return
100-step pages."""


@dataclass
class Observed:
    """What one hostile run left behind."""

    api: HostileApi
    spans: list[ReceivedSpan]
    output: str
    exit_code: int
    metrics: str  # the last scrape before SIGTERM
    peak_rss_mb: float  # the kernel's high-water mark (VmHWM) just before SIGTERM
    rss_mb: list[float] = field(default_factory=list)
    scrapes: list[tuple[int, int, int]] = field(default_factory=list)  # (status, series, bytes) per sample
    health: list[int] = field(default_factory=list)
    window: tuple[float, float] = (0.0, 0.0)  # monotonic start and end of sampling

    def step_copies(self) -> Counter[str]:
        return Counter(str(s.attributes["openai.run_step.id"]) for s in self.spans if s.name.startswith("run_step "))

    def run_copies(self) -> Counter[str]:
        return Counter(str(s.attributes["openai.run.id"]) for s in self.spans if s.name.startswith("invoke_agent"))

    def tail(self) -> list[Request]:
        """API requests of the last `TAIL_S` seconds of the window."""
        end = self.window[1]
        return [r for r in self.api.requests if end - TAIL_S <= r.at < end]


def series(text: str) -> list[str]:
    return [line for line in text.splitlines() if line and not line.startswith("#")]


def peak_rss_mb(pid: int) -> float:
    """The process's peak resident set so far (Linux `VmHWM`), in MiB: no sampling can miss a short spike."""
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"^VmHWM:\s+(\d+) kB$", status, re.M)
    assert match, status
    return int(match.group(1)) / 1024


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Observed]:
    tmp = tmp_path_factory.mktemp("hostile")
    with HostileApi() as api, OtlpReceiver() as receiver:
        env = {
            "OPENAI_BASE_URL": api.url,
            "OPENAI_API_KEY": KEY,
            "STEPSCOPE_THREADS": ",".join(THREADS),
            "STEPSCOPE_DISCOVERY_INTERVAL": "1",
            "STEPSCOPE_API_TIMEOUT": "2s",
            "STEPSCOPE_MAX_PAGES": "20",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": receiver.url,
            "OTEL_BSP_SCHEDULE_DELAY": "100",
        }
        with serve(tmp, env) as (proc, base):
            for thread_id, run_id in BY_ID:
                httpx.post(f"{base}/v1/watch", json={"thread_id": thread_id, "run_id": run_id}).raise_for_status()
            process = psutil.Process(proc.popen.pid)
            rss: list[float] = []
            scrapes: list[tuple[int, int, int]] = []
            health: list[int] = []
            text = ""
            start = time.monotonic()
            with httpx.Client(timeout=10) as client:
                while time.monotonic() - start < WINDOW_S:
                    rss.append(process.memory_info().rss / 2**20)
                    response = client.get(f"{base}/metrics")
                    text = response.text
                    scrapes.append((response.status_code, len(series(text)), len(response.content)))
                    health.append(client.get(f"{base}/healthz").status_code)
                    time.sleep(SAMPLE_EVERY_S)
            end = time.monotonic()
            peak = peak_rss_mb(proc.popen.pid)
            exit_code = proc.stop()
            output = proc.output()
        # Beside serve.log, for a post-mortem of a failure: the last scrape and every request the API received.
        (tmp / "metrics.txt").write_text(text)
        (tmp / "summary.json").write_text(json.dumps({"peak_rss_mb": peak, "samples": scrapes}))
        (tmp / "requests.json").write_text(json.dumps([[r.at - start, r.endpoint, r.run_id, r.items, r.after]
                                                       for r in api.requests]))  # fmt: skip
        yield Observed(api, list(receiver.spans), output, exit_code, text, peak, rss, scrapes, health, (start, end))


def test_healthy_thread_exported_exactly_once(hostile: Observed) -> None:
    """Beside every misbehaviour at once, each step, tool call and run of the healthy thread arrives exactly once,
    with the server's timestamps, types and token counts."""
    steps, runs = hostile.step_copies(), hostile.run_copies()
    assert {s: steps[s] for s in HEALTHY_STEPS} == dict.fromkeys(HEALTHY_STEPS, 1)
    assert {r: runs[r] for r in HEALTHY_RUNS} == dict.fromkeys(HEALTHY_RUNS, 1)
    api = hostile.api
    for run_id in HEALTHY_RUNS:
        for step in api.steps_of(run_id):
            span = next(s for s in hostile.spans if s.attributes.get("openai.run_step.id") == step.id)
            assert step.end is not None
            assert span.name == f"run_step {step.type}"
            assert (span.start_ns, span.end_ns) == (api.wall(step.created) * 10**9, api.wall(step.end) * 10**9)
            assert span.attributes["gen_ai.usage.input_tokens"] == step.usage[0]
    tools = Counter(s.attributes["gen_ai.tool.call.id"] for s in hostile.spans if s.name.startswith("execute_tool"))
    healthy_calls = {f"call_healthy_{r}_{i}_{k}" for r in ("0", "1", "2", "live") for i in (1, 2) for k in "fc"}
    assert {c: tools[c] for c in healthy_calls} == dict.fromkeys(healthy_calls, 1)


def test_metrics_served_throughout(hostile: Observed) -> None:
    """/metrics and /healthz answer 200 on every sample of the window, and the process exits 0 without a traceback
    once every span was delivered."""
    assert len(hostile.scrapes) >= WINDOW_S / (SAMPLE_EVERY_S + 1.5)
    assert [s for s, _, _ in hostile.scrapes if s != 200] == []
    assert set(hostile.health) == {200}
    assert hostile.exit_code == 0, hostile.output[-3000:]
    assert "Traceback" not in hostile.output
    assert "all spans delivered" in hostile.output


def test_huge_and_endless_bodies_keep_memory_bounded(hostile: Observed) -> None:
    """A 100 MB body (declared or chunked), an endless chunked body and a body trickling forever keep the peak RSS
    under 200 MB; they are counted as too_large and deadline, and their runs are retried only at the slow pace."""
    # Both: the kernel updates VmHWM lazily (at unmaps), so a sample can exceed the mark read after it.
    assert hostile.peak_rss_mb < PEAK_RSS_MB, f"peak RSS {hostile.peak_rss_mb:.0f} MB"
    assert max(hostile.rss_mb) < PEAK_RSS_MB, f"sampled RSS {max(hostile.rss_mb):.0f} MB"
    m = hostile.metrics
    assert counted(m, "stepscope_api_requests_total", endpoint="list_steps", code="too_large") >= 4
    assert counted(m, "stepscope_api_requests_total", endpoint="get_run", code="too_large") >= 2
    assert counted(m, "stepscope_api_requests_total", endpoint="list_steps", code="deadline") >= 2
    served, per_run = Counter(r.run_id for r in hostile.api.requests), Counter(r.run_id for r in hostile.tail())
    for run_id in ("run_big_steps", "run_big_run", "run_endless", "run_drip"):
        assert served[run_id] >= 3, (run_id, served[run_id])  # still polled: the run was not given up
        assert per_run[run_id] <= TAIL_S, (run_id, per_run[run_id])


def test_runaway_listings_end(hostile: Observed) -> None:
    """Listings with alternating or endlessly fresh cursors end (at a repeated cursor, at the page cap) and are
    counted as invalid lists; each run whose listing broke a bound backs off further after every such poll."""
    assert counted(hostile.metrics, "stepscope_invalid_objects_total", kind="list") >= 6
    served, per_run = Counter(r.run_id for r in hostile.api.requests), Counter(r.run_id for r in hostile.tail())
    assert served["run_alternate"] >= 4
    assert per_run["run_alternate"] <= 2 * TAIL_S, per_run["run_alternate"]
    restarts = [r.at for r in hostile.api.requests if r.run_id == "run_fresh" and r.endpoint == "list_steps"
                and r.after is None]  # fmt: skip
    gaps = [b - a for a, b in pairwise(restarts)]
    assert len(gaps) >= 2 and all(later >= 1.5 * earlier for earlier, later in pairwise(gaps)), gaps
    # A listing of the fresh-cursor run never passes 20 pages: every one starts again at the run's cursor.
    listings = [r for r in hostile.api.requests if r.run_id == "run_fresh" and r.endpoint == "list_steps"]
    starts = [i for i, r in enumerate(listings) if r.after is None]
    assert len(starts) >= 3
    pages = [b - a for a, b in pairwise(starts)]
    assert max(pages) <= 20, pages


def test_runaway_listing_backs_off(hostile: Observed) -> None:
    """A run whose listing hit the page cap without committing anything waits at least the slow interval before
    its next listing, as a run with any other listing failure does."""
    fresh = [r for r in hostile.api.requests if r.run_id == "run_fresh" and r.endpoint == "list_steps"]
    gaps = [b.at - a.at for a, b in pairwise(fresh) if b.after is None]
    assert len(gaps) >= 2
    assert min(gaps) >= 0.9 * SLOW_S, [round(g, 2) for g in gaps]


def test_request_rate_bounded(hostile: Observed) -> None:
    """The whole hostile API receives fewer than 60 requests per second once start-up is over, whatever its
    listings and bodies do."""
    tail = hostile.tail()
    rate = len(tail) / TAIL_S
    busiest = Counter(r.run_id or r.endpoint for r in tail).most_common(5)
    assert rate < REQUESTS_PER_S, f"{rate:.0f} requests/s; busiest: {busiest}"


def test_alternating_listing_counts_each_step_once(hostile: Observed) -> None:
    """The two real steps of the alternating listing are exported, and counted, once each however often the server
    repeats them after the cursor."""
    steps = hostile.step_copies()
    assert {s: steps[s] for s in ALTERNATE_STEPS} == dict.fromkeys(ALTERNATE_STEPS, 1)


def test_absurd_numbers_invalid_and_siblings_exported(hostile: Observed) -> None:
    """Steps with a timestamp of 10^12, a negative created_at or 10^30 tokens are counted invalid and not exported;
    their sane siblings and their runs are exported once each, no span fails to export, and token counters stay
    sane."""
    steps, runs = hostile.step_copies(), hostile.run_copies()
    assert {s: steps[s] for s in SIBLING_STEPS} == dict.fromkeys(SIBLING_STEPS, 1)
    assert {r: runs[r] for r in SIBLING_RUNS} == dict.fromkeys(SIBLING_RUNS, 1)
    assert not INVALID_STEPS & steps.keys()
    m = hostile.metrics
    assert counted(m, "stepscope_invalid_objects_total", kind="run_step") >= len(INVALID_STEPS)
    assert counted(m, "stepscope_span_export_failures_total") == 0
    assert counted(m, "stepscope_dropped_total", reason="span_unencodable") == 0
    assert 0 < counted(m, "stepscope_tokens_total") < 10**7


def test_label_flood_bounded(hostile: Observed) -> None:
    """Thousands of unknown step types, statuses, tool types, models and assistants hold each domain family to its
    series budget and every scrape under 1 MiB, counted as label_cap, while the sums stay exact."""
    m = hostile.metrics
    lines = series(m)
    for family in FAMILIES:
        sample = re.compile(rf"{family.removesuffix('_total')}(_total|_created|_bucket|_sum|_count)?[{{ ]")
        n = sum(1 for line in lines if sample.match(line))
        assert n <= MAX_SERIES + OVERFLOW_LINES, (family, n)
    biggest = max(hostile.scrapes, key=lambda s: s[1])
    assert biggest[1] < len(FAMILIES) * (MAX_SERIES + OVERFLOW_LINES) + 500, f"{biggest[1]} series"
    assert biggest[2] < 2**20, f"{biggest[2]} bytes"
    assert counted(m, "stepscope_dropped_total", reason="label_cap") > 0
    flood = FLOOD_RUNS * FLOOD_STEPS
    assert counted(m, "stepscope_run_steps_total") >= flood + len(HEALTHY_STEPS) + len(SIBLING_STEPS)
    assert counted(m, "stepscope_run_steps_total", step_type="_other", status="_other") > 0
    assert counted(m, "stepscope_tool_calls_total") >= flood
    assert counted(m, "stepscope_runs_total") >= FLOOD_RUNS + len(HEALTHY_RUNS) + len(SIBLING_RUNS)


def test_run_that_never_ends_costs_a_bounded_listing(hostile: Observed) -> None:
    """A run whose first step never ends while finished steps keep coming is read in short listings (plus a re-read
    of the open step), not an ever longer tail, and each of its finished steps is exported once."""
    assert len(hostile.api.steps_of("run_forever")) > 150
    tail = [r for r in hostile.tail() if r.thread_id == FOREVER]
    listings = [r.items for r in tail if r.endpoint == "list_steps"]
    assert listings, "the forever run was not polled at the end"
    assert max(listings) <= LISTING_ITEMS, listings
    assert any(r.endpoint == "get_step" for r in tail)
    forever = {s: n for s, n in hostile.step_copies().items() if s.startswith("step_forever_")}
    assert "step_forever_00000" not in forever
    assert max(forever.values()) == 1
    settled = hostile.api.now() - (time.monotonic() - hostile.window[1]) - 8.0  # created 8 s before the end
    expected = {s.id for s in hostile.api.steps_of("run_forever")[1:] if forever_step_created(s.id) < settled}
    assert len(expected) > 100
    assert expected <= forever.keys(), sorted(expected - forever.keys())[:5]


def test_unreadable_runs(hostile: Observed) -> None:
    """A run whose JSON is cut off is counted as invalid_body and retried at the slow pace; a run without a status is
    dropped after three unreadable polls and never read again."""
    m = hostile.metrics
    assert counted(m, "stepscope_api_requests_total", endpoint="get_run", code="invalid_body") >= 3
    assert counted(m, "stepscope_dropped_total", reason="run_invalid") == 1
    served, per_run = Counter(r.run_id for r in hostile.api.requests), Counter(r.run_id for r in hostile.tail())
    assert served["run_badjson"] >= 6
    assert per_run["run_badjson"] <= TAIL_S
    assert sum(1 for r in hostile.api.requests if r.run_id == "run_nostatus") == 3


def test_no_key_in_output(hostile: Observed) -> None:
    """The API key appears in no log line, metric or span, not even in the errors that name the URL."""
    spans_text = json.dumps([[s.attributes, s.resource, s.name] for s in hostile.spans])
    assert KEY not in hostile.output
    assert KEY not in hostile.metrics
    assert KEY not in spans_text


def test_credentials_in_the_base_url_are_refused_at_start(tmp_path: Path) -> None:
    """serve with a user:password in OPENAI_BASE_URL exits 2 with one line naming the setting, before any request
    (httpx would send them as Basic auth instead of the key), and never prints the password."""
    env = {
        "PATH": "/usr/bin:/bin",
        "OPENAI_BASE_URL": f"http://proxy-user:{PASSWORD}@127.0.0.1:9/v1",
        "OPENAI_API_KEY": KEY,
        "STEPSCOPE_STATE": str(tmp_path / "state.db"),
        "STEPSCOPE_LISTEN": "127.0.0.1:0",
    }
    result = subprocess.run(stepscope_cmd("serve"), env=env, capture_output=True, text=True, timeout=30, check=False)
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert result.stderr.splitlines() == [
        "stepscope: OPENAI_BASE_URL (api.base_url): must not carry credentials (user:password@); they would be sent "
        "instead of the key: give the key with OPENAI_API_KEY"
    ]
    assert PASSWORD not in output and not (tmp_path / "state.db").exists()


@pytest.mark.parametrize("case", ["under a file", "zero bytes"])
def test_unusable_state_path_is_one_line(tmp_path: Path, case: str) -> None:
    """serve with STEPSCOPE_STATE under a regular file or at a zero-byte file exits 2 with one line naming the path
    and no traceback, and leaves the file alone."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    state = blocker / "sub" / "state.db" if case == "under a file" else tmp_path / "empty.db"
    if case == "zero bytes":
        state.touch()
    env = {
        "PATH": "/usr/bin:/bin",
        "OPENAI_BASE_URL": "http://127.0.0.1:9/v1",
        "OPENAI_API_KEY": KEY,
        "STEPSCOPE_STATE": str(state),
        "STEPSCOPE_LISTEN": "127.0.0.1:0",
        "OTEL_TRACES_EXPORTER": "none",
    }
    result = subprocess.run(stepscope_cmd("serve"), env=env, capture_output=True, text=True, timeout=30, check=False)
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert "Traceback" not in output
    errors = [line for line in result.stderr.splitlines() if line.startswith("stepscope:")]
    assert len(errors) == 1, output
    assert str(state) in errors[0]
    assert errors[0] == result.stderr.splitlines()[-1]
    assert KEY not in output
    if case == "zero bytes":
        assert state.stat().st_size == 0, "the refused file was changed"
    else:
        assert blocker.read_text() == "not a directory"


def test_metric_helpers_can_fail() -> None:
    """`series` counts sample lines only and `counted` matches labels in any order, so neither passes vacuously."""
    text = '# HELP x y\n# TYPE x counter\nx_total{b="2",a="1"} 3\n\nx_total{a="1",b="9"} 4\nx_created 2\n'
    assert series(text) == ['x_total{b="2",a="1"} 3', 'x_total{a="1",b="9"} 4', "x_created 2"]
    assert counted(text, "x_total", a="1", b="2") == 3
    assert counted(text, "x_total", a="1") == 7
    assert counted(text, "x_total", c="1") == 0
