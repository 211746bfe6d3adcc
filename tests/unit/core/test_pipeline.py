"""The pipeline: a step is committed with its spans in one transaction, then counted, whatever the exporter does."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from stepscope.core import spancodec
from stepscope.core.asyncstore import AsyncStore
from stepscope.core.pipeline import Pipeline
from stepscope.core.records import Commit, Telemetry, UnitRef
from stepscope.core.store import SqliteStore
from stepscope.errors import StoreError
from stepscope.mapping.attributes import MappingOptions
from stepscope.protocols.assistants.mapper import AssistantsMapper
from stepscope.protocols.assistants.records import Run, RunStep, ToolCall, Usage
from stepscope.testing import RecordingMetricSink
from tests.kit.fakes import Counters
from tests.kit.samples import make_run, make_step

pytestmark = pytest.mark.anyio

RUN = make_run(model="m", started_at=100, completed_at=110)
MESSAGE = make_step(RUN, id="step_a", created_at=101, completed_at=102, usage=Usage(5, 1, 6), message_id="msg_1")
TOOLS = make_step(
    RUN, id="step_b", type="tool_calls", created_at=102, completed_at=104, usage=Usage(7, 2, 9),
    tool_calls=(ToolCall("call_1", "function", name="f"), ToolCall("call_2", "function", name="g")),
)  # fmt: skip
OPTIONS = MappingOptions(provider_name="openai")


Rig = tuple[Pipeline[Run, RunStep, str | None], RecordingMetricSink, Counters, list[int]]


def _pipeline(store: SqliteStore, *, traces: bool = True) -> Rig:
    metrics, health, notified = RecordingMetricSink(), Counters(), list[int]()
    mapper = AssistantsMapper(OPTIONS)
    pipeline = Pipeline(AsyncStore(store), mapper, metrics, health, on_spans=notified.append, traces=traces)
    return pipeline, metrics, health, notified


def steps(*records: RunStep, cursor: str) -> Commit[Run, RunStep, str | None]:
    return Commit(RUN.ref, RUN, records=records, record_ids=[s.id for s in records], cursor=cursor)


def finish(name: str | None) -> Commit[Run, RunStep, str | None]:
    return Commit(RUN.ref, RUN, finish=name, finished=True)


async def test_commit_keeps_spans_and_counts_at_once(store: SqliteStore) -> None:
    """Committed steps put their step and tool spans in the backlog and are counted before any export."""
    pipeline, metrics, _, notified = _pipeline(store)
    assert await pipeline.commit(steps(MESSAGE, TOOLS, cursor="step_b"))
    names = [spancodec.decode(span).key for _, span in store.backlog(100)]
    assert names == ["step:step_a", "step:step_b", "call:step_b:call_1", "call:step_b:call_2"]
    assert notified == [4]
    assert metrics.total("stepscope_tokens_total") == 15
    (progress,) = store.active_runs()
    assert progress.cursor == "step_b"
    assert progress.committed == {"step_a", "step_b"}


async def test_finish_run_commits_the_run_span_and_forgets_progress(store: SqliteStore) -> None:
    """Finishing a run appends its run span, counts the run and marks it done in the same transaction."""
    pipeline, metrics, _, _ = _pipeline(store)
    await pipeline.commit(steps(MESSAGE, cursor="step_a"))
    assert await pipeline.commit(finish("Helper"))
    keys = [spancodec.decode(span).key for _, span in store.backlog(100)]
    assert keys[-1] == "run:run_1"
    assert store.active_runs() == []
    assert store.known_runs(["run_1"]) == {"run_1"}
    assert metrics.total("stepscope_runs_total") == 1


async def test_traces_off_counts_without_a_backlog(store: SqliteStore) -> None:
    """With traces off nothing enters the backlog, and the steps still count."""
    pipeline, metrics, _, notified = _pipeline(store, traces=False)
    assert await pipeline.commit(steps(MESSAGE, cursor="step_a"))
    assert store.backlog(10) == []
    assert notified == []
    assert metrics.total("stepscope_tokens_total") == 6


async def test_failed_store_write_commits_and_counts_nothing(tmp_path: Path) -> None:
    """When the store cannot be written, the step is neither counted nor kept, and the failure is counted."""
    path = tmp_path / "state.db"
    store = SqliteStore(str(path))
    store.open()
    with sqlite3.connect(path) as other:  # another writer holds the database: every write of ours fails
        other.execute("BEGIN EXCLUSIVE")
        store._db.execute("PRAGMA busy_timeout = 0")  # type: ignore[union-attr]  # fail at once, not after 5 s
        pipeline, metrics, health, notified = _pipeline(store)
        assert not await pipeline.commit(steps(MESSAGE, cursor="step_a"))
        healthy_while_locked = store.healthy
        other.rollback()
    assert not healthy_while_locked
    assert metrics.observations == []
    assert notified == []
    assert health.counts == {"store_error": 1}
    assert await pipeline.commit(steps(MESSAGE, cursor="step_a"))
    assert store.healthy
    assert metrics.total("stepscope_tokens_total") == 6


async def test_listeners_hear_committed_steps_and_runs(store: SqliteStore) -> None:
    """Listeners are told of each committed step's telemetry, then of the finished run's, in order."""
    pipeline, _, _, _ = _pipeline(store)
    heard: list[tuple[str, bool]] = []
    pipeline.add_listener(lambda part: heard.append((part.telemetry.spans[0].key, part.finished)))
    await pipeline.commit(steps(MESSAGE, TOOLS, cursor="step_b"))
    await pipeline.commit(finish(None))
    assert heard == [("step:step_a", False), ("step:step_b", False), ("run:run_1", True)]


def test_store_error_type_is_what_the_pipeline_catches() -> None:
    """A write on a closed store raises StoreError, the error the pipeline turns into a refused commit."""
    store = SqliteStore(":memory:")
    with pytest.raises(StoreError):
        store.commit_steps(UnitRef("thread_1", "run_1"), ["step_a"], "step_a", 0.0)


class BrokenMapper:
    """Maps every record but the one named `step_a`, which raises like a mapping bug would."""

    def __init__(self) -> None:
        self.inner = AssistantsMapper(OPTIONS)

    def record(self, unit: Run, record: RunStep) -> Telemetry:
        if record.id == "step_a":
            raise RuntimeError("mapping bug")
        return self.inner.record(unit, record)

    def finish(self, unit: Run, finish: str | None) -> Telemetry:
        return self.inner.finish(unit, finish)


async def test_a_record_that_cannot_be_mapped_is_committed_without_telemetry(store: SqliteStore) -> None:
    """A mapping failure drops that record's telemetry (counted) and commits it, so its siblings go on."""
    metrics, health = RecordingMetricSink(), Counters()
    pipeline: Pipeline[Run, RunStep, str | None] = Pipeline(AsyncStore(store), BrokenMapper(), metrics, health)
    assert await pipeline.commit(steps(MESSAGE, TOOLS, cursor="step_b"))
    keys = [spancodec.decode(span).key for _, span in store.backlog(100)]
    assert keys == ["step:step_b", "call:step_b:call_1", "call:step_b:call_2"]
    assert health.counts == {"mapping_error": 1}
    assert store.active_runs()[0].committed == {"step_a", "step_b"}
