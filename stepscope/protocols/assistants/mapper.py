"""The Assistants protocol's `Mapper`: a terminal step, or a finished run, to its telemetry.

A thin adapter over `spans.py` and `metrics.py`, so the pipeline can map any protocol's commits the same way: it
calls `record` for each newly terminal step and `finish` once for the run, whose finish context is the
assistant's name (or None, when it could not be read: the span then names the assistant id).
"""

from __future__ import annotations

from dataclasses import dataclass

from stepscope.core.records import Telemetry
from stepscope.mapping.attributes import MappingOptions
from stepscope.protocols.assistants.observations import run_observations, step_observations
from stepscope.protocols.assistants.records import Run, RunStep
from stepscope.protocols.assistants.spans import run_span, step_spans


@dataclass(frozen=True, slots=True)
class AssistantsMapper:
    options: MappingOptions

    def record(self, unit: Run, record: RunStep) -> Telemetry:
        """A step span with one child per tool call, and the step's observations carrying their ids as exemplars."""
        specs = step_spans(unit, record, options=self.options)
        call_ids = [spec.span_id for spec in specs[1:]] if len(specs) > 1 else None
        provider = self.options.provider_name
        observations = step_observations(unit, record, span_id=specs[0].span_id, call_span_ids=call_ids,
                                         provider=provider)  # fmt: skip
        return Telemetry(specs, observations)

    def finish(self, unit: Run, finish: str | None) -> Telemetry:
        """The run span (named after the assistant `finish`, else its id) and the run's observations."""
        spec = run_span(unit, assistant_name=finish, options=self.options)
        provider = self.options.provider_name
        return Telemetry((spec,), run_observations(unit, span_id=spec.span_id, provider=provider, agent_name=finish))
