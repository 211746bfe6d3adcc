"""The simulated Responses API in-process: lifecycles, modes, cancel rules, listings, conversations, truth, faults,
determinism and the stuck-queued knob, through `sim.transport()` on a `ManualClock`."""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Awaitable
from typing import Any, TypeVar

import httpx
import pytest
from openai.types.conversations import Conversation, ConversationItem
from openai.types.responses import Response, ResponseItem, ResponseStreamEvent
from pydantic import TypeAdapter

from stepscope.simulator import FaultConfig, FaultSpec, ManualClock, Simulator, scenario_named
from stepscope.simulator import cli as simulator_cli
from stepscope.simulator.responses import ResponseKnobs, ResponsesWorkload
from stepscope.simulator.responses import serializers as ser
from stepscope.simulator.responses.engine import ResponsesEngine
from stepscope.simulator.responses.events import events_until
from stepscope.simulator.responses.params import CreateParams
from stepscope.simulator.responses.plan import OPENAI_KINDS
from stepscope.simulator.responses.state import SimResponse

HEADERS = {"Authorization": "Bearer sk-sim"}
T = TypeVar("T")
CALM: dict[str, Any] = {"failure_rate": 0.0, "incomplete_rate": 0.0, "cancel_rate": 0.0}


def _sim(
    scenario: str = "quiet", *, flavor: str = "openai", faults: FaultConfig | None = None, seconds: float = 0,
    workload: ResponsesWorkload | None = None, seed: int = 5, **overrides: Any,
) -> tuple[Simulator, ManualClock]:  # fmt: skip
    clock = ManualClock()
    sim = Simulator(scenario_named(scenario, **overrides), faults, clock=clock, seed=seed, protocol="responses",
                    flavor=flavor, responses_workload=workload)  # fmt: skip
    clock.advance(seconds)
    return sim, clock


def _engine(sim: Simulator) -> ResponsesEngine:
    assert sim.responses is not None
    return sim.responses.engine


def _client(sim: Simulator, headers: dict[str, str] | None = None) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=sim.transport(), base_url="http://sim" + sim.base_path,
                             headers=HEADERS if headers is None else headers)  # fmt: skip


def _make(
    sim: Simulator, clock: ManualClock, *, background: bool = False, outcome: str = "completed",
    kinds: tuple[str, ...] = ("web_search_call",), seconds: float = 1.0, **params: Any,
) -> SimResponse:  # fmt: skip
    """A client response created now whose timeline the knobs fix: queue 1 s, then 1 s per item."""
    body = CreateParams(model=params.pop("model", "gpt-5"), input="hi", background=background, **params)
    knobs = ResponseKnobs(kinds=kinds, seconds=seconds, outcome=outcome)
    return _engine(sim).create_response(clock.now(), body, knobs=knobs)


async def _pumped(clock: ManualClock, awaitable: Awaitable[T], step: float = 0.25) -> T:
    """Await `awaitable` while simulated time moves on by `step` every few milliseconds."""
    task = asyncio.ensure_future(awaitable)
    while not task.done():
        await asyncio.sleep(0.002)
        clock.advance(step)
    return await task


def _sse(text: str) -> list[dict[str, Any]]:
    """The `data:` payloads of an SSE body, each checked against its `event:` line."""
    events = []
    for block in text.strip().split("\n\n"):
        name, data = block.split("\n", 1)
        event = json.loads(data.removeprefix("data: "))
        assert name == f"event: {event['type']}"
        events.append(event)
    return events


async def _all(client: httpx.AsyncClient, path: str, **params: Any) -> list[dict[str, Any]]:
    """Every object of a list, following `after=last_id`."""
    out: list[dict[str, Any]] = []
    while True:
        resp = await client.get(path, params=params)
        assert resp.status_code == 200, resp.text
        page = resp.json()
        out += page["data"]
        if not page["has_more"]:
            return out
        params["after"] = page["last_id"]


# --- routing, auth, headers ---------------------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize(("flavor", "headers", "status"), [
    ("openai", {}, 401), ("openai", {"Authorization": "Bearer sk-wrong-key"}, 401), ("openai", HEADERS, 404),
    ("azure", {"api-key": "sk-sim"}, 404), ("azure", {"api-key": "nope"}, 401), ("azure", HEADERS, 404),
])  # fmt: skip
async def test_auth_comes_first_on_every_flavour(flavor: str, headers: dict[str, str], status: int) -> None:
    """A missing or wrong key is a 401 invalid_api_key; Bearer (and api-key on azure) reach the endpoint."""
    sim, _ = _sim(flavor=flavor)
    async with _client(sim, headers) as client:
        resp = await client.get("/responses/resp_unknown")
    assert resp.status_code == status
    assert resp.json()["error"]["code"] == ("invalid_api_key" if status == 401 else None)
    assert resp.headers["x-request-id"].startswith("req_")
    assert ("x-ratelimit-limit-requests" in resp.headers) == (status != 401)  # auth is checked before the budget


@pytest.mark.anyio
async def test_listing_exists_on_azure_only_and_paths_follow_the_flavour() -> None:
    """GET /responses and /conversations are Foundry's; on openai they are the API's unknown-route 404."""
    openai_sim, _ = _sim()
    azure_sim, _ = _sim(flavor="azure")
    assert openai_sim.base_path == "/v1" and azure_sim.base_path == "/api/projects/sim/openai/v1"
    async with _client(openai_sim) as client:
        for path in ("/responses", "/conversations"):
            resp = await client.get(path)
            assert resp.status_code == 404
            assert resp.json()["error"]["message"] == f"Invalid URL (GET /v1{path})"
        assert (await client.get("/assistants")).status_code == 404
    async with _client(azure_sim) as client:
        assert (await client.get("/responses")).json()["object"] == "list"
        assert (await client.get("/conversations")).status_code == 200


def test_protocol_options_keep_both_as_assistants_and_agents() -> None:
    """`both` serves no Responses truth; responses work on either flavour and take webhooks; agents stays openai."""
    both = Simulator(scenario_named("quiet"), protocol="both")
    assert both.responses is None and "responses" not in both.truth() and "agents" in both.truth()
    with pytest.raises(ValueError, match="flavor openai"):
        Simulator(scenario_named("quiet"), protocol="both", flavor="azure")
    assert "responses" in Simulator(scenario_named("quiet"), protocol="responses", flavor="azure").truth()


# --- lifecycles ---------------------------------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("outcome", ["completed", "failed", "incomplete", "cancelled"])
async def test_each_status_is_reached_with_its_fields(outcome: str) -> None:
    """A background response goes queued, in_progress, then its final status; completed_at only when completed,
    usage only on completed and incomplete, error and incomplete_details only on their statuses."""
    sim, clock = _sim()
    resp = _make(sim, clock, background=True, outcome=outcome, kinds=("web_search_call", "mcp_call"))
    seen = []
    async with _client(sim) as client:
        for _ in range(14):
            body = (await client.get(f"/responses/{resp.id}")).json()
            seen.append(body["status"])
            assert (body["completed_at"] is not None) == (body["status"] == "completed")
            assert (body["usage"] is not None) == (body["status"] in ("completed", "incomplete"))
            clock.advance(0.5)
    final = body
    assert seen[0] == "queued" and seen[-1] == outcome
    if outcome != "cancelled":
        assert "in_progress" in seen
    assert [s for i, s in enumerate(seen) if i == 0 or s != seen[i - 1]] == sorted(set(seen), key=seen.index)
    assert (final["error"] is not None) == (outcome == "failed")
    assert (final["incomplete_details"] is not None) == (outcome == "incomplete")
    if outcome == "completed":
        assert final["completed_at"] >= final["created_at"] and final["output"][-1]["type"] == "message"
        usage = final["usage"]
        assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
        assert usage["output_tokens_details"]["reasoning_tokens"] > 0  # gpt-5 reasons
    if outcome == "failed":
        assert final["error"]["code"] in ("server_error", "rate_limit_exceeded", "vector_store_timeout",
                                          "invalid_prompt")  # fmt: skip
        assert all(item["type"] != "message" for item in final["output"])
    if outcome == "incomplete":
        assert final["incomplete_details"]["reason"] in ("max_output_tokens", "content_filter")
        assert final["output"][-1]["status"] == "incomplete"


@pytest.mark.anyio
async def test_background_create_answers_queued_at_once_then_progresses() -> None:
    """`background: true` answers queued with null usage and completed_at and no output; GET shows it advance."""
    sim, clock = _sim(**CALM)
    async with _client(sim) as client:
        created = (await client.post("/responses", json={"model": "gpt-5", "input": "hi", "background": True})).json()
        assert (created["status"], created["usage"], created["completed_at"], created["output"]) == (
            "queued", None, None, [])  # fmt: skip
        assert created["background"] is True and created["object"] == "response"
        clock.advance(120)
        done = (await client.get(f"/responses/{created['id']}")).json()
    assert done["status"] == "completed" and done["usage"]["input_tokens"] > 0 and done["output"]


@pytest.mark.anyio
async def test_an_item_is_in_progress_between_added_and_done() -> None:
    """Reading in the middle shows the tool call in_progress without its late fields; later it is done."""
    sim, clock = _sim()
    resp = _make(sim, clock, background=True, kinds=("code_interpreter_call",), seconds=2.0)
    async with _client(sim) as client:
        clock.advance(5)  # queued 2 s, reasoning 2 s, the call from 4 s to 6 s
        middle = (await client.get(f"/responses/{resp.id}")).json()
        clock.advance(2)
        later = (await client.get(f"/responses/{resp.id}")).json()
    call = middle["output"][-1]
    assert (call["type"], call["status"], call["outputs"]) == ("code_interpreter_call", "in_progress", None)
    assert later["output"][1]["status"] == "completed" and later["output"][1]["outputs"]


@pytest.mark.anyio
async def test_plain_create_answers_when_the_response_is_terminal() -> None:
    """Without stream or background the answer waits for the simulated duration and carries the final response."""
    sim, clock = _sim(**CALM)
    start = clock.now()
    async with _client(sim) as client:
        resp = await _pumped(clock, client.post("/responses", json={"model": "gpt-4.1", "input": "hello"}))
    body = resp.json()
    assert resp.status_code == 200 and body["status"] == "completed" and body["background"] is False
    assert [i["type"] for i in body["output"]] == ["message"]  # no tools, no reasoning for gpt-4.1
    truth = sim.truth()["responses"]["responses"][0]
    assert truth["id"] == body["id"] and clock.now() - start >= truth["sim_ended_at"] - truth["sim_created_at"] > 0


@pytest.mark.anyio
async def test_streamed_create_numbers_events_and_ends_with_one_terminal_event() -> None:
    """SSE events are numbered from 0, items are added before they are done, and exactly one terminal event ends
    the stream, carrying the final response."""
    sim, clock = _sim(**CALM)
    body = {"model": "gpt-5", "input": "hi", "stream": True, "tools": [{"type": "file_search",
                                                                         "vector_store_ids": ["vs_1"]}]}  # fmt: skip
    async with _client(sim) as client:
        resp = await _pumped(clock, client.post("/responses", json=body))
    events = _sse(resp.text)
    types = [e["type"] for e in events]
    assert resp.headers["content-type"].startswith("text/event-stream")
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert types[:2] == ["response.created", "response.in_progress"] and types[-1] == "response.completed"
    assert sum(t in ("response.completed", "response.failed", "response.incomplete") for t in types) == 1
    added = [e["item"]["id"] for e in events if e["type"] == "response.output_item.added"]
    done = [e["item"]["id"] for e in events if e["type"] == "response.output_item.done"]
    assert added == done and len(added) >= 3
    assert types.index("response.output_item.done") > types.index("response.output_item.added")
    assert events[-1]["response"]["output"][-1]["content"][0]["text"] == "".join(
        e["delta"] for e in events if e["type"] == "response.output_text.delta")  # fmt: skip
    assert events[0]["response"]["status"] == "in_progress" and events[0]["response"]["output"] == []


@pytest.mark.anyio
async def test_failed_stream_sends_an_error_event_before_response_failed() -> None:
    """A response that fails mid-stream sends `error` with its code, then `response.failed` with the error."""
    sim, clock = _sim(failure_rate=1.0, incomplete_rate=0.0, cancel_rate=0.0)
    async with _client(sim) as client:
        resp = await _pumped(clock, client.post("/responses", json={"model": "gpt-5", "input": "x", "stream": True}))
    events = _sse(resp.text)
    assert [e["type"] for e in events[-2:]] == ["error", "response.failed"]
    assert events[-2]["code"] == events[-1]["response"]["error"]["code"]
    assert events[-1]["response"]["completed_at"] is None and events[-1]["response"]["usage"] is None


@pytest.mark.anyio
async def test_background_stream_resumes_after_a_sequence_number_and_others_cannot() -> None:
    """`GET ?stream=true&starting_after=N` replays a background response's events after N; a non-background
    response cannot be streamed again (404)."""
    sim, clock = _sim()
    bg = _make(sim, clock, background=True)
    plain = _make(sim, clock)
    clock.advance(30)
    async with _client(sim) as client:
        full = _sse((await client.get(f"/responses/{bg.id}", params={"stream": "true"})).text)
        tail = _sse((await client.get(f"/responses/{bg.id}", params={"stream": "true", "starting_after": 4})).text)
        refused = await client.get(f"/responses/{plain.id}", params={"stream": "true"})
    assert [e["type"] for e in full[:3]] == ["response.created", "response.queued", "response.in_progress"]
    assert full[0]["response"]["status"] == "queued"
    assert tail == full[5:] and tail[-1]["type"] == "response.completed"
    assert refused.status_code == 404


def test_every_object_validates_against_the_sdk_types() -> None:
    """Responses at every moment of every outcome, with every OpenAI item kind, their stream events, input items,
    conversation items and conversations validate strictly against the openai SDK's models."""
    sim, clock = _sim()
    engine = _engine(sim)
    conv = engine.create_conversation(clock.now(), items=[{"role": "user", "content": "hello"}])
    kinds = (*(k for k in OPENAI_KINDS if k != "function_call"), "function_call")
    made = [
        engine.create_response(clock.now(), CreateParams(model="gpt-5", input="hi", background=True,
                                                         conversation_id=conv.id),
                               knobs=ResponseKnobs(kinds=chosen, seconds=1.0, outcome=outcome))
        for outcome in ("completed", "failed", "incomplete", "cancelled") for chosen in (kinds, kinds[:-1])
    ]  # fmt: skip
    for _ in range(24):
        for resp in made:
            Response.model_validate(ser.response_dict(resp, clock.now(), azure=False))
        clock.advance(0.5)
    events = TypeAdapter(ResponseStreamEvent)
    for resp in made:
        for event in events_until(resp, clock.now(), azure=False):
            events.validate_python(event)
        TypeAdapter(list[ResponseItem]).validate_python(resp.input_items)
    items = [ser.stored_item_dict(entry, r, azure=False) for entry, r in conv.items_at(clock.now())]
    TypeAdapter(list[ConversationItem]).validate_python(items)
    Conversation.model_validate(ser.conversation_dict(conv))
    assert {r.status for r in made} == {"completed", "failed", "incomplete", "cancelled"}
    assert {i["type"] for i in items} == {*kinds, "message", "reasoning"}


# --- cancel and delete --------------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_cancel_rules() -> None:
    """Only background responses can be cancelled (400 otherwise); a running one ends cancelled with its open item
    incomplete and no usage; cancelling again, or a finished one, returns it unchanged."""
    sim, clock = _sim()
    bg = _make(sim, clock, background=True, kinds=("mcp_call",), seconds=2.0)
    plain = _make(sim, clock)
    done = _make(sim, clock, background=True)
    async with _client(sim) as client:
        refused = await client.post(f"/responses/{plain.id}/cancel")
        clock.advance(5)  # the mcp_call runs from 4 s to 6 s
        cancelled = (await client.post(f"/responses/{bg.id}/cancel")).json()
        clock.advance(30)
        again = (await client.post(f"/responses/{bg.id}/cancel")).json()
        finished = (await client.post(f"/responses/{done.id}/cancel")).json()
        queued = (await client.post(f"/responses/{_make(sim, clock, background=True).id}/cancel")).json()
        clock.advance(30)
        after = (await client.get(f"/responses/{bg.id}")).json()
    assert refused.status_code == 400 and "background" in refused.json()["error"]["message"]
    assert cancelled["status"] == "cancelled" and cancelled["usage"] is None and cancelled["completed_at"] is None
    assert [(i["type"], i["status"]) for i in cancelled["output"]] == [("reasoning", "completed"),
                                                                         ("mcp_call", "incomplete")]  # fmt: skip
    assert again == cancelled == after
    assert finished["status"] == "completed" and finished["usage"] is not None
    assert queued["status"] == "cancelled" and queued["output"] == []  # cancelled while queued: it never started
    assert sim.truth()["responses"]["stats"]["terminal"]["cancelled"] == 2


@pytest.mark.anyio
async def test_deleted_and_unstored_responses_cannot_be_read() -> None:
    """DELETE answers response.deleted and later reads are 404; a `store: false` response is never readable."""
    sim, clock = _sim(**CALM)
    kept = _make(sim, clock)
    unstored = _make(sim, clock, store=False)
    async with _client(sim) as client:
        deleted = (await client.delete(f"/responses/{kept.id}")).json()
        assert deleted == {"id": kept.id, "object": "response.deleted", "deleted": True}
        for rid in (kept.id, unstored.id):
            assert (await client.get(f"/responses/{rid}")).status_code == 404
            assert (await client.get(f"/responses/{rid}/input_items")).status_code == 404
    by_id = {r["id"]: r for r in sim.truth()["responses"]["responses"]}
    assert by_id[kept.id]["deleted"] and by_id[unstored.id]["store"] is False


# --- validation ---------------------------------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize(("flavor", "body", "status", "code", "param"), [
    ("openai", {"model": 4, "input": "x"}, 400, "invalid_type", "model"),
    ("openai", {"input": "x"}, 400, "missing_required_parameter", "model"),
    ("openai", {"model": "m", "input": {"a": 1}}, 400, "invalid_type", "input"),
    ("openai", {"model": "m", "input": "x", "temprature": 1}, 400, "unknown_parameter", "temprature"),
    ("openai", {"model": "m", "agent_reference": {"name": "support-agent"}}, 400, "unknown_parameter",
     "agent_reference"),
    ("openai", {"model": "m", "stream": "yes"}, 400, "invalid_type", "stream"),
    ("openai", {"model": "m", "background": True, "store": False}, 400, None, "background"),
    ("openai", {"model": "m", "conversation": "conv_x", "previous_response_id": "resp_x"}, 400, None,
     "conversation"),
    ("openai", {"model": "m", "previous_response_id": "resp_x"}, 400, "previous_response_not_found",
     "previous_response_id"),
    ("openai", {"model": "m", "conversation": {"id": "conv_x"}}, 404, None, "conversation"),
    ("openai", {"model": "m", "metadata": {str(k): "v" for k in range(17)}}, 400, "object_above_max_length",
     "metadata"),
    ("openai", {"model": "m", "max_output_tokens": 3}, 400, "integer_below_min_value", "max_output_tokens"),
    ("azure", {"agent_reference": {"type": "agent_reference", "name": "nobody"}}, 404, None,
     "agent_reference.name"),
])  # fmt: skip
async def test_create_rejects_bad_bodies_with_the_api_error_body(
    flavor: str, body: dict[str, Any], status: int, code: str | None, param: str
) -> None:
    """Wrong types, unknown or missing parameters and unknown ids are answered with the API's error body."""
    sim, _ = _sim(flavor=flavor)
    async with _client(sim) as client:
        resp = await client.post("/responses", json=body)
    error = resp.json()["error"]
    assert resp.status_code == status and error["code"] == code and error["param"] == param
    assert error["type"] == "invalid_request_error" and error["message"]
    assert sim.truth()["responses"]["stats"]["responses"] == 0


# --- listings -----------------------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_foundry_listing_pages_orders_and_filters_over_many_responses() -> None:
    """Over 130+ stored responses the listing walks newest first (asc reversed) in pages of 100 or fewer, each
    response once; agent_name, agent_id and conversation_id filter; bad limits, orders and cursors are 400s."""
    sim, _ = _sim("lively", flavor="azure", seconds=100)
    async with _client(sim) as client:
        desc = await _all(client, "/responses", limit=100)
        asc = await _all(client, "/responses", limit=37, order="asc")
        agent = next(r["agent_reference"] for r in desc if r["agent_reference"])
        by_name = await _all(client, "/responses", agent_name=agent["name"])
        by_id = await _all(client, "/responses", agent_id=f"{agent['name']}:{agent['version']}")
        conv = next(r["conversation"]["id"] for r in desc if r["conversation"])
        by_conv = await _all(client, "/responses", conversation_id=conv, order="asc")
        before = (await client.get("/responses", params={"before": desc[50]["id"], "limit": 10})).json()
        wrong = ({"limit": 0}, {"limit": 101}, {"limit": "x"}, {"order": "up"}, {"after": "resp_nope"})
        bad = [await client.get("/responses", params=p) for p in wrong]
    stored = [r for r in sim.truth()["responses"]["responses"] if r["store"] and not r["deleted"]]
    assert len(desc) == len(stored) > 100 and len({r["id"] for r in desc}) == len(desc)
    assert [r["id"] for r in desc] == [r["id"] for r in asc][::-1]
    assert [r["created_at"] for r in desc] == sorted((r["created_at"] for r in desc), reverse=True)
    assert by_name and all(r["agent_reference"]["name"] == agent["name"] for r in by_name) and len(by_name) < len(desc)
    assert [r["id"] for r in by_id] == [r["id"] for r in by_name]  # one version per agent in the workload
    assert by_conv and all(r["conversation"]["id"] == conv for r in by_conv)
    assert [r["id"] for r in before["data"]] == [r["id"] for r in desc[40:50]] and before["has_more"]
    assert [r.status_code for r in bad] == [400] * 5
    assert {r.json()["error"]["param"] for r in bad} == {"limit", "order", "after"}


@pytest.mark.anyio
async def test_input_items_page_newest_first_by_default() -> None:
    """input_items lists a response's input as items (desc by default, asc on request), in cursor pages."""
    sim, clock = _sim()
    messages = [{"role": "user", "content": f"message {k}"} for k in range(45)]
    resp = _engine(sim).create_response(clock.now(), CreateParams(model="gpt-5", input=messages))
    async with _client(sim) as client:
        desc = await _all(client, f"/responses/{resp.id}/input_items", limit=10)
        asc = await _all(client, f"/responses/{resp.id}/input_items", order="asc", limit=100)
    assert [i["content"][0]["text"] for i in asc] == [m["content"] for m in messages]
    assert desc == asc[::-1] and all(i["type"] == "message" and i["id"].startswith("msg_") for i in asc)


# --- conversations ------------------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_conversation_gathers_input_then_output_items() -> None:
    """A response in a conversation adds its input at once and its output when it ends; items list newest first
    and each can be read by id; unknown conversations are 404s."""
    sim, clock = _sim(**CALM)
    async with _client(sim) as client:
        conv = (
            await client.post(
                "/conversations",
                json={"metadata": {"topic": "refunds"}, "items": [{"role": "user", "content": "hello"}]},
            )
        ).json()
        assert conv["object"] == "conversation" and conv["metadata"] == {"topic": "refunds"}
        resp = _make(sim, clock, kinds=("file_search_call",), conversation_id=conv["id"])
        early = await _all(client, f"/conversations/{conv['id']}/items")
        clock.advance(30)
        late = await _all(client, f"/conversations/{conv['id']}/items", limit=2)
        one = (await client.get(f"/conversations/{conv['id']}/items/{late[0]['id']}")).json()
        got = (await client.get(f"/conversations/{conv['id']}")).json()
        missing = await client.get("/conversations/conv_nope/items")
        bad = await client.post("/conversations", json={"items": [{"role": "user", "content": "x"}] * 21})
    assert len(early) == 2 and early[0]["content"][0]["text"] == "hi"
    assert [i["type"] for i in late] == ["message", "file_search_call", "reasoning", "message", "message"]
    assert late[0]["status"] == "completed" and late[0] == one and got == conv
    assert resp.conversation_id == conv["id"] and missing.status_code == 404
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "items"


@pytest.mark.anyio
async def test_foundry_lists_conversations_and_marks_items_with_their_response() -> None:
    """On azure conversations are listed (filtered by agent) and items carry response_id and agent_reference."""
    sim, _ = _sim("lively", flavor="azure", seconds=60)
    async with _client(sim) as client:
        convs = await _all(client, "/conversations", limit=50)
        truth = sim.truth()["responses"]
        agent = next(r["agent_reference"] for r in truth["responses"] if r["agent_reference"] and r["conversation"])
        mine = await _all(client, "/conversations", agent_name=agent["name"])
        with_items = next(c for c in truth["conversations"] if c["items"])
        items = await _all(client, f"/conversations/{with_items['id']}/items")
    assert len(convs) == truth["stats"]["conversations"] and 0 < len(mine) < len(convs)
    assert all("response_id" in i and "agent_reference" in i for i in items)
    assert {i["response_id"] for i in items} <= {r["id"] for r in truth["responses"]}


# --- truth, determinism, knobs ------------------------------------------------------------------------------------


def test_truth_stats_sum_what_the_responses_show() -> None:
    """Counts by status and token sums in `stats` equal what adding up the listed terminal responses gives."""
    sim, _ = _sim("lively", seconds=120)
    truth = sim.truth()["responses"]
    responses, stats = truth["responses"], truth["stats"]
    assert stats["responses"] == len(responses) > 100
    for status, n in stats["by_status"].items():
        assert n == sum(r["status"] == status for r in responses)
    usage = [r["usage"] for r in responses if r["usage"] is not None]
    assert stats["usage"]["input_tokens"] == sum(u["input_tokens"] for u in usage)
    assert stats["usage"]["cached_tokens"] == sum(u["input_tokens_details"]["cached_tokens"] for u in usage) > 0
    assert stats["usage"]["reasoning_tokens"] == sum(u["output_tokens_details"]["reasoning_tokens"] for u in usage)
    assert stats["usage"]["total_tokens"] == sum(u["total_tokens"] for u in usage)
    assert all((r["completed_at"] is not None) == (r["status"] == "completed") for r in responses)
    assert all(r["sim_ended_at"] is not None for r in responses if r["status"] in stats["terminal"])
    assert min(stats["terminal"].values()) > 0 and stats["background"] > 0
    assert stats["tool_calls"]["function_call"]["lookup_order"] > 0
    assert any(r["previous_response_id"] for r in responses)  # function calls are answered by follow-ups


def test_same_seed_same_objects_and_another_seed_others() -> None:
    """Two simulators with one seed hold identical responses; another seed gives other ids."""
    truths = []
    for seed in (7, 7, 8):
        sim, _ = _sim("lively", flavor="azure", seconds=40, seed=seed)
        truths.append(sim.truth()["responses"])
    assert truths[0] == truths[1] and truths[0]["stats"]["responses"] > 20
    assert {r["id"] for r in truths[0]["responses"]}.isdisjoint({r["id"] for r in truths[2]["responses"]})


def test_stuck_queued_knob_leaves_background_responses_queued_forever() -> None:
    """With stuck_queued_rate 1 every background response stays queued; the default steady preset has none."""
    stuck_sim, clock = _sim("lively", workload=ResponsesWorkload(stuck_queued_rate=1.0), seconds=30, total_runs=40)
    clock.advance(3600)
    stats = stuck_sim.truth()["responses"]["stats"]
    assert stats["background"] == stats["stuck_queued"] == stats["by_status"]["queued"] > 0
    steady, clock = _sim("steady", seconds=300)
    assert steady.truth()["responses"]["stats"]["stuck_queued"] == 0
    assert _engine(_sim("faulty")[0]).knobs.stuck_queued_rate == 0.02


# --- faults -------------------------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_faults_apply_to_the_responses_endpoints_by_name() -> None:
    """Per-endpoint faults hit only their endpoint: 5xx, 429 with retry-after, a dropped connection, a cut body,
    drift with unknown fields and values; an unknown endpoint name is refused."""
    faults = FaultConfig(endpoints={
        "get_response": FaultSpec(error_rate=1.0, error_statuses=(503,)),
        "list_input_items": FaultSpec(rate_limit_rate=1.0, retry_after_s=7),
        "get_conversation": FaultSpec(drop_rate=1.0),
        "list_responses": FaultSpec(truncate_rate=1.0),
        "list_conversation_items": FaultSpec(drift_rate=1.0),
    })  # fmt: skip
    sim, clock = _sim("lively", flavor="azure", faults=faults, seconds=30)
    resp = _make(sim, clock, background=True)
    conv = next(iter(_engine(sim).conversations))
    async with _client(sim) as client:
        failed = await client.get(f"/responses/{resp.id}")
        limited = await client.get(f"/responses/{resp.id}/input_items")
        with pytest.raises(httpx.RemoteProtocolError):
            await client.get(f"/conversations/{conv}")
        cut = await client.get("/responses")
        clock.advance(30)
        busy = max(_engine(sim).conversation_order, key=lambda c: len(c.items_at(clock.now())))
        drifted = (await client.get(f"/conversations/{busy.id}/items")).json()
        fine = await client.post(f"/responses/{resp.id}/cancel")
    assert failed.status_code == 503 and failed.json()["error"]["type"] == "server_error"
    assert limited.status_code == 429 and limited.headers["retry-after"] == "7"
    with pytest.raises(json.JSONDecodeError):
        json.loads(cut.content)
    assert drifted["data"] and all("x_sim_drift" in i for i in drifted["data"])
    assert fine.status_code == 200
    with pytest.raises(ValueError, match="unknown endpoint"):
        FaultConfig.from_dict({"endpoints": {"list_everything": {"error_rate": 1}}})


@pytest.mark.anyio
async def test_drift_on_responses_adds_unknown_status_and_item_types() -> None:
    """Drifted responses carry an unknown field and, over a few reads, an unknown status and item type."""
    sim, clock = _sim(faults=FaultConfig(default=FaultSpec(drift_rate=1.0)))
    resp = _make(sim, clock, background=True)
    clock.advance(30)
    async with _client(sim) as client:
        reads = [(await client.get(f"/responses/{resp.id}")).json() for _ in range(12)]
    assert all("x_sim_drift" in r for r in reads)
    assert any(r["status"] == "sim_drifted_status" for r in reads)
    assert any(r["output"][-1]["type"] == "sim_drifted_item" for r in reads)


@pytest.mark.anyio
async def test_request_budget_answers_429_with_rate_headers() -> None:
    """Past the request budget the Responses endpoints answer 429 rate_limit_exceeded with retry-after."""
    sim, _ = _sim(faults=FaultConfig(request_budget=2, budget_window_s=60))
    async with _client(sim) as client:
        answers = [await client.get("/responses/resp_x") for _ in range(3)]
    assert [a.status_code for a in answers] == [404, 404, 429]
    assert answers[2].json()["error"]["code"] == "rate_limit_exceeded" and "retry-after" in answers[2].headers
    assert answers[0].headers["x-ratelimit-remaining-requests"] == "1"


# --- CLI ----------------------------------------------------------------------------------------------------------


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    simulator_cli.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_cli_builds_the_responses_protocol_on_either_flavour() -> None:
    """`--protocol responses` builds the Responses simulator, with azure's base path, the stuck knob and webhooks."""
    sim = simulator_cli.build(_parse("--protocol", "responses", "--flavor", "azure", "--stuck-queued-rate", "0.5",
                                     "--webhook-url", "http://127.0.0.1:9/h", "--webhook-secret", "whsec_c2VjcmV0",
                                     "--fault", "create_response:error_rate=0.5"))  # fmt: skip
    assert sim.responses is not None and sim.responses.delivery is not None
    assert sim.base_path == "/api/projects/sim/openai/v1" and sim.responses.engine.knobs.stuck_queued_rate == 0.5
    assert sim.faults.for_endpoint("create_response").error_rate == 0.5
    plain = simulator_cli.build(_parse("--protocol", "responses", "--scenario", "faulty"))
    assert plain.base_path == "/v1" and _engine(plain).knobs.stuck_queued_rate == 0.02
    with pytest.raises(ValueError, match="stuck_queued_rate"):
        Simulator(protocol="responses", responses_workload=ResponsesWorkload(stuck_queued_rate=2.0))
