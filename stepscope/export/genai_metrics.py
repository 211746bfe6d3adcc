"""Observations as OpenTelemetry instruments: the GenAI conventions' and stepscope's own, one `MetricSink`.

`GenAiMetrics` records the observations the pipeline hands every sink, right after their commit, into instruments
of one SDK `Meter` (`export/otlp_metrics.py` owns the provider and its reader):

- stepscope's domain families under `stepscope.*` names (`STEPSCOPE_INSTRUMENTS`), with the Prometheus labels as
  attributes and the Prometheus buckets, named so that Prometheus's OTLP translation gives back the /metrics names
  (`stepscope.runs` with unit `{run}` becomes `stepscope_runs_total`): every observation lands in both, so the sums
  are the same;
- the conventions' instruments (`GEN_AI_INSTRUMENTS`), chosen by what an observation carries, never by protocol:
  a unit's duration observation whose `gen_ai.operation.name` is `invoke_agent` goes to `gen_ai.invoke_agent.duration`,
  any other operation (`chat`, ...) to `gen_ai.client.operation.duration`; a tool call with `duration_s` to
  `gen_ai.execute_tool.duration`; the input and output token observations of one call (one commit) are summed per
  unit (trace id) into one `gen_ai.client.token.usage` record each. With `latest_experimental`
  (`OTEL_SEMCONV_STABILITY_OPT_IN=gen_ai_latest_experimental`) the newest conventions' token counters
  (`LATEST_TOKEN_INSTRUMENTS`) replace that histogram; a finished unit whose commit carried no usage adds 0 to the
  input and output counters, as they ask.

Attributes are bounded as the Prometheus labels are: every server-valued label and attribute goes through a
`LabelCap` of `export/prometheus.py` (`gen_ai.request.model` shares the `model` cap, `gen_ai.agent.id` the
`assistant_id` one; `gen_ai.agent.name` and `error.type` have caps of their own of the same size). Only the
conventions' attribute keys listed in `UNIT_KEYS` are copied from an observation, so ids never become attributes.
The rewrites are not counted again: the Prometheus sink counts each one as `label_cap`. Exemplars: each record
carries the observation's trace and span id as its context, so the SDK's trace-based exemplar filter samples it.
`record` never raises; an observation it cannot record is skipped and logged once per metric.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from opentelemetry.context import Context
from opentelemetry.metrics import Meter
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, set_span_in_context

from stepscope.contract import metricdefs as md
from stepscope.core.records import KnownLabels, Observation
from stepscope.export.prometheus import QUEUE_BUCKETS, RUN_DURATION_BUCKETS, STEP_DURATION_BUCKETS, LabelCap, label_caps
from stepscope.mapping import attributes as a

log = logging.getLogger(__name__)

Kind = Literal["counter", "histogram", "gauge"]

CLIENT_DURATION_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92)
"""Seconds: the conventions' advice for `gen_ai.client.operation.duration`."""
AGENT_DURATION_BUCKETS = (0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 12.8, 25.6, 51.2, 102.4, 204.8, 409.6)
"""Seconds: agent invocations and tool calls last seconds to minutes (runs expire after 10), timed to the second."""
TOKEN_BUCKETS = tuple(float(4**k) for k in range(14))
"""Tokens: 1, 4, 16, ... 67108864, the conventions' advice for `gen_ai.client.token.usage`."""

GEN_AI_TOKEN_TYPE = "gen_ai.token.type"  # noqa: S105 - an attribute key, not a credential
GEN_AI_TOKEN_MODALITY = "gen_ai.token.modality"  # noqa: S105
MODALITY_UNKNOWN = "unknown"  # none of the APIs breaks usage down by modality
UNIT_KEYS = (
    a.GEN_AI_OPERATION_NAME,
    a.GEN_AI_PROVIDER_NAME,
    a.GEN_AI_AGENT_ID,
    a.GEN_AI_AGENT_NAME,
    a.GEN_AI_REQUEST_MODEL,
    a.ERROR_TYPE,
)
"""The conventions' attributes an observation may carry for the instruments; any other key is ignored."""
_AGENT_ONLY = frozenset({a.GEN_AI_AGENT_ID, a.GEN_AI_AGENT_NAME})  # not on client operations or token usage


@dataclass(frozen=True, slots=True)
class Instrument:
    """One OTLP instrument as exported: name, kind, unit, description, explicit bucket boundaries (histograms),
    and `source`, where its definition comes from."""

    name: str
    kind: Kind
    unit: str
    description: str
    buckets: tuple[float, ...] = ()
    source: str = "stepscope"


_V141 = "GenAI conventions v1.41.1, gen-ai-metrics.md"
_NEWEST = "semantic-conventions-genai, gen-ai-token-metrics.md (066d4a7f)"
INVOKE_AGENT_DURATION = Instrument(
    "gen_ai.invoke_agent.duration",
    "histogram",
    "s",
    "The end-to-end duration of a single agent invocation.",
    AGENT_DURATION_BUCKETS,
    _V141,
)
CLIENT_OPERATION_DURATION = Instrument(
    "gen_ai.client.operation.duration", "histogram", "s", "GenAI operation duration.", CLIENT_DURATION_BUCKETS, _V141
)
EXECUTE_TOOL_DURATION = Instrument(
    "gen_ai.execute_tool.duration",
    "histogram",
    "s",
    "The duration of a single tool execution.",
    AGENT_DURATION_BUCKETS,
    _V141,
)
TOKEN_USAGE = Instrument(
    "gen_ai.client.token.usage", "histogram", "{token}", "Number of input and output tokens used.", TOKEN_BUCKETS, _V141
)
GEN_AI_INSTRUMENTS = (INVOKE_AGENT_DURATION, CLIENT_OPERATION_DURATION, EXECUTE_TOOL_DURATION, TOKEN_USAGE)
LATEST_TOKEN_INSTRUMENTS: dict[str, Instrument] = {
    token_type: Instrument(f"gen_ai.client.inference.usage.{name}", "counter", "{token}", text, (), _NEWEST)
    for token_type, name, text in (
        (a.TOKEN_INPUT, "input_tokens", "The number of input (prompt) tokens used, including cached tokens."),
        (a.TOKEN_OUTPUT, "output_tokens", "The number of output (completion) tokens used, including reasoning."),
        (
            a.TOKEN_CACHE_READ,
            "cache_read.input_tokens",
            "The number of input tokens served from a provider-managed cache.",
        ),
        (a.TOKEN_REASONING, "reasoning.output_tokens", "The number of output tokens used for reasoning."),
    )
}
"""`token_type` label -> the newest conventions' counter it adds to (`OTEL_SEMCONV_STABILITY_OPT_IN`)."""

_DOMAIN = (
    (md.RUN_STEPS, "stepscope.run_steps", "{step}", ()),
    (md.TOKENS, "stepscope.tokens", "{token}", ()),
    (md.RUNS, "stepscope.runs", "{run}", ()),
    (md.RUN_STEP_DURATION, "stepscope.run_step.duration", "s", STEP_DURATION_BUCKETS),
    (md.RUN_DURATION, "stepscope.run.duration", "s", RUN_DURATION_BUCKETS),
    (md.RUN_QUEUE, "stepscope.run.queue", "s", QUEUE_BUCKETS),
    (md.TOOL_CALLS, "stepscope.tool_calls", "{call}", ()),
)
STEPSCOPE_INSTRUMENTS: dict[str, Instrument] = {
    d.name: Instrument(name, d.kind, unit, d.help, buckets, d.name) for d, name, unit, buckets in _DOMAIN
}
"""Domain `MetricDef` name -> its `stepscope.*` instrument (the same kind, labels and buckets)."""


_UNIT_SUFFIXES = {"s": "seconds", "By": "bytes"}  # the units used here; one in braces adds nothing


def prometheus_name(instrument: Instrument) -> str:
    """The name Prometheus's OTLP translation (`UnderscoreEscapingWithSuffixes`, its default) gives an instrument:
    dots become underscores, a unit in braces is dropped, `s` adds `_seconds`, a counter adds `_total`."""
    name = instrument.name.replace(".", "_")
    unit = _UNIT_SUFFIXES.get(instrument.unit, "")
    if unit and not name.endswith(f"_{unit}"):
        name += f"_{unit}"
    return f"{name}_total" if instrument.kind == "counter" else name


class GenAiMetrics:
    """The `MetricSink` of the module docstring on `meter`. `label_cap` and `labels` are the Prometheus sink's
    (`STEPSCOPE_LABEL_CAP`, the protocols' known values). Call `record` from one thread (the event loop)."""

    def __init__(
        self,
        meter: Meter,
        *,
        label_cap: int = 100,
        labels: Sequence[KnownLabels] = (),
        latest_experimental: bool = False,
    ) -> None:
        self._caps = label_caps(label_cap, labels)
        self._attribute_caps = {
            a.GEN_AI_REQUEST_MODEL: self._caps[a.LABEL_MODEL],
            a.GEN_AI_AGENT_ID: self._caps[a.LABEL_ASSISTANT_ID],
            a.GEN_AI_AGENT_NAME: LabelCap(label_cap, frozenset()),
            a.ERROR_TYPE: LabelCap(label_cap, frozenset()),
        }
        self._latest = latest_experimental
        self._families: dict[str, tuple[Any, tuple[str, ...], bool]] = {}
        for definition in md.DOMAIN_METRICS:
            instrument = STEPSCOPE_INSTRUMENTS.get(definition.name)
            if instrument is not None:  # a family without one (a unit test says so) is left out, not fatal
                made = make_instrument(meter, instrument)
                self._families[definition.name] = (made, definition.labels, definition.kind == "counter")
        self._invoke_agent = make_instrument(meter, INVOKE_AGENT_DURATION)
        self._client_operation = make_instrument(meter, CLIENT_OPERATION_DURATION)
        self._execute_tool = make_instrument(meter, EXECUTE_TOOL_DURATION)
        self._token_usage = None if latest_experimental else make_instrument(meter, TOKEN_USAGE)
        self._token_counters = (
            {t: make_instrument(meter, i) for t, i in LATEST_TOKEN_INSTRUMENTS.items()} if latest_experimental else {}
        )
        self._warned: set[str] = set()

    def record(self, observations: Sequence[Observation]) -> None:
        """Record every observation (see the module docstring); the pipeline calls it once per commit."""
        batch = _Batch()
        for obs in observations:
            try:
                self._record(obs, batch)
            except Exception as exc:
                self._warn(obs.metric, exc)
        try:
            self._flush(batch)
        except Exception as exc:
            self._warn(TOKEN_USAGE.name, exc)

    def _record(self, obs: Observation, batch: _Batch) -> None:
        instrument, names, counter = self._families[obs.metric]
        labels = obs.labels
        attrs = {name: self._cap(name, labels[name]) for name in names}
        context = batch.context(obs)
        if counter:
            if obs.value < 0:
                raise ValueError("Counters can only be incremented by non-negative amounts.")
            instrument.add(obs.value, attrs, context=context)
        else:
            instrument.record(obs.value, attrs, context=context)
        if obs.metric == md.RUN_DURATION.name:
            self._duration(obs, context)
        elif obs.metric == md.TOKENS.name:
            self._tokens(obs, labels[a.LABEL_TOKEN_TYPE], batch)
        elif obs.metric == md.RUNS.name and obs.attributes.get(a.GEN_AI_OPERATION_NAME):
            batch.units[obs.trace_id] = obs
        elif obs.metric == md.TOOL_CALLS.name and obs.duration_s is not None:
            tool = {a.GEN_AI_TOOL_NAME: attrs[a.LABEL_TOOL_NAME], a.GEN_AI_TOOL_TYPE: attrs[a.LABEL_TOOL_TYPE]}
            tool.update(self._unit_attributes(obs, keys=(a.ERROR_TYPE,)))
            self._execute_tool.record(max(0.0, obs.duration_s), tool, context=context)

    def _duration(self, obs: Observation, context: Context | None) -> None:
        """A unit's duration in the conventions' histogram its operation names; none without an operation."""
        operation = obs.attributes.get(a.GEN_AI_OPERATION_NAME)
        if not operation:
            return
        if operation == a.OPERATION_INVOKE_AGENT:
            self._invoke_agent.record(obs.value, self._unit_attributes(obs), context=context)
        else:
            attrs = self._unit_attributes(obs, keys=tuple(k for k in UNIT_KEYS if k not in _AGENT_ONLY))
            self._client_operation.record(obs.value, attrs, context=context)

    def _tokens(self, obs: Observation, token_type: str, batch: _Batch) -> None:
        if not obs.attributes.get(a.GEN_AI_OPERATION_NAME):
            return
        keys = (a.GEN_AI_OPERATION_NAME, a.GEN_AI_PROVIDER_NAME, a.GEN_AI_REQUEST_MODEL)
        attrs = self._unit_attributes(obs, keys=keys)
        batch.with_tokens.add(obs.trace_id)
        if self._latest:
            counter = self._token_counters.get(token_type)
            if counter is not None:
                counter.add(obs.value, {**attrs, GEN_AI_TOKEN_MODALITY: MODALITY_UNKNOWN}, context=batch.context(obs))
        elif token_type in a.TOKEN_TYPES:
            batch.add_usage(obs, {**attrs, GEN_AI_TOKEN_TYPE: token_type})

    def _flush(self, batch: _Batch) -> None:
        """One `gen_ai.client.token.usage` record per unit and token type of this commit; with the newest
        conventions, 0 for each finished unit whose commit carried no usage."""
        if self._token_usage is not None:
            for total, attrs, obs in batch.usage.values():
                self._token_usage.record(total, attrs, context=batch.context(obs))
        if self._latest:
            keys = (a.GEN_AI_OPERATION_NAME, a.GEN_AI_PROVIDER_NAME, a.GEN_AI_REQUEST_MODEL)
            for trace_id, obs in batch.units.items():
                if trace_id not in batch.with_tokens:
                    attrs = {**self._unit_attributes(obs, keys=keys), GEN_AI_TOKEN_MODALITY: MODALITY_UNKNOWN}
                    for token_type in a.TOKEN_TYPES:
                        self._token_counters[token_type].add(0, attrs, context=batch.context(obs))

    def _unit_attributes(self, obs: Observation, *, keys: Sequence[str] = UNIT_KEYS) -> dict[str, str]:
        """The conventions' attributes among `keys` that `obs` carries, server-valued ones capped."""
        out: dict[str, str] = {}
        for key in keys:
            value = obs.attributes.get(key)
            if value is None or value == "":
                continue
            text = str(value)
            cap = self._attribute_caps.get(key)
            out[key] = cap(text) if cap is not None else text
        return out

    def _cap(self, label: str, value: str) -> str:
        cap = self._caps.get(label)
        return cap(value) if cap is not None else value

    def _warn(self, metric: str, exc: Exception) -> None:
        if metric not in self._warned:
            self._warned.add(metric)
            log.error("cannot record observation of %s over OTLP; skipping such observations", metric, exc_info=exc)


class _Batch:
    """What one `record` call gathers across its observations: token sums per unit, finished units, contexts."""

    __slots__ = ("_contexts", "units", "usage", "with_tokens")

    def __init__(self) -> None:
        self.usage: dict[tuple[Any, ...], tuple[float, dict[str, str], Observation]] = {}
        self.units: dict[int | None, Observation] = {}
        self.with_tokens: set[int | None] = set()
        self._contexts: dict[tuple[int, int], Context] = {}

    def add_usage(self, obs: Observation, attrs: dict[str, str]) -> None:
        key = (obs.trace_id, *sorted(attrs.items()))
        found = self.usage.get(key)
        self.usage[key] = (obs.value + (found[0] if found else 0.0), attrs, obs)

    def context(self, obs: Observation) -> Context | None:
        """A context whose current span is the observation's (sampled), so the SDK's exemplar carries its ids."""
        if obs.trace_id is None or obs.span_id is None:
            return None
        key = (obs.trace_id, obs.span_id)
        found = self._contexts.get(key)
        if found is None:
            span = SpanContext(obs.trace_id, obs.span_id, is_remote=False, trace_flags=TraceFlags(TraceFlags.SAMPLED))
            found = self._contexts[key] = set_span_in_context(NonRecordingSpan(span))
        return found


def make_instrument(meter: Meter, instrument: Instrument) -> Any:
    """`instrument` made on `meter`: a counter, or a histogram with its bucket boundaries as advice."""
    if instrument.kind == "counter":
        return meter.create_counter(instrument.name, unit=instrument.unit, description=instrument.description)
    return meter.create_histogram(
        instrument.name,
        unit=instrument.unit,
        description=instrument.description,
        explicit_bucket_boundaries_advisory=list(instrument.buckets),
    )
