"""The simulator's thread messages in-process: endpoints, the runs' answers, the one-active-run rule, message
stream events, the Azure flavour, faults, the workload and pruning."""

from __future__ import annotations

import json
from itertools import pairwise
from typing import Any

import httpx
import pytest

from stepscope.simulator import FaultConfig, ManualClock, SimClock, Simulator, scenario_named

pytestmark = pytest.mark.anyio
HEADERS = {"Authorization": "Bearer sk-sim", "OpenAI-Beta": "assistants=v2"}
FIELDS = {
    "id", "object", "created_at", "assistant_id", "thread_id", "run_id", "status", "incomplete_details",
    "incomplete_at", "completed_at", "role", "content", "attachments", "metadata",
}  # fmt: skip


def _quiet() -> tuple[Simulator, ManualClock]:
    clock = ManualClock()
    return Simulator(scenario_named("quiet"), clock=clock, seed=11), clock


def _client(sim: Simulator) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=sim.transport(), base_url="http://sim/v1", headers=HEADERS)


async def _start(client: httpx.AsyncClient, *, tools: list[dict[str, Any]] | None = None) -> tuple[str, str]:
    """A new assistant and thread: (assistant id, thread id)."""
    asst = (await client.post("/assistants", json={"model": "gpt-4o", "tools": tools or []})).json()["id"]
    return asst, (await client.post("/threads", json={})).json()["id"]


async def _say(client: httpx.AsyncClient, thread: str, text: str) -> httpx.Response:
    return await client.post(f"/threads/{thread}/messages", json={"role": "user", "content": text})


async def _messages(client: httpx.AsyncClient, thread: str, **query: Any) -> dict[str, Any]:
    body: dict[str, Any] = (await client.get(f"/threads/{thread}/messages", params=query)).json()
    return body


def _text(message: dict[str, Any]) -> str:
    return "".join(part["text"]["value"] for part in message["content"] if part["type"] == "text")


def _error(resp: httpx.Response) -> dict[str, Any]:
    error: dict[str, Any] = resp.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


async def test_messages_are_created_retrieved_and_listed_with_every_field() -> None:
    """A text message and one of content parts with attachments and metadata come back whole from create, get and
    list, newest first."""
    sim, clock = _quiet()
    async with _client(sim) as client:
        _, thread = await _start(client)
        plain = (await _say(client, thread, "Hello")).json()
        clock.advance(1)
        parts = [
            {"type": "text", "text": "Look at these"},
            {"type": "image_url", "image_url": {"url": "https://example.invalid/a.png"}},
            {"type": "image_file", "image_file": {"file_id": "file_1", "detail": "low"}},
        ]
        attachments = [{"file_id": "file_2", "tools": [{"type": "file_search"}]}]
        rich = (await client.post(f"/threads/{thread}/messages", json={"role": "assistant", "content": parts,
                                  "attachments": attachments, "metadata": {"k": "v"}})).json()  # fmt: skip
        got = (await client.get(f"/threads/{thread}/messages/{rich['id']}")).json()
        listed = await _messages(client, thread)
    assert set(plain) == FIELDS and plain["id"].startswith("msg_") and plain["object"] == "thread.message"
    assert plain["content"] == [{"type": "text", "text": {"value": "Hello", "annotations": []}}]
    assert (plain["status"], plain["run_id"], plain["assistant_id"], plain["thread_id"]) == ("completed", None, None,
                                                                                             thread)  # fmt: skip
    assert [c["type"] for c in rich["content"]] == ["text", "image_url", "image_file"] and rich["role"] == "assistant"
    assert rich["content"][1]["image_url"]["detail"] == "auto" and rich["content"][2]["image_file"]["detail"] == "low"
    assert rich["attachments"] == attachments and rich["metadata"] == {"k": "v"} and got == rich
    assert [m["id"] for m in listed["data"]] == [rich["id"], plain["id"]]
    assert rich["created_at"] == plain["created_at"] + 1 and listed["first_id"] == rich["id"]


async def test_lists_page_with_limit_order_and_cursors_and_refuse_bad_parameters() -> None:
    """Default pages hold 20 newest first; after and before walk both orders; bad limit, order or cursor is 400."""
    sim, _ = _quiet()
    async with _client(sim) as client:
        _, thread = await _start(client)
        ids = [(await _say(client, thread, f"m{i}")).json()["id"] for i in range(23)]
        first = await _messages(client, thread)
        walked: list[str] = []
        cursor: dict[str, Any] = {}
        while True:
            page = await _messages(client, thread, order="asc", limit=7, **cursor)
            walked += [m["id"] for m in page["data"]]
            if not page["has_more"]:
                break
            cursor = {"after": page["last_id"]}
        before = await _messages(client, thread, order="asc", limit=2, before=ids[4])
        bad = [await client.get(f"/threads/{thread}/messages", params=q)
               for q in ({"limit": 0}, {"limit": 101}, {"order": "up"}, {"after": "msg_nope"})]  # fmt: skip
    assert [m["id"] for m in first["data"]] == ids[::-1][:20] and first["has_more"]
    assert walked == ids
    assert [m["id"] for m in before["data"]] == ids[2:4] and before["has_more"]
    assert [r.status_code for r in bad] == [400] * 4 and [_error(r)["param"] for r in bad][-1] == "after"


async def test_a_run_writes_its_answer_during_its_message_creation_step() -> None:
    """The answer appears with its step, in progress with part of its text, then completes with the step; it
    names the run and assistant, is the step's message and is all that run_id selects."""
    sim, clock = _quiet()
    async with _client(sim) as client:
        asst, thread = await _start(client)
        question = (await _say(client, thread, "What is 2+2?")).json()
        run = (await client.post(f"/threads/{thread}/runs", json={"assistant_id": asst,
                                 "metadata": {"sim_step_seconds": "4"}})).json()  # fmt: skip
        clock.advance(2)  # queued until +4, then one message_creation step until +8
        early = await _messages(client, thread, run_id=run["id"])
        clock.advance(4)
        during = (await _messages(client, thread))["data"][0]
        clock.advance(10)
        done = await _messages(client, thread, run_id=run["id"])
        steps = (await client.get(f"/threads/{thread}/runs/{run['id']}/steps")).json()["data"]
        got = (await client.get(f"/threads/{thread}/messages/{during['id']}")).json()
    answer = done["data"][0]
    assert early["data"] == [] and len(done["data"]) == 1 and got == answer
    assert during["status"] == "in_progress" and during["completed_at"] is None and during["role"] == "assistant"
    assert 0 < len(_text(during)) < len(_text(answer)) and _text(answer).startswith(_text(during))
    assert (answer["status"], answer["run_id"], answer["assistant_id"]) == ("completed", run["id"], asst)
    assert answer["id"] == steps[0]["step_details"]["message_creation"]["message_id"]
    assert answer["completed_at"] == steps[0]["completed_at"] and "What is 2+2?" in _text(answer)
    assert question["run_id"] is None


async def test_additional_messages_join_the_thread_before_the_run_which_reads_them() -> None:
    """additional_messages are appended before the run starts, without a run id, and the answer quotes the newest
    user message; a bad one refuses the request without adding anything."""
    sim, clock = _quiet()
    async with _client(sim) as client:
        asst, thread = await _start(client)
        await _say(client, thread, "first")
        extra = [{"role": "user", "content": "second"}, {"role": "assistant", "content": "noted"},
                 {"role": "user", "content": "third question"}]  # fmt: skip
        run = (await client.post(f"/threads/{thread}/runs", json={"assistant_id": asst, "additional_messages": extra,
                                 "metadata": {"sim_step_seconds": "1"}})).json()  # fmt: skip
        clock.advance(10)
        listed = (await _messages(client, thread, order="asc"))["data"]
        bad = await client.post(f"/threads/{thread}/runs", json={"assistant_id": asst,
                                "additional_messages": [{"content": "no role"}]})  # fmt: skip
        after = (await _messages(client, thread))["data"]
    assert [_text(m) for m in listed[:4]] == ["first", "second", "noted", "third question"]
    assert [m["role"] for m in listed] == ["user", "user", "assistant", "user", "assistant"]
    assert all(m["run_id"] is None and m["created_at"] == run["created_at"] for m in listed[1:4])
    assert listed[4]["run_id"] == run["id"] and '"third question"' in _text(listed[4])
    assert "read 4 messages" in _text(listed[4])
    assert bad.status_code == 400 and _error(bad)["param"] == "additional_messages[0].role" and len(after) == 5


async def test_a_second_run_or_a_message_on_a_busy_thread_is_400_until_the_run_ends() -> None:
    """While a run is active, another run (plain, streamed or with additional_messages) and a new message get the
    API's 400s and change nothing; once the run is terminal both are accepted."""
    sim, clock = _quiet()
    async with _client(sim) as client:
        asst, thread = await _start(client)
        first = (await client.post(f"/threads/{thread}/runs", json={"assistant_id": asst,
                                   "metadata": {"sim_step_seconds": "2"}})).json()["id"]  # fmt: skip
        refused = [
            await client.post(f"/threads/{thread}/runs", json={"assistant_id": asst, **extra})
            for extra in ({}, {"stream": True}, {"additional_messages": [{"role": "user", "content": "x"}]})
        ]
        message = await _say(client, thread, "too early")
        before = await _messages(client, thread)
        clock.advance(30)
        late = await _say(client, thread, "now")
        second = await client.post(f"/threads/{thread}/runs", json={"assistant_id": asst})
    for resp in refused:
        assert resp.status_code == 400 and resp.headers["content-type"] == "application/json"
        assert _error(resp) == {"message": f"Thread {thread} already has an active run {first}.",
                                "type": "invalid_request_error", "param": None, "code": None}  # fmt: skip
    assert message.status_code == 400
    assert _error(message)["message"] == f"Can't add messages to {thread} while a run {first} is active."
    assert before["data"] == [] and len(sim.engine.threads[thread].runs) == 2
    assert late.status_code == 200 and second.status_code == 200 and second.json()["id"] != first


async def test_threads_start_with_their_messages_and_create_thread_and_run_answers_them() -> None:
    """POST /threads stores `messages` in order; POST /threads/runs runs on `thread.messages`; a bad message
    refuses either request before any thread exists."""
    sim, clock = _quiet()
    async with _client(sim) as client:
        asst, _ = await _start(client)
        two = [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]
        thread = (await client.post("/threads", json={"messages": two})).json()
        both = {"assistant_id": asst, "thread": {"messages": [{"role": "user", "content": "Plan my trip"}]},
                "metadata": {"sim_step_seconds": "1"}}  # fmt: skip
        run = (await client.post("/threads/runs", json=both)).json()
        clock.advance(10)
        started = await _messages(client, thread["id"], order="asc")
        answered = await _messages(client, run["thread_id"], order="asc")
        count = len(sim.engine.threads)
        bad_thread = await client.post("/threads", json={"messages": [{"role": "user", "content": []}]})
        bad_run = await client.post("/threads/runs", json={"assistant_id": asst, "thread": {"messages": "x"}})
    assert [_text(m) for m in started["data"]] == ["a", "b"] and started["data"][0]["created_at"] == thread[
        "created_at"
    ]
    assert [m["role"] for m in answered["data"]] == ["user", "assistant"]
    assert '"Plan my trip"' in _text(answered["data"][1]) and answered["data"][1]["run_id"] == run["id"]
    assert _error(bad_thread)["param"] == "messages[0].content" and _error(bad_run)["param"] == "thread.messages"
    assert len(sim.engine.threads) == count


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"content": "x"}, "role"),
        ({"role": "system", "content": "x"}, "role"),
        ({"role": "user"}, "content"),
        ({"role": "user", "content": ""}, "content"),
        ({"role": "user", "content": [{"type": "video", "video": {}}]}, "content[0]"),
        ({"role": "user", "content": "x", "attachments": [{"tools": []}]}, "attachments[0]"),
        ({"role": "user", "content": "x", "metadata": {"k": 1}}, "metadata"),
    ],
)
async def test_invalid_messages_are_400_naming_the_parameter(body: dict[str, Any], param: str) -> None:
    """A message the API would refuse is a 400 invalid_request_error naming the offending parameter."""
    sim, _ = _quiet()
    async with _client(sim) as client:
        _, thread = await _start(client)
        resp = await client.post(f"/threads/{thread}/messages", json=body)
    assert resp.status_code == 400 and _error(resp)["param"] == param
    assert _error(resp)["type"] == "invalid_request_error"


async def test_unknown_messages_are_404_and_wrong_prefixes_400() -> None:
    """An unknown message id is a 404; an id without the msg prefix is a 400 naming message_id."""
    sim, _ = _quiet()
    async with _client(sim) as client:
        _, thread = await _start(client)
        missing = await client.get(f"/threads/{thread}/messages/msg_nope")
        wrong = await client.get(f"/threads/{thread}/messages/run_nope")
        gone = await client.get("/threads/thread_nope/messages")
    assert (missing.status_code, wrong.status_code, gone.status_code) == (404, 400, 404)
    assert _error(wrong)["param"] == "message_id" and "begins with 'msg'" in _error(wrong)["message"]


async def test_a_streamed_run_sends_its_message_events_inside_the_message_creation_step() -> None:
    """thread.message.created and in_progress (empty) follow the step's start, deltas add up to the completed text,
    and thread.message.completed comes right before the step completes; create-thread-and-run starts with
    thread.created."""
    sim = Simulator(scenario_named("quiet", step_seconds=(1.0, 2.0)), clock=SimClock(speed=200))
    body = {"thread": {"messages": [{"role": "user", "content": "Hi"}]}, "stream": True,
            "metadata": {"sim_steps": "2"}}  # fmt: skip
    async with _client(sim) as client:
        asst, _ = await _start(client, tools=[{"type": "code_interpreter"}])
        raw = (await client.post("/threads/runs", json={"assistant_id": asst, **body})).text
    # Each SSE frame the simulator sends is exactly `event: NAME\ndata: JSON\n\n`.
    frames = [frame.split("\n", 1) for frame in raw.split("\n\n") if frame]
    names = [event.removeprefix("event: ") for event, _ in frames]
    data: list[dict[str, Any]] = [json.loads(d.removeprefix("data: ")) for _, d in frames[:-1]]  # the last is done
    start, end = names.index("thread.message.created"), names.index("thread.message.completed")
    assert names[:3] == ["thread.created", "thread.run.created", "thread.run.queued"]
    assert data[0]["id"] == data[1]["thread_id"]
    assert names[start - 2 : start + 2] == ["thread.run.step.created", "thread.run.step.in_progress",
                                            "thread.message.created", "thread.message.in_progress"]  # fmt: skip
    assert set(names[start + 2 : end]) == {"thread.message.delta"} and end - start - 2 >= 3
    assert names[end + 1 :] == ["thread.run.step.completed", "thread.run.completed", "done"]
    step, created, completed = data[start - 1], data[start], data[end]
    assert (
        step["type"] == "message_creation" and step["step_details"]["message_creation"]["message_id"] == created["id"]
    )
    assert (created["status"], created["content"], completed["status"]) == ("in_progress", [], "completed")
    deltas = [d["delta"]["content"][0] for d in data[start + 2 : end]]
    assert all(d["id"] == created["id"] and d["object"] == "thread.message.delta" for d in data[start + 2 : end])
    assert deltas[0]["text"]["annotations"] == [] and all("annotations" not in d["text"] for d in deltas[1:])
    assert "".join(d["text"]["value"] for d in deltas) == _text(completed) and '"Hi"' in _text(completed)


@pytest.mark.parametrize(("metadata", "reason"), [({"sim_outcome": "failed"}, "run_failed"),
                                                  ({"sim_outcome": "incomplete"}, "max_tokens"),
                                                  ({}, "run_cancelled")])  # fmt: skip
async def test_a_run_that_ends_badly_leaves_its_message_incomplete(metadata: dict[str, str], reason: str) -> None:
    """A failed, token-limited or cancelled run's message is incomplete with the matching reason and time."""
    sim, clock = _quiet()
    async with _client(sim) as client:
        asst, thread = await _start(client)
        run = (await client.post(f"/threads/{thread}/runs", json={"assistant_id": asst,
                                 "metadata": {"sim_step_seconds": "4", **metadata}})).json()  # fmt: skip
        clock.advance(6)
        if not metadata:
            assert (await client.post(f"/threads/{thread}/runs/{run['id']}/cancel")).status_code == 200
        clock.advance(20)
        message = (await _messages(client, thread, run_id=run["id"]))["data"][0]
    assert (message["status"], message["incomplete_details"]) == ("incomplete", {"reason": reason})
    assert message["incomplete_at"] is not None and message["completed_at"] is None


async def test_azure_serves_messages_under_the_project_with_api_version() -> None:
    """On Azure the message endpoints live under /api/projects/{project}, need api-version, keep the message
    shape and list with the short envelope."""
    clock = ManualClock()
    sim = Simulator(scenario_named("quiet"), flavor="azure", api_key="k", clock=clock)
    async with httpx.AsyncClient(transport=sim.transport(), base_url="http://sim" + sim.base_path,
                                 headers={"api-key": "k"}) as client:  # fmt: skip
        thread = (await client.post("/threads", json={}, params={"api-version": "v1"})).json()["id"]
        bare = await client.post(f"/threads/{thread}/messages", json={"role": "user", "content": "hi"})
        made = await client.post(f"/threads/{thread}/messages", params={"api-version": "v1"},
                                 json={"role": "user", "content": "hi"})  # fmt: skip
        page = (await client.get(f"/threads/{thread}/messages", params={"api-version": "v1"})).json()
    assert bare.status_code == 400 and _error(bare)["param"] == "api-version"
    assert made.status_code == 200 and set(made.json()) == FIELDS
    assert page == {"data": [made.json()], "last_id": made.json()["id"], "has_more": False}


async def test_faults_target_the_message_endpoints_by_name() -> None:
    """Faults named create_message, list_messages and get_message hit those endpoints and no other."""
    faults = FaultConfig.from_dict({"endpoints": {
        "create_message": {"error_rate": 1.0, "error_statuses": [503]},
        "list_messages": {"truncate_rate": 1.0},
        "get_message": {"rate_limit_rate": 1.0, "retry_after_s": 2},
    }})  # fmt: skip
    sim, _ = _quiet()
    sim.set_faults(faults)
    async with _client(sim) as client:
        thread = (await client.post("/threads", json={"messages": [{"role": "user", "content": "a"}]})).json()["id"]
        created = await _say(client, thread, "b")
        listed = await client.get(f"/threads/{thread}/messages")
        message = sim.truth()["messages"][thread][0]["id"]
        got = await client.get(f"/threads/{thread}/messages/{message}")
        thread_ok = await client.get(f"/threads/{thread}")
    assert created.status_code == 503 and _error(created)["type"] == "server_error"
    assert listed.status_code == 200
    with pytest.raises(json.JSONDecodeError):
        json.loads(listed.content)
    assert got.status_code == 429 and got.headers["retry-after"] == "2" and thread_ok.status_code == 200


async def test_workload_runs_follow_a_question_write_their_answers_and_never_overlap() -> None:
    """Every workload run has its question before it and a message per message_creation step, in the step's state;
    runs on a thread never overlap, a client cannot start a run or add a message on a busy workload thread, and
    the same seed gives the same messages."""
    clock = ManualClock()
    sim = Simulator(scenario_named("lively"), clock=clock, seed=4)
    clock.advance(300)
    truth = sim.truth()
    by_id = {m["id"]: m for ms in truth["messages"].values() for m in ms}
    written = 0
    for run in truth["runs"]:
        for step in run["steps"]:
            if step["type"] != "message_creation":
                continue
            written += 1
            message = by_id[step["step_details"]["message_creation"]["message_id"]]
            assert (message["run_id"], message["thread_id"], message["role"]) == (run["id"], run["thread_id"],
                                                                                  "assistant")  # fmt: skip
            if step["status"] in ("in_progress", "completed"):
                limited = run["status"] == "incomplete" and message["incomplete_details"] == {"reason": "max_tokens"}
                assert message["status"] == step["status"] or limited, (run, message)
            else:
                assert message["incomplete_details"] == {"reason": f"run_{step['status']}"}
    assert written == sum(1 for m in by_id.values() if m["run_id"]) and written > 100
    for tid, messages in truth["messages"].items():
        questions = [m for m in messages if m["role"] == "user" and m["metadata"] == {"source": "workload"}]
        assert len(questions) == len(sim.engine.threads[tid].runs)
        assert [m["created_at"] for m in messages] == sorted(m["created_at"] for m in messages)
    for thread in sim.engine.threads.values():
        assert all(a.terminal_at <= b.created for a, b in pairwise(thread.runs))
    busy = next(t for t in sim.engine.threads.values() if t.active_run(clock.now()) is not None)
    active = busy.active_run(clock.now())
    assert active is not None
    async with _client(sim) as client:
        asst = (await client.post("/assistants", json={"model": "gpt-4o"})).json()["id"]
        run = await client.post(f"/threads/{busy.id}/runs", json={"assistant_id": asst})
        message = await _say(client, busy.id, "hi")
    assert _error(run)["message"] == f"Thread {busy.id} already has an active run {active.id}."
    assert message.status_code == 400
    twin_clock = ManualClock()
    twin = Simulator(scenario_named("lively"), clock=twin_clock, seed=4)
    twin_clock.advance(300)
    assert twin.truth()["messages"] == truth["messages"]


async def test_pruning_forgets_the_old_runs_messages_and_keeps_the_rest_listable() -> None:
    """Pruning runs drops their messages and the questions before them; what stays lists and resolves as before."""
    clock = ManualClock()
    sim = Simulator(scenario_named("lively"), clock=clock, seed=2)
    clock.advance(400)
    before = sim.truth()["stats"]["messages"]
    dropped = sim.engine.prune(clock.now(), 60)
    truth = sim.truth()
    runs = {r["id"] for r in truth["runs"]}
    assert dropped > 0 and len(runs) >= 60 and 0 < truth["stats"]["messages"] < before
    for tid, messages in truth["messages"].items():
        assert all(m["run_id"] in runs for m in messages if m["run_id"])
        assert sum(1 for m in messages if m["role"] == "user") == len(sim.engine.threads[tid].runs)
    tid, messages = max(truth["messages"].items(), key=lambda item: len(item[1]))
    async with _client(sim) as client:
        listed = await _messages(client, tid, order="asc", limit=100)
        got = await client.get(f"/threads/{tid}/messages/{messages[-1]['id']}")
    assert listed["data"] == messages and got.json() == messages[-1]
