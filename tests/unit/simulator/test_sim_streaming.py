"""The simulator's streamed runs (SSE read off the timeline) and its Azure thread listing."""

from __future__ import annotations

import json

import httpx
import pytest

from stepscope.receivers.proxy.sse import SseParser
from stepscope.simulator import FaultConfig, FaultSpec, ManualClock, SimClock, Simulator, scenario_named

pytestmark = pytest.mark.anyio
OPENAI = {"Authorization": "Bearer sk-sim", "OpenAI-Beta": "assistants=v2"}
FUNCTION_TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}


async def _events(client: httpx.AsyncClient, path: str, body: dict[str, object]) -> list[tuple[str, str]]:
    parser, events = SseParser(), []
    async with client.stream("POST", path, json=body) as resp:
        assert resp.headers["content-type"].startswith("text/event-stream")
        async for chunk in resp.aiter_bytes():
            events += parser.feed(chunk)
    return [(e.event, e.data) for e in events]


async def test_stream_to_requires_action_then_submit_stream_to_completion() -> None:
    """A streamed create ends at requires_action; the streamed submit resumes, every step ends before the next
    starts and the run completes last, followed by done; every object is as of its event."""
    sim = Simulator(scenario_named("quiet", step_seconds=(1.0, 2.0)), clock=SimClock(speed=200))
    async with httpx.AsyncClient(transport=sim.transport(), base_url="http://sim/v1", headers=OPENAI) as client:
        asst = (await client.post("/assistants", json={"model": "gpt-4o", "tools": [FUNCTION_TOOL]})).json()
        thread = (await client.post("/threads", json={})).json()
        first = await _events(client, f"/threads/{thread['id']}/runs", {"assistant_id": asst["id"], "stream": True})
        assert [e for e, _ in first] == ["thread.run.created", "thread.run.queued", "thread.run.in_progress",
                                         "thread.run.step.created", "thread.run.step.in_progress",
                                         "thread.run.requires_action", "done"]  # fmt: skip
        run = json.loads(first[-2][1])
        outputs = [
            {"tool_call_id": c["id"], "output": "1"}
            for c in run["required_action"]["submit_tool_outputs"]["tool_calls"]
        ]
        second = await _events(client, f"/threads/{thread['id']}/runs/{run['id']}/submit_tool_outputs",
                               {"tool_outputs": outputs, "stream": True})  # fmt: skip
    names = [e for e, _ in second]
    assert names[:3] == ["thread.run.queued", "thread.run.in_progress", "thread.run.step.completed"]
    assert names[-2:] == ["thread.run.completed", "done"]
    objects = [json.loads(d) for e, d in second if e != "done"]
    assert all(o["status"] == e.rsplit(".", 1)[1] for (e, _), o in zip(second, objects, strict=False)
               if not e.endswith((".created", ".in_progress", ".delta")))  # fmt: skip
    assert objects[-1]["completed_at"] is not None and objects[-1]["usage"] is not None


async def test_truncate_fault_cuts_the_stream_without_done() -> None:
    """With truncate_rate 1 on create_run the stream ends after two events and no done."""
    faults = FaultConfig(endpoints={"create_run": FaultSpec(truncate_rate=1.0)})
    sim = Simulator(scenario_named("quiet"), faults, clock=SimClock(speed=200))
    async with httpx.AsyncClient(transport=sim.transport(), base_url="http://sim/v1", headers=OPENAI) as client:
        asst = (await client.post("/assistants", json={"model": "gpt-4o"})).json()
        thread = (await client.post("/threads", json={})).json()
        events = await _events(client, f"/threads/{thread['id']}/runs", {"assistant_id": asst["id"], "stream": True})
    assert [e for e, _ in events] == ["thread.run.created", "thread.run.queued"]


async def test_azure_lists_threads_newest_first_with_cursors() -> None:
    """GET /threads on Azure pages newest first with after/before; OpenAI answers 404."""
    clock = ManualClock()
    sim = Simulator(scenario_named("quiet", threads=5), flavor="azure", api_key="k", clock=clock)
    async with httpx.AsyncClient(transport=sim.transport(), base_url="http://sim" + sim.base_path,
                                 headers={"api-key": "k"}, params={"api-version": "v1"}) as client:  # fmt: skip
        clock.advance(10)
        newest = (await client.post("/threads", json={})).json()["id"]
        page = (await client.get("/threads", params={"limit": 4})).json()
        rest = (await client.get("/threads", params={"limit": 4, "after": page["last_id"]})).json()
        back = (await client.get("/threads", params={"order": "asc", "before": newest})).json()
    assert set(page) == {"data", "last_id", "has_more"} and page["has_more"] and not rest["has_more"]
    listed = [t["id"] for t in page["data"] + rest["data"]]
    assert listed[0] == newest and sorted(listed[1:]) == sorted(sim.thread_ids) and len(listed) == 6
    assert [t["id"] for t in back["data"]] == list(reversed(listed[1:]))
    plain = Simulator(scenario_named("quiet"))
    async with httpx.AsyncClient(transport=plain.transport(), base_url="http://sim/v1", headers=OPENAI) as client:
        assert (await client.get("/threads")).status_code == 404
