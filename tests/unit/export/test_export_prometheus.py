"""The Prometheus sink: values, pre-initialised series, the label cap and exemplars."""

from __future__ import annotations

import re
from functools import partial

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client import generate_latest as prometheus_text
from prometheus_client.openmetrics.exposition import generate_latest

from stepscope.core.records import Observation
from stepscope.export.prometheus import PrometheusMetrics
from stepscope.protocols.agents import vocabulary as agents_vocabulary
from stepscope.protocols.assistants import vocabulary as assistants_vocabulary
from stepscope.protocols.assistants.observations import run_observations, step_observations
from stepscope.protocols.assistants.records import ToolCall, Usage
from tests.kit import samples
from tests.kit.fakes import CallbackDrops

make_run = samples.make_run

make_step = partial(
    samples.make_step,
    type="tool_calls",
    completed_at=106,
    usage=Usage(20, 3, 23),
    tool_calls=(ToolCall("call_1", "function", name="get_weather"),),
)

LABELS = (assistants_vocabulary.LABELS, agents_vocabulary.LABELS)
"""Both protocols, as a build with either would know them."""


def _counted(reasons: list[str]) -> CallbackDrops:
    """A `Drops` appending each dropped reason to `reasons`, once per item."""
    return CallbackDrops(lambda reason, n: reasons.extend([reason] * n))


# Families with a `protocol` label (all domain families but the step duration), by sample-name prefix.
_WITH_PROTOCOL = (
    "stepscope_runs",
    "stepscope_run_steps",
    "stepscope_tokens",
    "stepscope_tool_calls",
    "stepscope_run_duration",
    "stepscope_run_queue",
)


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    """A sample's value; a domain sample is Assistants' unless `protocol` is given (the step duration has none)."""
    if name.startswith(_WITH_PROTOCOL):
        labels = {"protocol": "assistants", **labels}
    return registry.get_sample_value(name, labels)


def agents(metric: str, labels: dict[str, str], value: float = 1.0) -> Observation:
    """An Agents API observation of `metric` (what `mapping/agents.py` emits), with trace and span ids."""
    return Observation(metric, {**labels, "protocol": "agents"}, value, 1, 2)


class TestRecording:
    def test_step_and_run_values(self) -> None:
        """A step and its run land in the contract's families with the expected values."""
        reg = CollectorRegistry()
        sink = PrometheusMetrics(reg, labels=LABELS)
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
        PrometheusMetrics(reg, labels=LABELS)
        for status in ("completed", "failed", "cancelled", "expired"):
            assert sample(reg, "stepscope_run_step_duration_seconds_count", step_type="tool_calls", status=status) == 0
        assert sample(reg, "stepscope_run_duration_seconds_count", status="incomplete") == 0
        assert sample(reg, "stepscope_run_queue_seconds_count") == 0
        assert sample(reg, "stepscope_tool_calls_total", tool_type="datastore", tool_name="file_search") == 0
        assert sample(reg, "stepscope_tool_calls_total", tool_type="extension", tool_name="code_interpreter") == 0

    def test_new_model_assistant_pair_gets_all_statuses(self) -> None:
        """The first step of a model/assistant pair creates its failure series at 0 too."""
        reg = CollectorRegistry()
        PrometheusMetrics(reg, labels=LABELS).record(step_observations(make_run(), make_step()))
        common = {"model": "gpt-4o", "assistant_id": "asst_1"}
        assert sample(reg, "stepscope_run_steps_total", step_type="message_creation", status="failed", **common) == 0
        assert sample(reg, "stepscope_tokens_total", token_type="output", step_type="message_creation", **common) == 0
        assert sample(reg, "stepscope_runs_total", status="expired", **common) is None
        PrometheusMetrics(reg2 := CollectorRegistry(), labels=LABELS).record(run_observations(make_run()))
        assert sample(reg2, "stepscope_runs_total", status="expired", **common) == 0

    def test_unknown_status_recorded(self) -> None:
        """Statuses outside the known set (Azure) are kept as they are."""
        reg = CollectorRegistry()
        PrometheusMetrics(reg, labels=LABELS).record(
            step_observations(make_run(), make_step(status="paused", tool_calls=()))
        )
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
        sink = PrometheusMetrics(reg, labels=LABELS)
        sink.record(
            [
                Observation("nope_total", {}, 1.0),
                Observation("stepscope_runs_total", {"status": "completed"}, 1.0),
                Observation("stepscope_tool_calls_total", {"tool_type": "function", "tool_name": "f"}, -1.0),
                Observation("stepscope_tool_calls_total", {"tool_type": "function", "tool_name": "h"}, 1.0),
                Observation(
                    "stepscope_tool_calls_total",
                    {"tool_type": "function", "tool_name": "g", "protocol": "assistants"},
                    1.0,
                ),
            ]
        )
        assert sample(reg, "stepscope_tool_calls_total", tool_type="function", tool_name="g") == 1
        assert sample(reg, "stepscope_tool_calls_total", tool_type="function", tool_name="h") is None  # no protocol


class TestLabelCap:
    def test_cap_rewrites_to_other_and_counts(self) -> None:
        """Past the cap, new assistant ids read _other and each rewrite is reported as label_cap."""
        reg = CollectorRegistry()
        reasons: list[str] = []
        sink = PrometheusMetrics(
            reg, labels=LABELS, label_cap=2, overflow=CallbackDrops(lambda reason, n: reasons.extend([reason] * n))
        )
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
        sink = PrometheusMetrics(
            reg, labels=LABELS, label_cap=1, overflow=CallbackDrops(lambda reason, n: reasons.extend([reason] * n))
        )
        for assistant in ("asst_0", "asst_9", "asst_0", "asst_9", "asst_0"):
            sink.record(run_observations(make_run(assistant_id=assistant)))
        common = {"status": "completed", "model": "gpt-4o"}
        assert sample(reg, "stepscope_runs_total", assistant_id="asst_0", **common) == 3
        assert sample(reg, "stepscope_runs_total", assistant_id="_other", **common) == 2
        assert reasons == ["label_cap", "label_cap"]

    def test_builtin_tools_take_no_cap_slots(self) -> None:
        """Tools the protocol names (code_interpreter, bing_grounding) always pass; functions share the cap."""
        reg = CollectorRegistry()
        sink = PrometheusMetrics(reg, labels=LABELS, label_cap=1)
        calls = (
            ToolCall("c1", "function", name="get_weather"),
            ToolCall("c2", "function", name="get_time"),
            ToolCall("c3", "code_interpreter"),
            ToolCall("c4", "bing_grounding"),
        )
        sink.record(step_observations(make_run(), make_step(tool_calls=calls)))
        assert sample(reg, "stepscope_tool_calls_total", tool_type="function", tool_name="get_weather") == 1
        assert sample(reg, "stepscope_tool_calls_total", tool_type="function", tool_name="_other") == 1
        assert sample(reg, "stepscope_tool_calls_total", tool_type="extension", tool_name="code_interpreter") == 1
        assert sample(reg, "stepscope_tool_calls_total", tool_type="extension", tool_name="bing_grounding") == 1
        assert sink.overflows == 1

    def test_unknown_enum_values_are_capped_known_ones_pass(self) -> None:
        """Unknown step types, statuses and tool types share the cap; the protocol's values pass once it is full."""
        reg = CollectorRegistry()
        sink = PrometheusMetrics(reg, labels=LABELS, label_cap=1)
        run = make_run()
        for i, (step_type, status) in enumerate(
            [("activities", "paused"), ("x_type", "x_status"), ("message_creation", "failed")]
        ):
            step = make_step(id=f"step_{i}", type=step_type, status=status, tool_calls=(ToolCall("c", f"t{i}"),))
            sink.record(step_observations(run, step))
        common = {"model": "gpt-4o", "assistant_id": "asst_1"}
        steps = "stepscope_run_steps_total"
        assert sample(reg, steps, step_type="activities", status="paused", **common) == 1
        assert sample(reg, steps, step_type="_other", status="_other", **common) == 1
        assert sample(reg, steps, step_type="message_creation", status="failed", **common) == 1
        assert sample(reg, "stepscope_tool_calls_total", tool_type="_other", tool_name="_other") == 2
        assert sample(reg, "stepscope_tool_calls_total", tool_type="t0", tool_name="t0") == 1

    def test_overlong_value_reads_other(self) -> None:
        """A label value over 64 characters reads _other even while the cap has room; 64 characters pass."""
        reg = CollectorRegistry()
        sink = PrometheusMetrics(reg, labels=LABELS)
        sink.record(run_observations(make_run(model="m" * 64)))
        sink.record(run_observations(make_run(model="m" * 65)))
        assert sample(reg, "stepscope_runs_total", status="completed", model="m" * 64, assistant_id="asst_1") == 1
        assert sample(reg, "stepscope_runs_total", status="completed", model="_other", assistant_id="asst_1") == 1
        assert sink.overflows == 1


class TestSeriesBudget:
    def test_new_series_past_the_budget_fold_into_the_overflow_series(self) -> None:
        """Past max_series, new label sets count in the family's all-_other series; totals stay exact."""
        reg = CollectorRegistry()
        reasons: list[str] = []
        sink = PrometheusMetrics(
            reg, labels=LABELS, max_series=50, overflow=CallbackDrops(lambda reason, n: reasons.extend([reason] * n))
        )
        for i in range(40):
            sink.record(run_observations(make_run(id=f"run_{i}", assistant_id=f"asst_{i}")))
        # A new pair costs its 5 statuses x 2 series (_total, _created): 5 pairs fit in 50.
        assert sink.series("stepscope_runs_total") == 52  # 50 plus the overflow series
        folded = sample(reg, "stepscope_runs_total", status="_other", model="_other", assistant_id="_other")
        assert folded == 35
        assert sample(reg, "stepscope_runs_total", status="completed", model="gpt-4o", assistant_id="asst_4") == 1
        assert sample(reg, "stepscope_runs_total", status="completed", model="gpt-4o", assistant_id="asst_5") is None
        assert len(reasons) == 35
        total = sum(
            s.value for f in reg.collect() if f.name == "stepscope_runs" for s in f.samples if s.name.endswith("_total")
        )
        assert total == 40
        sink.record(run_observations(make_run(assistant_id="asst_2")))  # an admitted pair still counts as itself
        assert sample(reg, "stepscope_runs_total", status="completed", model="gpt-4o", assistant_id="asst_2") == 2

    def test_garbage_uses_half_the_budget(self) -> None:
        """Series with unknown statuses stop at half the budget, so a known pair seen later still gets its own."""
        reg = CollectorRegistry()
        sink = PrometheusMetrics(reg, labels=LABELS, max_series=40)
        run = make_run()
        for i in range(30):
            sink.record(step_observations(run, make_step(id=f"s{i}", status=f"junk_{i}", tool_calls=(), usage=None)))
        assert sink.series("stepscope_run_steps_total") <= 20 + 2
        common = {"step_type": "tool_calls", "status": "completed", "model": "gpt-4o"}
        sink.record(step_observations(run, make_step(assistant_id="asst_new", tool_calls=(), usage=None)))
        assert sample(reg, "stepscope_run_steps_total", assistant_id="asst_new", **common) == 1
        assert sample(reg, "stepscope_run_steps_total", assistant_id="asst_new", **{**common, "status": "failed"}) == 0
        assert sink.series("stepscope_run_steps_total") <= 40 + 2

    def test_folded_observations_keep_exemplars(self) -> None:
        """The overflow series carries the exemplar of the last observation folded into it."""
        reg = CollectorRegistry()
        sink = PrometheusMetrics(reg, labels=LABELS, max_series=1)
        obs = run_observations(make_run())
        sink.record(obs)
        line = next(
            line
            for line in generate_latest(reg).decode().splitlines()
            if line.startswith('stepscope_runs_total{assistant_id="_other"')
        )
        assert f'span_id="{obs[0].span_id:016x}"' in line

    def test_max_series_must_be_positive(self) -> None:
        """A budget below 1 is a programming error, refused at construction."""
        with pytest.raises(ValueError, match="max_series"):
            PrometheusMetrics(CollectorRegistry(), max_series=0)


def _hostile_steps(n: int, *, pairs: int, cross: bool = False) -> list[Observation]:
    """`n` terminal steps with unknown step types (10,000 kinds), statuses (1,500), tool types (300) and tool names
    (700), over `pairs` model/assistant pairs; `cross` instead pairs 100 types with 100 statuses, every combination."""
    out: list[Observation] = []
    for i in range(n):
        pair = i % pairs
        step_type, status = (i % 100, i // 100 % 100) if cross else (i % 10_000, i % 1_500)
        run = make_run(id=f"run_{i % 97}", model=f"model-{pair % 50:02d}-deployment")
        call = ToolCall(f"call_{i}", f"tool_type_{i % 300}", name=f"function_name_{i % 700}")
        step = make_step(
            id=f"step_{i}",
            type=f"step_type_{step_type}",
            status=f"status_{status}",
            assistant_id=f"asst_{pair}",
            tool_calls=(call,),
        )
        out += step_observations(run, step)
    return out


def _counted_steps(registry: CollectorRegistry) -> float:
    return sum(
        s.value
        for f in registry.collect()
        if f.name == "stepscope_run_steps"
        for s in f.samples
        if s.name.endswith("_total")
    )


class TestHostileMix:
    def test_series_and_scrape_size_stay_bounded(self) -> None:
        """A hostile mix (10,000 step types, 1,500 statuses, 50x50 model/assistant pairs) stays under 2,000 series
        per family and 1 MB per scrape in both formats, known pairs keep their series, and every step is counted."""
        reg = CollectorRegistry()
        reasons: list[str] = []
        sink = PrometheusMetrics(
            reg, labels=LABELS, overflow=CallbackDrops(lambda reason, n: reasons.extend([reason] * n))
        )
        garbage = _hostile_steps(10_000, pairs=4) + _hostile_steps(10_000, pairs=1, cross=True)
        for start in range(0, len(garbage), 1000):
            sink.record(garbage[start : start + 1000])
        assert sink.series("stepscope_run_steps_total") <= 1_000 + 2  # garbage gets half the budget
        legit = step_observations(make_run(model="gpt-4o"), make_step(id="legit", assistant_id="asst_real"))
        sink.record(legit)
        common = {"model": "gpt-4o", "assistant_id": "asst_real"}
        assert sample(reg, "stepscope_run_steps_total", step_type="tool_calls", status="completed", **common) == 1
        assert sample(reg, "stepscope_run_steps_total", step_type="tool_calls", status="failed", **common) == 0
        pairs = [
            obs
            for i in range(2_500)
            for obs in step_observations(
                make_run(id=f"run_p{i}", model=f"model-{i % 50:02d}"),
                make_step(id=f"step_p{i}", status=("completed", "failed")[i % 2], assistant_id=f"asst_{i // 50}x"),
            )
        ]
        sink.record(pairs)
        series = {f.name: len(f.samples) for f in reg.collect() if f.name.startswith("stepscope_")}
        for name, count in series.items():
            assert count == sink.series(name if name.endswith("_seconds") else f"{name}_total")
            assert count <= 2_000 + 30  # the budget plus the family's overflow series
        assert sum(series.values()) <= 6 * 2_030 + 15  # run queue: one unlabelled histogram
        assert len(generate_latest(reg)) < 1_000_000  # OpenMetrics, with exemplars
        assert len(prometheus_text(reg)) < 1_000_000
        assert _counted_steps(reg) == 20_000 + 1 + 2_500
        assert len(reasons) == sink.overflows > 10_000


class TestProtocols:
    def test_agents_observations_keep_their_protocol_and_known_values(self) -> None:
        """Turns and items land beside runs and steps under protocol="agents"; item types, item statuses, `turn` and
        the nameless tool items pass a full cap as known values."""
        reg = CollectorRegistry()
        sink = PrometheusMetrics(reg, labels=LABELS, label_cap=1)
        sink.record(run_observations(make_run()))  # fills the assistant_id and model caps
        pair = {"model": "gpt-5", "assistant_id": "agent_1"}
        sink.record(
            [
                agents("stepscope_runs_total", {"status": "failed", **pair}),
                agents("stepscope_run_duration_seconds", {"status": "failed"}, 30.0),
                agents("stepscope_run_queue_seconds", {}, 2.0),
                agents("stepscope_tokens_total", {"token_type": "input", "step_type": "turn", **pair}, 120.0),
                agents("stepscope_run_steps_total", {"step_type": "function_call", "status": "in_progress", **pair}),
                agents(
                    "stepscope_run_steps_total", {"step_type": "create_subagent_call", "status": "incomplete", **pair}
                ),
                agents("stepscope_tool_calls_total", {"tool_type": "extension", "tool_name": "command_execution"}),
                agents("stepscope_tool_calls_total", {"tool_type": "extension", "tool_name": "web_search_call"}),
            ]
        )
        other = {"model": "_other", "assistant_id": "_other", "protocol": "agents"}
        assert sample(reg, "stepscope_runs_total", status="failed", **other) == 1
        assert sample(reg, "stepscope_runs_total", status="failed", **{**other, "protocol": "assistants"}) is None
        assert sample(reg, "stepscope_run_duration_seconds_sum", status="failed", protocol="agents") == 30
        assert sample(reg, "stepscope_run_queue_seconds_sum", protocol="agents") == 2
        assert sample(reg, "stepscope_run_queue_seconds_sum") == 2  # Assistants' own series
        assert sample(reg, "stepscope_tokens_total", token_type="input", step_type="turn", **other) == 120
        steps = "stepscope_run_steps_total"
        assert sample(reg, steps, step_type="function_call", status="in_progress", **other) == 1
        assert sample(reg, steps, step_type="create_subagent_call", status="incomplete", **other) == 1
        tools = {"tool_type": "extension", "protocol": "agents"}
        assert sample(reg, "stepscope_tool_calls_total", tool_name="command_execution", **tools) == 1
        assert sample(reg, "stepscope_tool_calls_total", tool_name="web_search_call", **tools) == 1
        assert sink.overflows == 4  # only the model and agent ids past the cap of 1, never the known values

    def test_known_series_exist_per_protocol(self) -> None:
        """Each protocol's run-duration statuses, queue series and known tools start at 0; the step duration is
        Assistants-only, and `protocols` limits what is created up front."""
        reg = CollectorRegistry()
        PrometheusMetrics(reg, labels=LABELS)
        for status in ("completed", "failed", "cancelled"):
            assert sample(reg, "stepscope_run_duration_seconds_count", status=status, protocol="agents") == 0
        assert sample(reg, "stepscope_run_duration_seconds_count", status="expired", protocol="agents") is None
        assert sample(reg, "stepscope_run_queue_seconds_count", protocol="agents") == 0
        for tool in ("web_search_call", "command_execution", "computer_use_call"):
            assert (
                sample(reg, "stepscope_tool_calls_total", tool_type="extension", tool_name=tool, protocol="agents") == 0
            )
        only = CollectorRegistry()
        PrometheusMetrics(only, labels=(agents_vocabulary.LABELS,))
        assert sample(only, "stepscope_run_queue_seconds_count", protocol="agents") == 0
        assert sample(only, "stepscope_run_queue_seconds_count") is None
        assert (
            sample(only, "stepscope_run_step_duration_seconds_count", step_type="tool_calls", status="failed") is None
        )

    def test_a_new_agent_pair_gets_the_turn_statuses_and_token_series(self) -> None:
        """The first turn of a model/agent pair creates its terminal turn statuses and `turn` token series at 0, not
        the Assistants-only statuses or step types, and no item series."""
        reg = CollectorRegistry()
        ids = {"model": "gpt-5", "assistant_id": "agent_1"}
        PrometheusMetrics(reg, labels=LABELS).record(
            [
                agents("stepscope_runs_total", {"status": "completed", **ids}),
                agents("stepscope_tokens_total", {"token_type": "input", "step_type": "turn", **ids}, 5.0),
                agents("stepscope_run_steps_total", {"step_type": "message", "status": "completed", **ids}),
            ]
        )
        pair = {**ids, "protocol": "agents"}
        assert sample(reg, "stepscope_runs_total", status="failed", **pair) == 0
        assert sample(reg, "stepscope_runs_total", status="cancelled", **pair) == 0
        assert sample(reg, "stepscope_runs_total", status="expired", **pair) is None
        assert sample(reg, "stepscope_tokens_total", token_type="output", step_type="turn", **pair) == 0
        assert sample(reg, "stepscope_tokens_total", token_type="input", step_type="tool_calls", **pair) is None
        assert sample(reg, "stepscope_run_steps_total", step_type="message", status="failed", **pair) is None

    def test_the_overflow_series_keeps_the_protocol(self) -> None:
        """Past the budget, each protocol's new label sets fold into an overflow series of that protocol."""
        reg = CollectorRegistry()
        sink = PrometheusMetrics(reg, labels=LABELS, max_series=1)
        sink.record(run_observations(make_run()))
        sink.record(
            [agents("stepscope_runs_total", {"status": "completed", "model": "gpt-5", "assistant_id": "agent_1"})]
        )
        folded = {"status": "_other", "model": "_other", "assistant_id": "_other"}
        assert sample(reg, "stepscope_runs_total", **folded) == 1
        assert sample(reg, "stepscope_runs_total", **folded, protocol="agents") == 1
        assert sink.series("stepscope_runs_total") == 4


class TestExemplars:
    def test_openmetrics_exemplars(self) -> None:
        """Counters and histogram buckets carry trace_id/span_id exemplars in OpenMetrics output."""
        reg = CollectorRegistry()
        run = make_run()
        obs = step_observations(run, make_step())
        PrometheusMetrics(reg, labels=LABELS).record(obs)
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
        observations.append(Observation("stepscope_run_queue_seconds", {"protocol": "assistants"}, 0.3))  # no ids
        observations.append(Observation("stepscope_runs_total", {"status": "expired", "model": "m"}, 1.0))  # bad
        batched, single = CollectorRegistry(), CollectorRegistry()
        PrometheusMetrics(batched, labels=LABELS).record(observations)
        one_by_one = PrometheusMetrics(single, labels=LABELS)
        for obs in observations:
            one_by_one.record([obs])
        assert _exposition(batched) == _exposition(single)
        assert sum(" # {" in line for line in _exposition(batched)) > 10
