"""The Prometheus sink: values, pre-initialised series, the label cap and exemplars."""

from __future__ import annotations

import re
from functools import partial

from prometheus_client import CollectorRegistry
from prometheus_client.openmetrics.exposition import generate_latest

from stepscope.export.prometheus import PrometheusMetrics
from stepscope.mapping import run_observations, step_observations
from stepscope.models import ToolCall, Usage
from stepscope.types import Observation
from tests.unit import samples

make_run = samples.make_run

make_step = partial(
    samples.make_step,
    type="tool_calls",
    completed_at=106,
    usage=Usage(20, 3, 23),
    tool_calls=(ToolCall("call_1", "function", name="get_weather"),),
)


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


class TestRecording:
    def test_step_and_run_values(self) -> None:
        """A step and its run land in the contract's families with the expected values."""
        reg = CollectorRegistry()
        sink = PrometheusMetrics(reg)
        run = make_run()
        sink.record(step_observations(run, make_step()))
        sink.record(step_observations(run, make_step(id="step_2", usage=Usage(5, 1, 6), tool_calls=())))
        sink.record(run_observations(run))
        common = {"model": "gpt-4o", "assistant_id": "asst_1"}
        assert sample(reg, "stepscope_run_steps_total", step_type="tool_calls", status="completed", **common) == 2
        assert sample(reg, "stepscope_tokens_total", token_type="input", step_type="tool_calls", **common) == 25
        assert sample(reg, "stepscope_tokens_total", token_type="output", step_type="tool_calls", **common) == 4
        assert sample(reg, "stepscope_runs_total", status="completed", **common) == 1
        assert sample(reg, "stepscope_tool_calls_total", tool_type="function", tool_name="get_weather") == 1
        duration = "stepscope_run_step_duration_seconds"
        assert sample(reg, f"{duration}_count", step_type="tool_calls", status="completed") == 2
        assert sample(reg, f"{duration}_sum", step_type="tool_calls", status="completed") == 6
        assert sample(reg, f"{duration}_bucket", step_type="tool_calls", status="completed", le="2.0") == 0
        assert sample(reg, f"{duration}_bucket", step_type="tool_calls", status="completed", le="5.0") == 2
        assert sample(reg, "stepscope_run_duration_seconds_sum", status="completed") == 30
        assert sample(reg, "stepscope_run_queue_seconds_sum") == 2
        assert sample(reg, "stepscope_run_queue_seconds_bucket", le="2.0") == 1

    def test_known_series_start_at_zero(self) -> None:
        """Histograms by known step type/status, run statuses and built-in tools exist before any data."""
        reg = CollectorRegistry()
        PrometheusMetrics(reg)
        for status in ("completed", "failed", "cancelled", "expired"):
            assert sample(reg, "stepscope_run_step_duration_seconds_count", step_type="tool_calls", status=status) == 0
        assert sample(reg, "stepscope_run_duration_seconds_count", status="incomplete") == 0
        assert sample(reg, "stepscope_run_queue_seconds_count") == 0
        assert sample(reg, "stepscope_tool_calls_total", tool_type="datastore", tool_name="file_search") == 0
        assert sample(reg, "stepscope_tool_calls_total", tool_type="extension", tool_name="code_interpreter") == 0

    def test_new_model_assistant_pair_gets_all_statuses(self) -> None:
        """The first step of a model/assistant pair creates its failure series at 0 too."""
        reg = CollectorRegistry()
        PrometheusMetrics(reg).record(step_observations(make_run(), make_step()))
        common = {"model": "gpt-4o", "assistant_id": "asst_1"}
        assert sample(reg, "stepscope_run_steps_total", step_type="message_creation", status="failed", **common) == 0
        assert sample(reg, "stepscope_tokens_total", token_type="output", step_type="message_creation", **common) == 0
        assert sample(reg, "stepscope_runs_total", status="expired", **common) is None
        PrometheusMetrics(reg2 := CollectorRegistry()).record(run_observations(make_run()))
        assert sample(reg2, "stepscope_runs_total", status="expired", **common) == 0

    def test_unknown_status_recorded(self) -> None:
        """Statuses outside the known set (Azure) are kept as they are."""
        reg = CollectorRegistry()
        PrometheusMetrics(reg).record(step_observations(make_run(), make_step(status="paused", tool_calls=())))
        assert (
            sample(
                reg,
                "stepscope_run_steps_total",
                step_type="tool_calls",
                status="paused",
                model="gpt-4o",
                assistant_id="asst_1",
            )
            == 1
        )

    def test_bad_observations_do_not_raise(self) -> None:
        """Unknown metrics, missing labels and negative counts are skipped without raising."""
        reg = CollectorRegistry()
        sink = PrometheusMetrics(reg)
        sink.record(
            [
                Observation("nope_total", {}, 1.0),
                Observation("stepscope_runs_total", {"status": "completed"}, 1.0),
                Observation("stepscope_tool_calls_total", {"tool_type": "function", "tool_name": "f"}, -1.0),
                Observation("stepscope_tool_calls_total", {"tool_type": "function", "tool_name": "g"}, 1.0),
            ]
        )
        assert sample(reg, "stepscope_tool_calls_total", tool_type="function", tool_name="g") == 1


class TestLabelCap:
    def test_cap_rewrites_to_other_and_counts(self) -> None:
        """Past the cap, new assistant ids read _other and each rewrite is reported as label_cap."""
        reg = CollectorRegistry()
        reasons: list[str] = []
        sink = PrometheusMetrics(reg, label_cap=2, overflow=reasons.append)
        for i in range(4):
            sink.record(run_observations(make_run(id=f"run_{i}", assistant_id=f"asst_{i}")))
        sink.record(run_observations(make_run(id="run_x", assistant_id="asst_0")))
        common = {"status": "completed", "model": "gpt-4o"}
        assert sample(reg, "stepscope_runs_total", assistant_id="asst_0", **common) == 2
        assert sample(reg, "stepscope_runs_total", assistant_id="asst_1", **common) == 1
        assert sample(reg, "stepscope_runs_total", assistant_id="asst_2", **common) is None
        assert sample(reg, "stepscope_runs_total", assistant_id="_other", **common) == 2
        assert reasons == ["label_cap", "label_cap"]
        assert sink.overflows == 2

    def test_repeated_values_past_the_cap_count_every_time(self) -> None:
        """A value past the cap is rewritten and reported on every observation, not only the first; admitted stay."""
        reg = CollectorRegistry()
        reasons: list[str] = []
        sink = PrometheusMetrics(reg, label_cap=1, overflow=reasons.append)
        reasons.clear()  # the built-in tools' series already overflowed the tool_name cap of 1
        for assistant in ("asst_0", "asst_9", "asst_0", "asst_9", "asst_0"):
            sink.record(run_observations(make_run(assistant_id=assistant)))
        common = {"status": "completed", "model": "gpt-4o"}
        assert sample(reg, "stepscope_runs_total", assistant_id="asst_0", **common) == 3
        assert sample(reg, "stepscope_runs_total", assistant_id="_other", **common) == 2
        assert reasons == ["label_cap", "label_cap"]

    def test_tool_name_cap_counts_builtins(self) -> None:
        """Built-in tools hold cap slots from start-up, so a cap of 2 sends the first function to _other."""
        reg = CollectorRegistry()
        sink = PrometheusMetrics(reg, label_cap=2)
        sink.record(step_observations(make_run(), make_step()))
        assert sample(reg, "stepscope_tool_calls_total", tool_type="function", tool_name="_other") == 1
        assert sink.overflows == 1


class TestExemplars:
    def test_openmetrics_exemplars(self) -> None:
        """Counters and histogram buckets carry trace_id/span_id exemplars in OpenMetrics output."""
        reg = CollectorRegistry()
        run = make_run()
        obs = step_observations(run, make_step())
        PrometheusMetrics(reg).record(obs)
        text = generate_latest(reg).decode()
        ids = f'span_id="{obs[0].span_id:016x}",trace_id="{obs[0].trace_id:032x}"'
        steps_line = next(
            line
            for line in text.splitlines()
            if line.startswith("stepscope_run_steps_total{") and 'step_type="tool_calls"' in line
        )
        assert "} 1.0 # {" + ids + "} 1.0 " in steps_line
        bucket = next(
            line
            for line in text.splitlines()
            if line.startswith(
                'stepscope_run_step_duration_seconds_bucket{le="5.0",status="completed",step_type="tool_calls"}'
            )
        )
        assert "# {" + ids + "} 3.0" in bucket
        tool_line = next(line for line in text.splitlines() if 'tool_name="get_weather"' in line and "_total{" in line)
        assert f'span_id="{obs[-1].span_id:016x}"' in tool_line


def _exposition(registry: CollectorRegistry) -> list[str]:
    # Exemplar timestamps and _created samples are wall-clock times: drop them, keep values and exemplar ids.
    lines = generate_latest(registry).decode().splitlines()
    return [re.sub(r"( # \{.*\} \S+) \S+$", r"\1", line) for line in lines if "_created" not in line]


class TestBatching:
    def test_one_call_equals_one_observation_at_a_time(self) -> None:
        """Recording many steps in one call gives the same values and exemplars as recording each observation alone."""
        run = make_run()
        observations: list[Observation] = []
        for i in range(40):
            step = make_step(
                id=f"step_{i}",
                type="tool_calls" if i % 3 else "message_creation",
                status="failed" if i % 7 == 0 else "completed",
                completed_at=None if i % 7 == 0 else 103 + i % 9,
                failed_at=110 if i % 7 == 0 else None,
                usage=None if i % 5 == 0 else Usage(i, i % 4, i + i % 4),
                tool_calls=(ToolCall(f"call_{i}", "function", name=f"f{i % 2}"),) if i % 3 else (),
            )
            observations += step_observations(run, step)
        observations.append(Observation("stepscope_run_queue_seconds", {}, 0.3))  # no ids: no exemplar
        observations.append(Observation("stepscope_runs_total", {"status": "expired", "model": "m"}, 1.0))  # bad
        batched, single = CollectorRegistry(), CollectorRegistry()
        PrometheusMetrics(batched).record(observations)
        one_by_one = PrometheusMetrics(single)
        for obs in observations:
            one_by_one.record([obs])
        assert _exposition(batched) == _exposition(single)
        assert sum(" # {" in line for line in _exposition(batched)) > 10
