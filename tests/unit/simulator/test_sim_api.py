"""The simulator's HTTP surface in-process: validation, headers, faults and the /_sim control endpoints."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import pytest

from stepscope.client.parsing import parse_page
from stepscope.protocols.assistants.records import parse_step
from stepscope.simulator import FaultConfig, FaultSpec, ManualClock, Simulator, scenario_named

HEADERS = {"Authorization": "Bearer sk-sim", "OpenAI-Beta": "assistants=v2"}


def _sim(faults: FaultConfig | None = None, scenario: str = "lively") -> tuple[Simulator, ManualClock]:
    clock = ManualClock()
    sim = Simulator(scenario_named(scenario), faults, clock=clock, seed=3)
    clock.advance(60)
    return sim, clock


def _client(sim: Simulator, headers: dict[str, str] | None = None) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=sim.transport(), base_url="http://sim/v1", headers=headers or HEADERS)


def _some_run(sim: Simulator) -> dict[str, Any]:
    runs: list[dict[str, Any]] = [r for r in sim.truth()["runs"] if len(r["steps"]) >= 2]
    return runs[0]


def _steps_path(run: dict[str, Any]) -> str:
    return f"/threads/{run['thread_id']}/runs/{run['id']}/steps"


def _error(resp: httpx.Response) -> dict[str, Any]:
    body: dict[str, Any] = resp.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    error: dict[str, Any] = body["error"]
    return error


@pytest.mark.anyio
async def test_responses_carry_request_id_processing_time_and_rate_limit_headers() -> None:
    """Every API answer has x-request-id, openai-processing-ms and the x-ratelimit-* family."""
    sim, _ = _sim()
    async with _client(sim) as client:
        resp = await client.get(_steps_path(_some_run(sim)))
    assert resp.status_code == 200
    names = ["x-request-id", "openai-processing-ms", "x-ratelimit-limit-requests", "x-ratelimit-remaining-requests"]
    for name in [*names, "x-ratelimit-reset-requests", "x-ratelimit-reset-tokens"]:
        assert name in resp.headers, name


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("headers", "status", "code"),
    [
        ({"OpenAI-Beta": "assistants=v2"}, 401, "invalid_api_key"),
        ({"Authorization": "Bearer sk-other", "OpenAI-Beta": "assistants=v2"}, 401, "invalid_api_key"),
        ({"Authorization": "Bearer sk-sim"}, 400, "invalid_beta"),
    ],
)
async def test_auth_and_beta_header_are_enforced(headers: dict[str, str], status: int, code: str) -> None:
    """A missing or wrong key is 401 invalid_api_key; a missing OpenAI-Beta header is 400 invalid_beta."""
    sim, _ = _sim()
    async with _client(sim, headers) as client:
        resp = await client.get(f"/threads/{sim.thread_ids[0]}/runs")
    assert resp.status_code == status and _error(resp)["code"] == code


@pytest.mark.anyio
@pytest.mark.parametrize("query", [{"limit": 0}, {"limit": 101}, {"limit": "x"}, {"order": "up"}, {"after": "step_no"}])
async def test_bad_list_parameters_are_400(query: dict[str, Any]) -> None:
    """limit outside 1..100, an unknown order or an unknown cursor id is a 400 invalid_request_error."""
    sim, _ = _sim()
    async with _client(sim) as client:
        resp = await client.get(_steps_path(_some_run(sim)), params=query)
    assert resp.status_code == 400 and _error(resp)["type"] == "invalid_request_error"


@pytest.mark.anyio
async def test_unknown_ids_are_404_and_wrong_prefixes_400() -> None:
    """Unknown objects get 404; ids with the wrong prefix get 400 naming the expected prefix."""
    sim, _ = _sim()
    run = _some_run(sim)
    async with _client(sim) as client:
        missing = await client.get(f"/threads/{run['thread_id']}/runs/run_nope")
        step = await client.get(f"{_steps_path(run)}/step_nope")
        wrong = await client.get(f"/threads/{run['thread_id']}/runs/{run['thread_id']}")
        asst = await client.get("/assistants/asst_nope")
    assert (missing.status_code, step.status_code, asst.status_code) == (404, 404, 404)
    assert wrong.status_code == 400 and _error(wrong)["param"] == "run_id"


@pytest.mark.anyio
async def test_empty_page_has_null_cursors() -> None:
    """A list with no items has first_id and last_id null and has_more false."""
    sim, _ = _sim(scenario="quiet")
    async with _client(sim) as client:
        resp = await client.get(f"/threads/{sim.thread_ids[0]}/runs")
    assert resp.json() == {"object": "list", "data": [], "first_id": None, "last_id": None, "has_more": False}


@pytest.mark.anyio
async def test_truth_lists_workload_threads_before_any_run() -> None:
    """GET /_sim/truth needs no key and lists the seeded workload threads at once."""
    sim = Simulator(scenario_named("steady"), clock=ManualClock())
    async with httpx.AsyncClient(transport=sim.transport(), base_url="http://sim") as client:
        truth = (await client.get("/_sim/truth")).json()
    assert truth["runs"] == [] and truth["threads"] == sim.thread_ids and len(sim.thread_ids) == 20


# --- faults --------------------------------------------------------------------------------------------------


async def _get_steps(sim: Simulator) -> httpx.Response:
    async with _client(sim) as client:
        return await client.get(_steps_path(_some_run(sim)))


@pytest.mark.anyio
async def test_error_rate_answers_5xx_with_error_body() -> None:
    """error_rate 1 makes every request a 5xx from error_statuses with a server_error body."""
    sim, _ = _sim(FaultConfig(FaultSpec(error_rate=1.0, error_statuses=(503,))))
    resp = await _get_steps(sim)
    assert resp.status_code == 503 and _error(resp)["type"] == "server_error"


@pytest.mark.anyio
async def test_rate_limit_burst_then_recovery() -> None:
    """A 429 burst lasts rate_limit_burst requests with retry-after, then requests succeed again."""
    sim, _ = _sim(FaultConfig(FaultSpec(rate_limit_rate=1.0, rate_limit_burst=2, retry_after_s=3)))
    first, second = await _get_steps(sim), await _get_steps(sim)
    assert [first.status_code, second.status_code] == [429, 429]
    assert first.headers["retry-after"] == "3" and _error(first)["code"] == "rate_limit_exceeded"
    sim.set_faults(FaultConfig(FaultSpec(rate_limit_rate=0.0)))
    assert (await _get_steps(sim)).status_code == 200


@pytest.mark.anyio
async def test_request_budget_answers_429_when_exhausted_and_resets() -> None:
    """With a budget of 3 per window the 4th request is 429 with retry-after; the next window serves again."""
    sim, clock = _sim(FaultConfig(request_budget=3, budget_window_s=2.0))
    codes = [(await _get_steps(sim)) for _ in range(4)]
    assert [r.status_code for r in codes] == [200, 200, 200, 429]
    assert codes[2].headers["x-ratelimit-remaining-requests"] == "0" and codes[3].headers["retry-after"] == "2"
    clock.advance(2.0)
    assert (await _get_steps(sim)).status_code == 200


@pytest.mark.anyio
async def test_latency_delays_the_answer() -> None:
    """latency_ms 80 delays a response by at least 80 ms of wall time."""
    sim, _ = _sim(FaultConfig(FaultSpec(latency_ms=80)))
    started = time.perf_counter()
    assert (await _get_steps(sim)).status_code == 200
    assert time.perf_counter() - started >= 0.08


@pytest.mark.anyio
async def test_drop_raises_a_transport_error_in_process() -> None:
    """drop_rate 1 makes the in-process transport fail like a closed socket."""
    sim, _ = _sim(FaultConfig(FaultSpec(drop_rate=1.0)))
    with pytest.raises(httpx.RemoteProtocolError):
        await _get_steps(sim)


@pytest.mark.anyio
@pytest.mark.parametrize("field", ["truncate_rate", "malformed_rate"])
async def test_truncated_and_malformed_bodies_are_not_json(field: str) -> None:
    """truncate_rate and malformed_rate give a 200 whose body does not parse as JSON."""
    rates: dict[str, Any] = {field: 1.0}
    sim, _ = _sim(FaultConfig(FaultSpec(**rates)))
    resp = await _get_steps(sim)
    assert resp.status_code == 200
    with pytest.raises(json.JSONDecodeError):
        json.loads(resp.content)


@pytest.mark.anyio
async def test_drift_adds_unknown_fields_and_enum_values_that_tolerant_parsing_survives() -> None:
    """drift_rate 1 adds unknown fields and values (activities, unknown tools, missing usage); parsing still works."""
    sim, _ = _sim(FaultConfig(FaultSpec(drift_rate=1.0)))
    seen_types: set[str] = set()
    missing_usage = 0
    async with _client(sim) as client:
        for run in sim.truth()["runs"][:30]:
            body = (await client.get(_steps_path(run))).json()
            page = parse_page(body, "run_step", parse_step)
            assert not page.invalid and len(page.data) == len(body["data"])
            for raw in body["data"]:
                assert "x_sim_drift" in raw
                seen_types.add(raw["type"])
                missing_usage += "usage" not in raw
                seen_types.update(c["type"] for c in raw["step_details"].get("tool_calls", []))
    assert "activities" in seen_types and {"mcp", "bing_grounding"} & seen_types and missing_usage > 0


@pytest.mark.anyio
async def test_per_endpoint_faults_override_the_default() -> None:
    """A fault set for list_steps only leaves get_run untouched."""
    sim, _ = _sim(FaultConfig(endpoints={"list_steps": FaultSpec(error_rate=1.0)}))
    run = _some_run(sim)
    async with _client(sim) as client:
        steps = await client.get(_steps_path(run))
        got = await client.get(f"/threads/{run['thread_id']}/runs/{run['id']}")
    assert steps.status_code >= 500 and got.status_code == 200


@pytest.mark.anyio
async def test_faults_endpoint_replaces_the_config_at_runtime() -> None:
    """POST /_sim/faults switches a 401 on; a bad config is rejected with 400 and the old one kept."""
    sim, _ = _sim()
    async with httpx.AsyncClient(transport=sim.transport(), base_url="http://sim") as ctl:
        ok = await ctl.post("/_sim/faults", json={"default": {"auth_fail": True}})
        bad = await ctl.post("/_sim/faults", json={"default": {"error_rate": 2}})
    assert ok.status_code == 200 and bad.status_code == 400
    assert (await _get_steps(sim)).status_code == 401
