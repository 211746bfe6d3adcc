"""The OTLP sink's instruments, read back through the SDK's `InMemoryMetricReader`: names, units, buckets,
attributes, exemplars, one token record per unit and commit, the newest token counters, and the same sums and caps as
the Prometheus sink."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from prometheus_client import CollectorRegistry

from stepscope.client.parsing import TokenUsage
from stepscope.contract import metricdefs as md
from stepscope.core.records import Observation
from stepscope.export.genai_metrics import (
    AGENT_DURATION_BUCKETS,
    CLIENT_DURATION_BUCKETS,
    GEN_AI_INSTRUMENTS,
    LATEST_TOKEN_INSTRUMENTS,
    STEPSCOPE_INSTRUMENTS,
    TOKEN_BUCKETS,
    GenAiMetrics,
    prometheus_name,
)
from stepscope.export.otlp_metrics import SELF_INSTRUMENTS, FanOut
from stepscope.export.prometheus import PrometheusMetrics
from stepscope.mapping.ids import span_id_for, trace_id_for_run
from stepscope.mapping.metrics import run_family_observations, token_observations, unit_attributes
from stepscope.mapping.spans import Tokens
from stepscope.protocols.agents.mapping import TurnContext, trace_id_for_turn, turn_observations, turn_span_id
from stepscope.protocols.agents.records import Item, Turn, TurnError
from stepscope.protocols.assistants.observations import run_observations, step_observations
from stepscope.protocols.assistants.records import LastError, ToolCall, Usage
from tests.kit.contract import REPO
from tests.kit.samples import make_run, make_step

Point = tuple[str, str, dict[str, Any], Any]  # metric name, unit, attributes, data point


def _sink(*, latest: bool = False, label_cap: int = 100) -> tuple[GenAiMetrics, InMemoryMetricReader]:
    reader = InMemoryMetricReader()
    meter = MeterProvider(metric_readers=[reader], shutdown_on_exit=False).get_meter("test")
    return GenAiMetrics(meter, label_cap=label_cap, latest_experimental=latest), reader


def _points(reader: InMemoryMetricReader) -> Iterator[Point]:
    data = reader.get_metrics_data()
    for rm in data.resource_metrics if data is not None else ():
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                for point in metric.data.data_points:
                    yield metric.name, metric.unit or "", dict(point.attributes or {}), point


def _of(points: Sequence[Point], name: str) -> list[Point]:
    return [p for p in points if p[0] == name]


FAILED_RUN = make_run(status="failed", completed_at=None, failed_at=130, last_error=LastError("server_error", "x"))
TOOLS = make_step(type="tool_calls", usage=Usage(20, 3, 23), tool_calls=(ToolCall("c1", "function", name="lookup"),))
MESSAGE = make_step(id="step_2", usage=Usage(5, 2, 7))


def test_a_run_times_invoke_agent_with_its_attributes_and_exemplar() -> None:
    """A finished run's duration lands in gen_ai.invoke_agent.duration (seconds, the advised buckets) with the
    conventions' attributes and error.type, and an exemplar holding the run span's trace and span ids."""
    sink, reader = _sink()
    sink.record(run_observations(FAILED_RUN, provider="openai", agent_name="Helper"))
    (point,) = _of(list(_points(reader)), "gen_ai.invoke_agent.duration")
    _, unit, attrs, data = point
    assert unit == "s"
    assert tuple(data.explicit_bounds) == AGENT_DURATION_BUCKETS
    assert (data.count, data.sum) == (1, 30.0)
    assert attrs == {
        "gen_ai.operation.name": "invoke_agent",
        "gen_ai.provider.name": "openai",
        "gen_ai.agent.id": "asst_1",
        "gen_ai.agent.name": "Helper",
        "gen_ai.request.model": "gpt-4o",
        "error.type": "server_error",
    }
    (exemplar,) = data.exemplars
    assert (exemplar.trace_id, exemplar.span_id) == (trace_id_for_run("run_1"), span_id_for("run", "run_1"))


def test_a_chat_operation_times_client_operation_duration() -> None:
    """What the observation names decides the instrument: a unit whose operation is `chat` lands in
    gen_ai.client.operation.duration (its buckets, no agent attributes), not in invoke_agent."""
    attrs = unit_attributes(operation="chat", provider="openai", agent_id="a", agent_name="n", model="gpt-5")
    sink, reader = _sink()
    sink.record(run_family_observations("responses", "completed", "gpt-5", "a", (10, 11, 13), trace_id=1, span_id=2,
                                        attributes=attrs))  # fmt: skip
    points = list(_points(reader))
    assert not _of(points, "gen_ai.invoke_agent.duration")
    ((_, unit, got, data),) = _of(points, "gen_ai.client.operation.duration")
    assert (unit, tuple(data.explicit_bounds), data.sum) == ("s", CLIENT_DURATION_BUCKETS, 3.0)
    assert got == {"gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai", "gen_ai.request.model": "gpt-5"}


def test_tool_calls_with_a_duration_time_execute_tool() -> None:
    """An Assistants tool call is timed as its step, an Agents tool item by its duration_ms; an item without one is
    counted but not timed, and a failed one says error.type _OTHER."""
    sink, reader = _sink()
    sink.record(step_observations(make_run(), TOOLS))
    turn = Turn(id="turn_1", session_id="s", agent_id="agent_1", status="completed", created_at=1, completed_at=9)
    items = (
        Item("command_execution", "ce_1", status="failed", duration_ms=1500),
        Item("function_call", "fc_1", name="f", status="completed"),
    )
    sink.record(turn_observations(turn, TurnContext(items=items)))
    points = list(_points(reader))
    timed = {(p[2]["gen_ai.tool.name"], p[2]["gen_ai.tool.type"], p[2].get("error.type"), p[3].sum) for p in
             _of(points, "gen_ai.execute_tool.duration")}  # fmt: skip
    assert timed == {("lookup", "function", None, 2.0), ("command_execution", "extension", "_OTHER", 1.5)}
    assert sum(p[3].value for p in _of(points, "stepscope.tool_calls")) == 3


def test_token_usage_is_one_record_per_unit_and_commit() -> None:
    """The token observations of one commit are summed per unit into one gen_ai.client.token.usage record per
    token type; a later commit adds a record of its own, so nothing is recorded twice."""
    sink, reader = _sink()
    sink.record(step_observations(make_run(), TOOLS) + step_observations(make_run(), MESSAGE))
    usage = {p[2]["gen_ai.token.type"]: p[3] for p in _of(list(_points(reader)), "gen_ai.client.token.usage")}
    assert {t: (d.count, d.sum) for t, d in usage.items()} == {"input": (1, 25.0), "output": (1, 5.0)}
    assert tuple(usage["input"].explicit_bounds) == TOKEN_BUCKETS
    sink.record(step_observations(make_run(), make_step(id="step_3", usage=Usage(4, 1, 5))))
    usage = {p[2]["gen_ai.token.type"]: p[3] for p in _of(list(_points(reader)), "gen_ai.client.token.usage")}
    assert {t: (d.count, d.sum) for t, d in usage.items()} == {"input": (2, 29.0), "output": (2, 6.0)}
    attrs = _of(list(_points(reader)), "gen_ai.client.token.usage")[0][2]
    assert set(attrs) == {"gen_ai.operation.name", "gen_ai.provider.name", "gen_ai.request.model", "gen_ai.token.type"}


def test_units_of_different_traces_in_one_call_are_separate_records() -> None:
    """Two units' tokens handed over together are two records, not one sum."""
    attrs = unit_attributes(provider="openai")
    obs = [
        *token_observations("p", "turn", "m", "a", Tokens(input=3, output=1), trace_id=1, span_id=1, attributes=attrs),
        *token_observations("p", "turn", "m", "a", Tokens(input=5, output=1), trace_id=2, span_id=1, attributes=attrs),
    ]
    sink, reader = _sink()
    sink.record(obs)
    usage = [
        p[3] for p in _of(list(_points(reader)), "gen_ai.client.token.usage") if p[2]["gen_ai.token.type"] == "input"
    ]
    assert [(d.count, d.sum) for d in usage] == [(2, 8.0)]


def test_latest_experimental_counts_tokens_by_kind_and_zero_for_failures() -> None:
    """With the newest conventions, a turn's usage adds to the input, output, cache_read and reasoning counters
    (modality unknown) instead of the histogram, and a failed turn without usage adds 0."""
    sink, reader = _sink(latest=True)
    usage = TokenUsage(120, 30, 150, cached_tokens=100, reasoning_tokens=12)
    turn = Turn(id="t1", session_id="s", agent_id="a1", status="completed", created_at=1, completed_at=5, usage=usage)
    failed = Turn(id="t2", session_id="s", agent_id="a1", status="failed", created_at=1, completed_at=2,
                  error=TurnError("rate_limit_exceeded", "x"))  # fmt: skip
    sink.record(turn_observations(turn, TurnContext(model="gpt-5")))
    sink.record(turn_observations(failed, TurnContext(model="gpt-4")))
    points = list(_points(reader))
    assert not _of(points, "gen_ai.client.token.usage")
    names = {i.name for i in LATEST_TOKEN_INSTRUMENTS.values()}
    totals = {p[0]: p[3].value for p in points if p[0] in names and p[2]["gen_ai.request.model"] == "gpt-5"}
    assert totals == {
        "gen_ai.client.inference.usage.input_tokens": 120,
        "gen_ai.client.inference.usage.output_tokens": 30,
        "gen_ai.client.inference.usage.cache_read.input_tokens": 100,
        "gen_ai.client.inference.usage.reasoning.output_tokens": 12,
    }
    zeros = {p[0]: p[3].value for p in points if p[0] in names and p[2]["gen_ai.request.model"] == "gpt-4"}
    assert zeros == {"gen_ai.client.inference.usage.input_tokens": 0, "gen_ai.client.inference.usage.output_tokens": 0}
    inputs = _of(points, "gen_ai.client.inference.usage.input_tokens")
    assert {p[2]["gen_ai.token.modality"] for p in inputs} == {"unknown"}
    assert all(p[1] == "{token}" for p in inputs)
    zero = next(p[3] for p in inputs if p[2]["gen_ai.request.model"] == "gpt-4")
    assert [(e.trace_id, e.span_id) for e in zero.exemplars] == [(trace_id_for_turn("t2"), turn_span_id("t2"))]


def test_sums_and_caps_equal_the_prometheus_sinks() -> None:
    """Fed the same observations through FanOut, the stepscope.* counters hold the same label sets and sums as the
    Prometheus families, values past the label cap reading _other in both."""
    registry = CollectorRegistry()
    prometheus = PrometheusMetrics(registry, label_cap=2)
    sink, reader = _sink(label_cap=2)
    fan = FanOut(prometheus, sink)
    for i in range(5):
        run = make_run(id=f"run_{i}", model=f"model-{i}")
        fan.record(
            step_observations(run, make_step(run, id=f"s{i}", usage=Usage(i + 1, 1, i + 2))) + run_observations(run)
        )
    scraped = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in registry.collect()
        for s in family.samples
        if s.name in ("stepscope_tokens_total", "stepscope_runs_total")
    }
    exported = {
        (prometheus_name(STEPSCOPE_INSTRUMENTS[metric]), tuple(sorted(p[2].items()))): p[3].value
        for p in _points(reader)
        for metric in ("stepscope_tokens_total", "stepscope_runs_total")
        if p[0] == STEPSCOPE_INSTRUMENTS[metric].name
    }
    assert exported == scraped
    assert any(dict(labels).get("model") == "_other" for _, labels in exported)


def test_only_the_conventions_keys_become_attributes() -> None:
    """Keys an observation carries beyond the conventions' unit attributes (ids above all) never reach an
    instrument, and a bad observation is skipped while the rest are recorded."""
    attrs = {**unit_attributes(provider="openai"), "openai.run.id": "run_9", "gen_ai.conversation.id": "thread_9"}
    obs = run_family_observations("p", "completed", "m", "a", (1, None, 3), trace_id=1, span_id=1, attributes=attrs)
    bad = Observation("stepscope_runs_total", {"status": "x"}, 1.0)  # labels missing
    sink, reader = _sink()
    sink.record([bad, *obs])
    values = {str(v) for p in _points(reader) for v in p[2].values()}
    assert "run_9" not in values and "thread_9" not in values
    assert sum(p[3].value for p in _of(list(_points(reader)), "stepscope.runs")) == 1


@pytest.mark.parametrize("instrument", [*STEPSCOPE_INSTRUMENTS.values(), *SELF_INSTRUMENTS.values()], ids=str)
def test_stepscope_instruments_translate_to_the_metrics_names(instrument: Any) -> None:
    """Prometheus's OTLP translation of each stepscope.* instrument gives back its /metrics name, so dashboards and
    rules read an OTLP-only Prometheus the same way."""
    assert instrument.name.startswith("stepscope.")
    assert prometheus_name(instrument) == instrument.source


def test_conventions_instruments_translate_as_documented() -> None:
    """The gen_ai.* instruments translate to the names docs/otlp-metrics.md lists."""
    names = {i.name: prometheus_name(i) for i in (*GEN_AI_INSTRUMENTS, *LATEST_TOKEN_INSTRUMENTS.values())}
    assert names["gen_ai.client.token.usage"] == "gen_ai_client_token_usage"
    assert names["gen_ai.invoke_agent.duration"] == "gen_ai_invoke_agent_duration_seconds"
    assert names["gen_ai.client.inference.usage.input_tokens"] == "gen_ai_client_inference_usage_input_tokens_total"


def test_docs_list_every_instrument_with_its_prometheus_name() -> None:
    """docs/otlp-metrics.md has a row for each conventions instrument naming its Prometheus translation, and names
    every stepscope.* instrument."""
    text = (REPO / "docs" / "otlp-metrics.md").read_text(encoding="utf-8")
    rows = {line.split("|")[1].strip(" `"): line for line in text.splitlines() if line.startswith("| `gen_ai.")}
    for instrument in (*GEN_AI_INSTRUMENTS, *LATEST_TOKEN_INSTRUMENTS.values()):
        assert f"`{prometheus_name(instrument)}`" in rows[instrument.name], instrument.name
    for instrument in (*STEPSCOPE_INSTRUMENTS.values(), *SELF_INSTRUMENTS.values()):
        assert f"`{instrument.name}`" in text and f"`{instrument.source}`" in text, instrument.name


def test_every_metric_has_its_otlp_instrument() -> None:
    """Each domain family has its stepscope.* instrument, and each health counter or gauge its observable one; only
    the two health histograms stay on /metrics alone."""
    assert {d.name for d in md.DOMAIN_METRICS} == set(STEPSCOPE_INSTRUMENTS)
    missing = {d.name for d in md.SELF_METRICS} - set(SELF_INSTRUMENTS)
    assert missing == {md.API_REQUEST_DURATION.name, md.EXPORT_LAG.name}
    for name, instrument in SELF_INSTRUMENTS.items():
        definition = md.by_name(name)
        assert definition is not None and definition.kind == instrument.kind, name
