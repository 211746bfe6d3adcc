"""Span delivery from the durable backlog, and the pipeline's metrics that never wait for it."""

from __future__ import annotations

import logging
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from prometheus_client import CollectorRegistry

from stepscope.client.retry import RetryPolicy
from stepscope.core import spancodec
from stepscope.core.asyncstore import AsyncStore
from stepscope.core.pipeline import Pipeline
from stepscope.core.records import Commit, SpanEvent, SpanSpec, UnitRef
from stepscope.core.store import SqliteStore
from stepscope.export.delivery import EXPORT_BACKOFF, BacklogLimits, SpanDelivery
from stepscope.export.selfmetrics import SelfMetrics
from stepscope.mapping.attributes import MappingOptions
from stepscope.protocols.assistants.mapper import AssistantsMapper
from stepscope.protocols.assistants.records import Run, RunStep, Usage
from stepscope.testing import FakeClock, OtlpReceiver, RecordingMetricSink, RecordingSpanExporter
from tests.kit.samples import make_run, make_step
from tests.kit.waits import holds_within

pytestmark = pytest.mark.anyio

REF = UnitRef("thread_1", "run_1")
RESOURCE = Resource.create({"service.name": "stepscope-test"})
NS = 1_000_000_000
WAIT_S = 10.0  # generous: the box is shared; the conditions normally hold within milliseconds
FAST_RETRY = RetryPolicy(initial_delay=0.01, max_delay=0.02, jitter=0.0)  # retries without the seconds of backoff


def spec(i: int, **kw: object) -> SpanSpec:
    """A valid step span `step:s<i>` with span id `i`."""
    fields: dict[str, object] = {
        "key": f"step:s{i}",
        "name": f"run_step {i}",
        "kind": "internal",
        "trace_id": 0xABC,
        "span_id": i,
        "parent_span_id": None,
        "start_ns": 100 * NS + i,
        "end_ns": 105 * NS + i,
        "attributes": {"openai.run_step.id": f"s{i}"},
        **kw,
    }
    return SpanSpec(**fields)  # type: ignore[arg-type]


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = WAIT_S) -> None:
    assert holds_within(predicate, timeout, every=0.005), f"timed out waiting for {what}"


class HangingExporter(SpanExporter):
    """Accepts a batch and never answers until the test releases it; its shutdown() does not help (a stuck socket)."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.entered.set()
        self.release.wait(60)
        return SpanExportResult.FAILURE

    def shutdown(self) -> None:
        return


class Rig:
    """A store, a delivery worker and the self-metrics it counts drops in."""

    def __init__(
        self,
        exporter: SpanExporter | None,
        *,
        store: SqliteStore | None = None,
        limits: BacklogLimits | None = None,
        wall: Callable[[], float] = time.time,
        delay_s: float = 0.0,
        monotonic: Callable[[], float] = time.monotonic,
        retry: RetryPolicy = EXPORT_BACKOFF,
    ) -> None:
        self.wall = wall
        self.store = store or SqliteStore(":memory:")
        self.store.open()
        self.registry = CollectorRegistry()
        self.health = SelfMetrics(self.registry, version="test")
        self.delivery = SpanDelivery(
            self.store,
            exporter,
            resource=RESOURCE,
            health=self.health,
            limits=limits or BacklogLimits(),
            delay_s=delay_s,
            wall=wall,
            retry=retry,
            monotonic=monotonic,
        )

    def commit(self, spans: Sequence[bytes], at: float | None = None, step: str = "s") -> None:
        """Commit `spans` with step `step` at `at` (default: now, by the rig's wall clock) and tell the worker."""
        self.store.commit_steps(REF, [step], step, self.wall() if at is None else at, spans=spans)
        self.delivery.notify(len(spans))

    def waiting(self) -> int:
        return self.store.backlog_stats()[0]

    def dropped(self, reason: str) -> float:
        return self.registry.get_sample_value("stepscope_dropped_total", {"reason": reason}) or 0.0

    def healthy(self) -> bool:
        return self.store.healthy

    def export_failures(self) -> float:
        return self.registry.get_sample_value("stepscope_span_export_failures_total") or 0.0


@pytest.fixture
def exporter() -> RecordingSpanExporter:
    return RecordingSpanExporter()


@pytest.fixture
def rigs() -> Iterator[list[Rig]]:
    made: list[Rig] = []
    yield made
    for rig in made:
        rig.delivery.shutdown(1.0)


def make_rig(
    rigs: list[Rig],
    exporter: SpanExporter | None,
    *,
    store: SqliteStore | None = None,
    limits: BacklogLimits | None = None,
    wall: Callable[[], float] = time.time,
    delay_s: float = 0.0,
    monotonic: Callable[[], float] = time.monotonic,
    retry: RetryPolicy = EXPORT_BACKOFF,
) -> Rig:
    """A `Rig` that the `rigs` fixture shuts down after the test."""
    rig = Rig(exporter, store=store, limits=limits, wall=wall, delay_s=delay_s, monotonic=monotonic, retry=retry)
    rigs.append(rig)
    return rig


def span_ids(exporter: RecordingSpanExporter) -> Counter[int]:
    return Counter(s.context.span_id for s in list(exporter.spans) if s.context is not None)


class TestDelivery:
    def test_committed_spans_are_delivered_and_leave_the_backlog(
        self, rigs: list[Rig], exporter: RecordingSpanExporter
    ) -> None:
        """Spans committed to the backlog reach the exporter with their ids and times, then are deleted."""
        rig = make_rig(rigs, exporter)
        rig.delivery.begin()
        rig.commit([spancodec.encode(spec(i)) for i in (1, 2, 3)])
        wait_until(lambda: len(exporter.spans) == 3 and rig.waiting() == 0, "delivery")
        assert span_ids(exporter) == Counter({1: 1, 2: 1, 3: 1})
        first = next(s for s in exporter.spans if s.context is not None and s.context.span_id == 1)
        assert (first.start_time, first.end_time) == (100 * NS + 1, 105 * NS + 1)
        assert first.resource.attributes["service.name"] == "stepscope-test"
        assert rig.delivery.pending == 0
        assert rig.delivery.state == "ok"
        assert rig.delivery.shutdown(2.0) == 0

    def test_failing_exporter_keeps_spans_then_delivers_each_once(
        self, rigs: list[Rig], exporter: RecordingSpanExporter
    ) -> None:
        """While the exporter refuses nothing leaves the backlog; once it accepts, every span goes out exactly once."""
        exporter.fail = True
        rig = make_rig(rigs, exporter)
        rig.delivery.begin()
        rig.commit([spancodec.encode(spec(i)) for i in range(1, 6)])
        wait_until(lambda: exporter.batches >= 1 and rig.delivery.state == "failing", "a refused batch")
        assert rig.waiting() == 5
        assert rig.delivery.pending == 5
        assert rig.export_failures() >= 5
        exporter.fail = False
        wait_until(lambda: rig.waiting() == 0, "the backlog to drain after recovery")
        assert rig.delivery.shutdown(2.0) == 0
        assert span_ids(exporter) == Counter(range(1, 6))
        assert rig.delivery.state == "ok"

    def test_an_outage_is_one_line_a_minute_with_the_attempts_then_one_when_it_ends(
        self, rigs: list[Rig], exporter: RecordingSpanExporter, caplog: pytest.LogCaptureFixture
    ) -> None:
        """Refused attempts one after another give one line at the first, none more within the minute, then one
        counting the attempts since the first line, and one line when exports recover."""
        clock = FakeClock()
        exporter.fail = True
        rig = make_rig(rigs, exporter, monotonic=clock.monotonic, retry=FAST_RETRY)
        with caplog.at_level(logging.INFO, logger="stepscope.delivery"):
            rig.delivery.begin()
            rig.commit([spancodec.encode(spec(i)) for i in range(1, 4)])
            wait_until(lambda: exporter.batches >= 10, "ten refused attempts")
            clock.advance(61)
            at_the_minute = exporter.batches
            wait_until(lambda: exporter.batches >= at_the_minute + 3, "attempts after the minute")
            exporter.fail = False
            wait_until(lambda: rig.waiting() == 0, "the backlog to drain after recovery")
            rig.delivery.shutdown(2.0)
        lines = [r.getMessage() for r in caplog.records if r.name == "stepscope.delivery"]
        assert lines[0] == "span export failing: 3 span(s) kept in the backlog, retried with backoff"
        counted = re.fullmatch(r"span export failing: (\d+) attempts in the last 1m01s, 3 span\(s\) kept in the "
                               r"backlog", lines[1])  # fmt: skip
        assert counted is not None, lines
        assert int(counted.group(1)) >= 10  # every attempt since the first line, counted
        recovered = re.fullmatch(r"span export recovered after 1m01s \((\d+) attempts failed\); delivering the "
                                 r"backlog \(\d+ span\(s\)\)", lines[2])  # fmt: skip
        assert recovered is not None, lines
        assert int(recovered.group(1)) >= int(counted.group(1)) + 1
        assert len(lines) == 3, lines

    def test_restart_delivers_what_an_earlier_process_kept(
        self, rigs: list[Rig], exporter: RecordingSpanExporter, tmp_path: Path
    ) -> None:
        """Spans kept in the file store by a process whose exporter failed are delivered by the next process."""
        path = str(tmp_path / "state.db")
        first_exporter = RecordingSpanExporter()
        first_exporter.fail = True
        first = make_rig(rigs, first_exporter, store=SqliteStore(path))
        first.delivery.begin()
        first.commit([spancodec.encode(spec(i)) for i in (1, 2)])
        wait_until(lambda: first_exporter.batches >= 1, "a refused batch")
        assert first.delivery.shutdown(0.5) == 2
        first.store.close()

        exporter.fail = True  # so the count taken at start can be read before delivery empties it
        second = make_rig(rigs, exporter, store=SqliteStore(path))
        second.delivery.begin()
        assert second.delivery.pending == 2
        exporter.fail = False
        wait_until(lambda: second.waiting() == 0, "the kept spans to be delivered")
        assert span_ids(exporter) == Counter({1: 1, 2: 1})
        assert first_exporter.spans == []

    def test_shutdown_flushes_without_waiting_for_the_batch_delay(
        self, rigs: list[Rig], exporter: RecordingSpanExporter
    ) -> None:
        """shutdown() delivers spans waiting for a (long) batch delay and reports none kept."""
        rig = make_rig(rigs, exporter, delay_s=30.0)
        rig.commit([spancodec.encode(spec(1))])  # before start: read and delivered by the first pass
        rig.delivery.begin()
        wait_until(lambda: len(exporter.spans) == 1, "the first span")
        rig.commit([spancodec.encode(spec(2))], step="s2")  # the worker now pauses 30 s to let a batch gather
        assert rig.delivery.shutdown(5.0) == 0
        assert span_ids(exporter) == Counter({1: 1, 2: 1})

    def test_shutdown_with_a_hanging_exporter_keeps_the_spans(self, rigs: list[Rig]) -> None:
        """With an export that never returns, shutdown() gives up at its deadline and reports every span kept."""
        exporter = HangingExporter()
        rig = make_rig(rigs, exporter)
        rig.delivery.begin()
        rig.commit([spancodec.encode(spec(i)) for i in range(1, 5)])
        assert exporter.entered.wait(WAIT_S)
        started = time.monotonic()
        kept = rig.delivery.shutdown(1.0)
        took = time.monotonic() - started
        exporter.release.set()
        assert kept == 4
        assert took < 1.0 + 2.0, f"shutdown(1.0) took {took:.1f}s"
        assert rig.waiting() == 4

    def test_shutdown_with_a_refusing_exporter_tries_once_more_and_stops(
        self, rigs: list[Rig], exporter: RecordingSpanExporter
    ) -> None:
        """With the backend refusing, shutdown() makes one more attempt instead of retrying until its deadline."""
        exporter.fail = True
        rig = make_rig(rigs, exporter)
        rig.delivery.begin()
        rig.commit([spancodec.encode(spec(i)) for i in (1, 2, 3)])
        wait_until(lambda: exporter.batches >= 1, "a refused batch")
        before = exporter.batches
        assert rig.delivery.shutdown(3.0) == 3
        assert exporter.batches - before <= 2, f"{exporter.batches - before} attempts during shutdown"
        assert exporter.spans == []
        assert rig.waiting() == 3

    def test_traces_off_delivers_nothing_and_shuts_down_at_once(self, rigs: list[Rig]) -> None:
        """Without an exporter the worker only trims; shutdown reports what the backlog holds."""
        rig = make_rig(rigs, None)
        rig.store.commit_steps(REF, ["s"], "s", time.time(), spans=[spancodec.encode(spec(1))])
        rig.delivery.begin()
        assert rig.delivery.state == "off"
        assert rig.delivery.shutdown(5.0) == 1


class TestBadSpans:
    @pytest.mark.parametrize(
        "bad",
        [
            pytest.param(spec(90, start_ns=200 * NS, end_ns=100 * NS), id="end-before-start"),
            pytest.param(spec(91, start_ns=2**64 + 5, end_ns=2**64 + 10), id="past-uint64"),
            pytest.param(spec(92, span_id=0), id="zero-span-id"),
        ],
    )
    def test_unexportable_span_is_dropped_and_its_batch_mates_delivered(
        self, rigs: list[Rig], exporter: RecordingSpanExporter, bad: SpanSpec
    ) -> None:
        """A span OTLP cannot carry is dropped and counted as span_unencodable; the rest of its batch goes out."""
        rig = make_rig(rigs, exporter)
        rig.commit([spancodec.encode(spec(1)), spancodec.encode(bad), spancodec.encode(spec(2))])
        rig.delivery.begin()
        wait_until(lambda: rig.waiting() == 0, "the backlog to empty")
        assert span_ids(exporter) == Counter({1: 1, 2: 1})
        assert rig.dropped("span_unencodable") == 1
        assert exporter.batches == 1, "the bad span must not cost its batch a failed attempt"

    @pytest.mark.parametrize(
        "row", [b"not json at all", b"[99]", b'{"a": 1}', b"\xff\xfe", b'[1,"k","n","internal","zz"]'], ids=repr
    )
    def test_undecodable_row_is_dropped_and_counted(
        self, rigs: list[Rig], exporter: RecordingSpanExporter, row: bytes
    ) -> None:
        """A backlog row that is not a span record is dropped and counted; its neighbours are delivered."""
        rig = make_rig(rigs, exporter)
        rig.commit([spancodec.encode(spec(1)), row, spancodec.encode(spec(2))])
        rig.delivery.begin()
        wait_until(lambda: rig.waiting() == 0, "the backlog to empty")
        assert span_ids(exporter) == Counter({1: 1, 2: 1})
        assert rig.dropped("span_unencodable") == 1

    def test_span_the_otlp_encoder_rejects_is_isolated(self, rigs: list[Rig]) -> None:
        """A span only the OTLP encoder rejects (an event time past uint64) is dropped; its batch-mates reach a
        real receiver once, and the backlog empties."""
        with OtlpReceiver() as receiver:
            exporter = OTLPSpanExporter(endpoint=receiver.url, timeout=5)
            rig = make_rig(rigs, exporter)
            poison = spec(50, events=(SpanEvent("late", 2**65, {}),))
            rig.commit([spancodec.encode(spec(1)), spancodec.encode(poison), spancodec.encode(spec(2))])
            rig.delivery.begin()
            wait_until(lambda: rig.waiting() == 0, "the backlog to empty")
            assert receiver.wait_for(lambda spans: len(spans) >= 2, WAIT_S)
            assert rig.delivery.shutdown(2.0) == 0
        assert sorted(int(s.span_id, 16) for s in receiver.spans) == [1, 2]
        assert rig.dropped("span_unencodable") == 1


class TestLimits:
    def test_size_limit_drops_the_oldest_and_counts_them(
        self, rigs: list[Rig], exporter: RecordingSpanExporter
    ) -> None:
        """Beyond max_spans the oldest undelivered spans are dropped as backlog_full; the newest are delivered later."""
        exporter.fail = True
        rig = make_rig(rigs, exporter, limits=BacklogLimits(max_spans=3, max_age_s=86_400))
        rig.commit([spancodec.encode(spec(i)) for i in range(1, 6)])
        rig.delivery.begin()
        wait_until(lambda: rig.dropped("backlog_full") == 2, "the size trim")
        kept = [spancodec.decode(span) for _, span in rig.store.backlog(10)]
        assert [s.span_id for s in kept if isinstance(s, SpanSpec)] == [3, 4, 5]
        assert rig.delivery.pending == 3
        exporter.fail = False
        wait_until(lambda: rig.waiting() == 0, "the rest to be delivered")
        assert span_ids(exporter) == Counter({3: 1, 4: 1, 5: 1})

    def test_age_limit_drops_expired_spans_and_counts_them(
        self, rigs: list[Rig], exporter: RecordingSpanExporter
    ) -> None:
        """Spans committed longer ago than max_age are dropped as backlog_expired before delivery; newer ones go out."""
        now = 2_000_000.0
        rig = make_rig(rigs, exporter, limits=BacklogLimits(max_spans=100, max_age_s=600), wall=lambda: now)
        rig.commit([spancodec.encode(spec(1)), spancodec.encode(spec(2))], at=now - 3600, step="old")
        rig.commit([spancodec.encode(spec(3))], at=now - 60, step="new")
        rig.delivery.begin()
        wait_until(lambda: rig.waiting() == 0, "the backlog to empty")
        assert rig.dropped("backlog_expired") == 2
        assert span_ids(exporter) == Counter({3: 1})

    def test_oldest_age_is_what_delivery_last_saw(self, rigs: list[Rig], exporter: RecordingSpanExporter) -> None:
        """oldest_age() is the time since the oldest waiting span was committed as the delivery thread last read
        the store (never a read on the caller's thread), and 0 once none waits."""
        now = 2_000_000.0
        exporter.fail = True
        rig = make_rig(rigs, exporter, wall=lambda: now)
        assert rig.delivery.oldest_age() == 0.0
        rig.commit([spancodec.encode(spec(1))], at=now - 42)
        assert rig.delivery.oldest_age() == 0.0, "not read from the store on the caller's thread"
        rig.delivery.begin()
        assert rig.delivery.oldest_age() == pytest.approx(42)
        exporter.fail = False
        wait_until(lambda: rig.waiting() == 0, "delivery")
        assert rig.delivery.oldest_age() == 0.0


def one_step() -> Commit[Run, RunStep, str]:
    run, step = make_run(), make_step()
    return Commit(run.ref, run, records=[step], record_ids=[step.id], cursor=step.id)


class TestPipelineIndependence:
    def _pipeline(self, rig: Rig, sink: RecordingMetricSink, *, traces: bool = True) -> Pipeline[Run, RunStep, str]:
        mapper = AssistantsMapper(MappingOptions())
        return Pipeline(AsyncStore(rig.store), mapper, sink, rig.health, on_spans=rig.delivery.notify, traces=traces)

    async def test_steps_are_counted_at_commit_while_the_exporter_fails(
        self, rigs: list[Rig], exporter: RecordingSpanExporter
    ) -> None:
        """With the trace exporter failing, committed steps and runs are already counted and their spans wait."""
        exporter.fail = True
        rig = make_rig(rigs, exporter)
        rig.delivery.begin()
        sink = RecordingMetricSink()
        pipeline = self._pipeline(rig, sink)
        run = make_run()
        steps = [
            make_step(id="step_1", usage=Usage(prompt_tokens=10, completion_tokens=5, total_tokens=15)),
            make_step(id="step_2", created_at=106, completed_at=110),
        ]
        assert await pipeline.commit(
            Commit(run.ref, run, records=steps, record_ids=[s.id for s in steps], cursor="step_2")
        )
        assert await pipeline.commit(Commit(run.ref, run, finish="helper", finished=True))
        assert sink.total("stepscope_run_steps_total") == 2
        assert sink.total("stepscope_runs_total", status="completed") == 1
        assert sink.total("stepscope_tokens_total") == 15
        wait_until(lambda: exporter.batches >= 1, "a refused export")
        assert exporter.spans == []
        assert rig.waiting() == 3  # two step spans and the run span
        exporter.fail = False
        wait_until(lambda: rig.waiting() == 0, "delivery after recovery")
        assert sink.total("stepscope_run_steps_total") == 2, "delivery must not count again"
        assert len(span_ids(exporter)) == 3

    async def test_failed_commit_counts_nothing_and_keeps_no_spans(
        self, rigs: list[Rig], exporter: RecordingSpanExporter, tmp_path: Path
    ) -> None:
        """When the store cannot be written the step is neither counted nor queued, and store_error is counted."""
        import sqlite3  # noqa: PLC0415

        path = tmp_path / "state.db"
        rig = make_rig(rigs, exporter, store=SqliteStore(str(path)))
        sink = RecordingMetricSink()
        pipeline = self._pipeline(rig, sink)
        other = sqlite3.connect(path)
        other.execute("CREATE TRIGGER refuse BEFORE INSERT ON backlog BEGIN SELECT RAISE(ABORT, 'full disk'); END")
        other.commit()
        assert not await pipeline.commit(one_step())
        assert sink.observations == []
        assert rig.waiting() == 0
        assert rig.store.active_runs() == []
        assert rig.dropped("store_error") == 1
        assert not rig.healthy()
        other.execute("DROP TRIGGER refuse")
        other.commit()
        other.close()
        assert await pipeline.commit(one_step())
        assert sink.total("stepscope_run_steps_total") == 1
        assert rig.healthy()

    async def test_traces_off_counts_and_queues_nothing(self, rigs: list[Rig]) -> None:
        """With traces off a commit counts its steps and leaves the backlog empty."""
        rig = make_rig(rigs, None)
        sink = RecordingMetricSink()
        assert await self._pipeline(rig, sink, traces=False).commit(one_step())
        assert sink.total("stepscope_run_steps_total") == 1
        assert rig.waiting() == 0
