"""Runs and steps as metric observations: exact expected output."""

from __future__ import annotations

from functools import partial

from stepscope.core.records import Observation
from stepscope.mapping.ids import span_id_for, trace_id_for_run
from stepscope.protocols.assistants.observations import run_observations, step_observations
from stepscope.protocols.assistants.records import LastError, ToolCall, Usage
from tests.kit import samples

TRACE = trace_id_for_run("run_1")
STEP_SPAN = span_id_for("step", "step_1")
RUN_SPAN = span_id_for("run", "run_1")
ASSISTANTS = {"protocol": "assistants"}
# The conventions' attributes the OTLP sink reads: on a run's own observations and on its tokens.
GEN_AI = {
    "gen_ai.operation.name": "invoke_agent",
    "gen_ai.provider.name": "openai",
    "gen_ai.agent.id": "asst_1",
    "gen_ai.request.model": "gpt-4o",
}


make_run = partial(samples.make_run, usage=Usage(500, 70, 570))

make_step = partial(
    samples.make_step,
    type="tool_calls",
    usage=Usage(20, 3, 23),
    tool_calls=(ToolCall("call_1", "function", name="get_weather"), ToolCall("call_2", "file_search")),
)


class TestStepObservations:
    def test_tool_calls_step(self) -> None:
        """A terminal tool_calls step counts once, adds its own tokens, its duration and one count per call; all but
        the duration say protocol="assistants"."""
        labels4 = {"step_type": "tool_calls", "status": "completed", "model": "gpt-4o", "assistant_id": "asst_1"}
        labels4 |= ASSISTANTS
        tok = {"step_type": "tool_calls", "model": "gpt-4o", "assistant_id": "asst_1", **ASSISTANTS}
        assert step_observations(make_run(), make_step(), span_id=STEP_SPAN) == [
            Observation("stepscope_run_steps_total", labels4, 1.0, TRACE, STEP_SPAN),
            Observation("stepscope_tokens_total", {"token_type": "input", **tok}, 20.0, TRACE, STEP_SPAN, GEN_AI),
            Observation("stepscope_tokens_total", {"token_type": "output", **tok}, 3.0, TRACE, STEP_SPAN, GEN_AI),
            Observation(
                "stepscope_run_step_duration_seconds",
                {"step_type": "tool_calls", "status": "completed"},
                2.0,
                TRACE,
                STEP_SPAN,
            ),
            Observation(
                "stepscope_tool_calls_total",
                {"tool_type": "function", "tool_name": "get_weather", **ASSISTANTS},
                1.0,
                TRACE,
                span_id_for("call", "step_1", "call_1"),
                duration_s=2.0,
            ),
            Observation(
                "stepscope_tool_calls_total",
                {"tool_type": "datastore", "tool_name": "file_search", **ASSISTANTS},
                1.0,
                TRACE,
                span_id_for("call", "step_1", "call_2"),
                duration_s=2.0,
            ),
        ]

    def test_no_usage_no_tokens(self) -> None:
        """A step without usage adds no token observations, and run usage is never used instead."""
        obs = step_observations(make_run(), make_step(usage=None, tool_calls=()))
        assert [o.metric for o in obs] == ["stepscope_run_steps_total", "stepscope_run_step_duration_seconds"]

    def test_defaults_and_unknown_model(self) -> None:
        """The span id defaults to the step span's; a run without model reads _unknown."""
        obs = step_observations(make_run(model=None), make_step(tool_calls=()))
        assert obs[0].span_id == STEP_SPAN
        assert obs[0].labels["model"] == "_unknown"

    def test_no_end_no_duration(self) -> None:
        """A step without a terminal timestamp contributes no duration."""
        obs = step_observations(make_run(), make_step(status="weird", completed_at=None, usage=None, tool_calls=()))
        assert [o.metric for o in obs] == ["stepscope_run_steps_total"]
        assert obs[0].labels["status"] == "weird"

    def test_given_call_span_ids_match_derived_ones(self) -> None:
        """Tool-call span ids passed in (as step_spans computed them) give the same observations as deriving them."""
        step = make_step(tool_calls=(ToolCall("call_1", "function", name="f"), ToolCall("call_2", "function")))
        ids = [span_id_for("call", step.id, "call_1"), span_id_for("call", step.id, "call_2")]
        assert step_observations(make_run(), step, call_span_ids=ids) == step_observations(make_run(), step)
        given = step_observations(make_run(), step, call_span_ids=[7, 8])
        assert [o.span_id for o in given if o.metric == "stepscope_tool_calls_total"] == [7, 8]
        wrong_length = step_observations(make_run(), step, call_span_ids=[7])
        assert [o.span_id for o in wrong_length if o.metric == "stepscope_tool_calls_total"] == ids


class TestRunObservations:
    def test_completed_run(self) -> None:
        """A finished run counts once and observes its duration and queue time, with protocol="assistants"; it adds
        no tokens."""
        assert run_observations(make_run()) == [
            Observation(
                "stepscope_runs_total",
                {"status": "completed", "model": "gpt-4o", "assistant_id": "asst_1", **ASSISTANTS},
                1.0,
                TRACE,
                RUN_SPAN,
                GEN_AI,
            ),
            Observation(
                "stepscope_run_duration_seconds", {"status": "completed", **ASSISTANTS}, 30.0, TRACE, RUN_SPAN, GEN_AI
            ),
            Observation("stepscope_run_queue_seconds", ASSISTANTS, 2.0, TRACE, RUN_SPAN),
        ]

    def test_never_started_expired_run(self) -> None:
        """A run that expired in the queue has no queue-time observation."""
        run = make_run(status="expired", started_at=None, completed_at=None, expires_at=700, model=None)
        obs = run_observations(run, span_id=7)
        assert [(o.metric, o.value, o.span_id) for o in obs] == [
            ("stepscope_runs_total", 1.0, 7),
            ("stepscope_run_duration_seconds", 600.0, 7),
        ]
        assert obs[0].labels == {"status": "expired", "model": "_unknown", "assistant_id": "asst_1", **ASSISTANTS}

    def test_traceparent_run_exemplar_trace(self) -> None:
        """Exemplars of a joined run point into the application's trace."""
        run = make_run(traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
        assert {o.trace_id for o in run_observations(run)} == {0x0AF7651916CD43DD8448EB211C80319C}


class TestConventionAttributes:
    def test_failed_run_names_its_provider_agent_and_error(self) -> None:
        """A failed run's own observations carry the provider, the agent's name, the model and error.type, never a
        run, thread or step id."""
        run = make_run(status="failed", completed_at=None, failed_at=130, last_error=LastError("server_error", "x"))
        obs = run_observations(run, provider="azure.ai.agents", agent_name="Helper")
        want = {**GEN_AI, "gen_ai.provider.name": "azure.ai.agents", "gen_ai.agent.name": "Helper"}
        assert obs[0].attributes == obs[1].attributes == {**want, "error.type": "server_error"}
        assert obs[2].attributes == {}  # the queue time is not a conventions instrument
        ids = {run.id, run.thread_id}
        assert not ids & {str(v) for o in obs for v in o.attributes.values()}

    def test_failed_step_tool_calls_carry_error_and_duration(self) -> None:
        """Tool calls of a failed step carry its error.type and its duration; without an end they have none."""
        step = make_step(status="failed", completed_at=None, failed_at=107, last_error=LastError("boom", ""))
        calls = [o for o in step_observations(make_run(), step) if o.metric == "stepscope_tool_calls_total"]
        assert [(o.attributes, o.duration_s) for o in calls] == [({"error.type": "boom"}, 4.0)] * 2
        open_step = make_step(status="weird", completed_at=None)
        calls = [o for o in step_observations(make_run(), open_step) if o.metric == "stepscope_tool_calls_total"]
        assert [(o.attributes, o.duration_s) for o in calls] == [({}, None)] * 2

    def test_unknown_values_are_left_out(self) -> None:
        """A run without model or assistant carries only the operation and the provider."""
        obs = run_observations(make_run(model=None, assistant_id="_unknown"))
        assert obs[0].attributes == {"gen_ai.operation.name": "invoke_agent", "gen_ai.provider.name": "openai"}
