"""The official openai SDK's (3.57.0) Assistants tutorial against the simulator over real HTTP on 127.0.0.1:
messages, create_and_poll, the streaming helper with an event handler, additional_messages and the
one-active-run rule."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest
from openai import AssistantEventHandler
from openai.types.beta import Assistant, Thread
from openai.types.beta.threads import Message, Text, TextDelta
from typing_extensions import override

from stepscope.simulator import SimClock, Simulator, SimulatorServer, scenario_named

# The SDK marks every Assistants method deprecated (the API is replaced by Responses); the warning names our module.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
QUESTION = "I need to solve the equation `3x + 11 = 14`. Can you help me?"


@pytest.fixture
def client() -> Iterator[openai.OpenAI]:
    # 40 simulated seconds per second: a run of two 1-2 s steps takes about a tenth of a second.
    sim = Simulator(scenario_named("quiet", step_seconds=(1.0, 2.0)), clock=SimClock(speed=40))
    with SimulatorServer(sim) as server, openai.OpenAI(base_url=server.url, api_key="sk-sim", max_retries=0,
                                                       timeout=10) as sdk:  # fmt: skip
        yield sdk


def _tutor(client: openai.OpenAI) -> tuple[Assistant, Thread]:
    assistant = client.beta.assistants.create(
        name="Math Tutor",
        instructions="You are a personal math tutor. Write and run code to answer math questions.",
        tools=[{"type": "code_interpreter"}],
        model="gpt-4o",
    )
    return assistant, client.beta.threads.create()


def _text(message: Message) -> str:
    block = message.content[0]
    assert block.type == "text"
    return block.text.value


class Recorder(AssistantEventHandler):
    """Records what the tutorial's event handler prints."""

    def __init__(self) -> None:
        super().__init__()
        self.created: list[str] = []
        self.deltas: list[str] = []
        self.done: list[Message] = []
        self.ended = 0

    @override
    def on_text_created(self, text: Text) -> None:
        self.created.append(text.value)

    @override
    def on_text_delta(self, delta: TextDelta, snapshot: Text) -> None:
        self.deltas.append(delta.value or "")

    @override
    def on_message_done(self, message: Message) -> None:
        self.done.append(message)

    @override
    def on_end(self) -> None:
        self.ended += 1


def test_tutorial_create_and_poll_then_the_answer_is_listed(client: openai.OpenAI) -> None:
    """Assistant, thread, user message, create_and_poll (default polling) to completion; the thread then lists the
    assistant's answer above the question, with every field, as its run and its message_creation step name it."""
    assistant, thread = _tutor(client)
    question = client.beta.threads.messages.create(thread_id=thread.id, role="user", content=QUESTION)
    run = client.beta.threads.runs.create_and_poll(
        thread_id=thread.id,
        assistant_id=assistant.id,
        instructions="Please address the user as Jane Doe. The user has a premium account.",
    )
    assert run.status == "completed"
    messages = client.beta.threads.messages.list(thread_id=thread.id)
    answer, asked = messages.data
    assert (asked.id, asked.role, _text(asked)) == (question.id, "user", QUESTION)
    assert (answer.role, answer.status, answer.run_id, answer.assistant_id) == ("assistant", "completed", run.id,
                                                                                assistant.id)  # fmt: skip
    assert "3x + 11 = 14" in _text(answer) and answer.completed_at is not None
    steps = client.beta.threads.runs.steps.list(run.id, thread_id=thread.id, order="asc").data
    last = steps[-1].step_details
    assert last.type == "message_creation" and last.message_creation.message_id == answer.id
    raw = client.beta.threads.messages.with_raw_response.list(thread_id=thread.id).http_response.json()["data"]
    for obj in raw:
        assert set(Message.model_fields) <= set(obj), set(Message.model_fields) - set(obj)
    assert [m.id for m in client.beta.threads.messages.list(thread_id=thread.id, run_id=run.id)] == [answer.id]
    assert client.beta.threads.messages.retrieve(answer.id, thread_id=thread.id) == answer


def test_streaming_helper_feeds_the_event_handler_and_the_final_messages(client: openai.OpenAI) -> None:
    """runs.stream with an AssistantEventHandler: text created once, deltas that add up to the answer, the message
    done and the end; get_final_messages is the answer as listed. create_and_stream's text_deltas spell it too."""
    assistant, thread = _tutor(client)
    client.beta.threads.messages.create(thread_id=thread.id, role="user", content=QUESTION)
    handler = Recorder()
    with client.beta.threads.runs.stream(
        thread_id=thread.id, assistant_id=assistant.id, event_handler=handler
    ) as stream:
        stream.until_done()
        final = stream.get_final_messages()
        run = stream.get_final_run()
    assert run.status == "completed" and len(final) == 1 and final[0].status == "completed"
    text = _text(final[0])
    assert handler.created == handler.deltas[:1] and len(handler.deltas) >= 3 and "".join(handler.deltas) == text
    assert [m.id for m in handler.done] == [final[0].id] and handler.ended == 1
    listed = client.beta.threads.messages.list(thread_id=thread.id, run_id=run.id).data
    assert [(m.id, _text(m)) for m in listed] == [(final[0].id, text)]
    with client.beta.threads.runs.create_and_stream(thread_id=thread.id, assistant_id=assistant.id) as again:
        spelled = "".join(again.text_deltas)
        second = again.get_final_messages()
    assert spelled == _text(second[0]) and second[0].id != final[0].id


def test_create_and_poll_with_additional_messages(client: openai.OpenAI) -> None:
    """additional_messages join the thread before the run, in order and without a run id; the answer quotes the
    newest one."""
    assistant, thread = _tutor(client)
    run = client.beta.threads.runs.create_and_poll(
        thread_id=thread.id,
        assistant_id=assistant.id,
        additional_messages=[
            {"role": "user", "content": "What is 7 * 6?"},
            {"role": "user", "content": [{"type": "text", "text": "Show your work."}]},
        ],
        poll_interval_ms=50,
    )
    assert run.status == "completed"
    listed = client.beta.threads.messages.list(thread_id=thread.id, order="asc").data
    assert [_text(m) for m in listed[:2]] == ["What is 7 * 6?", "Show your work."]
    assert [m.run_id for m in listed] == [None, None, run.id] and '"Show your work."' in _text(listed[2])


def test_a_second_active_run_and_a_message_during_a_run_are_bad_requests(client: openai.OpenAI) -> None:
    """While a run is active, runs.create, runs.stream and messages.create raise BadRequestError with the API's
    messages; once the run is done, both a message and a new run go through."""
    assistant, thread = _tutor(client)
    run = client.beta.threads.runs.create(thread_id=thread.id, assistant_id=assistant.id,
                                          metadata={"sim_step_seconds": "12"})  # fmt: skip
    expected = f"Thread {thread.id} already has an active run {run.id}."
    with pytest.raises(openai.BadRequestError) as second:
        client.beta.threads.runs.create(thread_id=thread.id, assistant_id=assistant.id)
    assert second.value.body == {"message": expected, "type": "invalid_request_error", "param": None, "code": None}
    with (
        pytest.raises(openai.BadRequestError, match="already has an active run"),
        client.beta.threads.runs.stream(thread_id=thread.id, assistant_id=assistant.id),
    ):
        pass
    with pytest.raises(openai.BadRequestError, match=f"Can't add messages to {thread.id} while a run {run.id}"):
        client.beta.threads.messages.create(thread_id=thread.id, role="user", content="Are you there?")
    assert client.beta.threads.runs.poll(run.id, thread_id=thread.id, poll_interval_ms=50).status == "completed"
    client.beta.threads.messages.create(thread_id=thread.id, role="user", content="Thanks!")
    again = client.beta.threads.runs.create_and_poll(thread_id=thread.id, assistant_id=assistant.id,
                                                     poll_interval_ms=50)  # fmt: skip
    assert again.status == "completed" and again.id != run.id
    assert [m.role for m in client.beta.threads.messages.list(thread_id=thread.id)] == [
        "assistant",
        "user",
        "assistant",
    ]
