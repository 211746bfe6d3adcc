"""The official openai SDK (3.57.0) against the simulator over real HTTP on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest
from openai.types.beta import Assistant, FunctionToolParam, Thread
from openai.types.beta.threads import Run
from openai.types.beta.threads.runs import RunStep

from stepscope.simulator import ManualClock, Simulator, SimulatorServer, scenario_named

# The SDK marks every Assistants method deprecated (the API is replaced by Responses); the warning names our module.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

FUNCTION_TOOL: FunctionToolParam = {
    "type": "function",
    "function": {"name": "get_weather", "parameters": {"type": "object"}},
}


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def server(clock: ManualClock) -> Iterator[SimulatorServer]:
    sim = Simulator(scenario_named("quiet", step_seconds=(1.0, 2.0)), clock=clock)
    with SimulatorServer(sim) as srv:
        yield srv


@pytest.fixture
def client(server: SimulatorServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url, api_key="sk-sim", max_retries=0, timeout=10)


def _all_fields(model: type[openai.BaseModel], raw: dict[str, object]) -> None:
    obj = model.model_validate(raw)
    assert set(model.model_fields) <= set(raw), set(model.model_fields) - set(raw)
    assert obj.model_dump(exclude_unset=True).keys() == obj.model_dump().keys()


def test_assistant_thread_and_run_validate_with_every_field(client: openai.OpenAI) -> None:
    """Assistants, threads and runs created through the SDK validate and carry every SDK field."""
    asst = client.beta.assistants.create(model="gpt-4o", name="helper", tools=[FUNCTION_TOOL])
    thread = client.beta.threads.create(metadata={"team": "a"})
    run = client.beta.threads.runs.create(thread_id=thread.id, assistant_id=asst.id)
    assert asst.id.startswith("asst_") and thread.id.startswith("thread_") and run.id.startswith("run_")
    assert run.status == "queued" and run.usage is None and run.expires_at == run.created_at + 600
    raw = client.beta.threads.runs.with_raw_response.retrieve(run.id, thread_id=thread.id)
    _all_fields(Run, raw.http_response.json())
    _all_fields(Assistant, client.beta.assistants.with_raw_response.retrieve(asst.id).http_response.json())
    _all_fields(Thread, client.beta.threads.with_raw_response.retrieve(thread.id).http_response.json())
    assert client.beta.assistants.retrieve(asst.id).name == "helper"


def test_function_run_requires_action_then_completes_after_submit(client: openai.OpenAI, clock: ManualClock) -> None:
    """A function-calling run waits in requires_action until outputs arrive, then completes with usage."""
    asst = client.beta.assistants.create(model="gpt-4o", tools=[FUNCTION_TOOL])
    run = client.beta.threads.create_and_run(assistant_id=asst.id)
    clock.advance(5)
    run = client.beta.threads.runs.retrieve(run.id, thread_id=run.thread_id)
    assert run.status == "requires_action" and run.required_action is not None
    calls = run.required_action.submit_tool_outputs.tool_calls
    step = client.beta.threads.runs.steps.list(run.id, thread_id=run.thread_id, order="asc").data[0]
    assert step.status == "in_progress" and step.usage is None
    assert step.step_details.type == "tool_calls" and step.step_details.tool_calls[0].id == calls[0].id
    clock.advance(1000)
    assert client.beta.threads.runs.retrieve(run.id, thread_id=run.thread_id).status == "expired"


def test_submit_tool_outputs_resumes_and_fills_outputs(client: openai.OpenAI, clock: ManualClock) -> None:
    """After submit_tool_outputs the run is queued again, then completes; the step shows the output."""
    asst = client.beta.assistants.create(model="gpt-4o", tools=[FUNCTION_TOOL])
    run = client.beta.threads.create_and_run(assistant_id=asst.id)
    clock.advance(5)
    run = client.beta.threads.runs.retrieve(run.id, thread_id=run.thread_id)
    assert run.required_action is not None
    call_id = run.required_action.submit_tool_outputs.tool_calls[0].id
    run = client.beta.threads.runs.submit_tool_outputs(
        run.id, thread_id=run.thread_id, tool_outputs=[{"tool_call_id": call_id, "output": "sunny"}]
    )
    assert run.status == "queued" and run.required_action is None
    clock.advance(30)
    done = client.beta.threads.runs.retrieve(run.id, thread_id=run.thread_id)
    assert done.status == "completed" and done.usage is not None and done.completed_at is not None
    steps = client.beta.threads.runs.steps.list(run.id, thread_id=run.thread_id, order="asc").data
    assert [s.status for s in steps] == ["completed", "completed"]
    details = steps[0].step_details
    assert details.type == "tool_calls" and details.tool_calls[0].type == "function"
    assert details.tool_calls[0].function.output == "sunny"


def test_bad_submission_and_second_active_run_are_400(client: openai.OpenAI) -> None:
    """Outputs for unknown calls, or a second run on a busy thread, get 400 BadRequest."""
    asst = client.beta.assistants.create(model="gpt-4o", tools=[FUNCTION_TOOL])
    run = client.beta.threads.create_and_run(assistant_id=asst.id)
    with pytest.raises(openai.BadRequestError):
        client.beta.threads.runs.submit_tool_outputs(
            run.id, thread_id=run.thread_id, tool_outputs=[{"tool_call_id": "call_x", "output": "1"}]
        )
    with pytest.raises(openai.BadRequestError, match="already has an active run"):
        client.beta.threads.runs.create(thread_id=run.thread_id, assistant_id=asst.id)


def test_cancel_moves_run_and_open_steps_to_cancelled(client: openai.OpenAI, clock: ManualClock) -> None:
    """Cancelling answers `cancelling`; later the run and its open step are cancelled."""
    asst = client.beta.assistants.create(model="gpt-4o", tools=[{"type": "code_interpreter"}])
    run = client.beta.threads.create_and_run(assistant_id=asst.id)
    clock.advance(2.2)
    cancelled = client.beta.threads.runs.cancel(run.id, thread_id=run.thread_id)
    assert cancelled.status == "cancelling"
    clock.advance(5)
    run = client.beta.threads.runs.retrieve(run.id, thread_id=run.thread_id)
    assert run.status == "cancelled" and run.cancelled_at is not None and run.usage is not None
    steps = client.beta.threads.runs.steps.list(run.id, thread_id=run.thread_id).data
    assert steps and steps[0].status == "cancelled" and steps[0].cancelled_at is not None
    with pytest.raises(openai.BadRequestError):
        client.beta.threads.runs.cancel(run.id, thread_id=run.thread_id)


def test_auto_pagination_over_150_steps_and_retrieve(client: openai.OpenAI, clock: ManualClock) -> None:
    """The SDK pages through 150 steps exactly once each, in order, and retrieves one by id."""
    asst = client.beta.assistants.create(model="gpt-4o", tools=[{"type": "file_search"}])
    run = client.beta.threads.create_and_run(
        assistant_id=asst.id, metadata={"sim_steps": "150", "sim_step_seconds": "0.3"}
    )
    clock.advance(100)
    pages = client.beta.threads.runs.steps.list(run.id, thread_id=run.thread_id, limit=40, order="asc")
    steps = list(pages)
    assert len(steps) == 150 and len({s.id for s in steps}) == 150
    assert [s.created_at for s in steps] == sorted(s.created_at for s in steps)
    for raw in client.beta.threads.runs.steps.with_raw_response.list(
        run.id, thread_id=run.thread_id, limit=100
    ).http_response.json()["data"]:
        _all_fields(RunStep, raw)
    one = client.beta.threads.runs.steps.retrieve(
        steps[75].id,
        thread_id=run.thread_id,
        run_id=run.id,
        include=["step_details.tool_calls[*].file_search.results[*].content"],
    )
    assert one.id == steps[75].id and one.status == "completed"
    runs = client.beta.threads.runs.list(thread_id=run.thread_id)
    assert [r.id for r in runs] == [run.id]


def test_wrong_key_is_401_and_unknown_ids_404(client: openai.OpenAI, server: SimulatorServer) -> None:
    """A wrong key gets AuthenticationError; unknown ids NotFound; a wrong prefix BadRequest."""
    bad = openai.OpenAI(base_url=server.url, api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as info:
        bad.beta.threads.create()
    assert info.value.code == "invalid_api_key"
    with pytest.raises(openai.NotFoundError):
        client.beta.threads.runs.list(thread_id="thread_doesnotexist")
    with pytest.raises(openai.BadRequestError, match="begins with 'thread'"):
        client.beta.threads.runs.list(thread_id="undefined")
