"""Helpers for `STEPSCOPE_PROTOCOL=responses stepscope serve` end to end: serve's environment, the simulator's
Responses truth, what it says the counters and spans must be, and reading them back from a scrape and a receiver.

The simulated clocks here run at speed 1 (`SimClock(1.0)`), with the workload's durations cut to fractions of a
second instead: simulated timestamps are then wall-clock timestamps, so an end stepscope observed (a wall-clock
moment) can be compared with the moment the simulator ended the response.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import httpx

from stepscope.simulator import Scenario, scenario_named
from stepscope.testing import ReceivedSpan
from tests.integration._collectors import Samples

NS = 1_000_000_000
TERMINAL = ("completed", "failed", "cancelled", "incomplete")
RESPONSES = {"protocol": "responses"}
OBSERVED_END = "stepscope.end_time.observed"
NOT_TOOL_CALLS = frozenset({"workflow_action"})
"""Item types the simulator's truth counts as tool calls (it counts every item but messages, reasoning and `_output`
items) that stepscope does not (`vocabulary.is_tool_call`: `*_call` types): Foundry's workflow steps."""
Counters = dict[str, Counter[tuple[str, ...]]]


def workload(total_runs: int, **overrides: Any) -> Scenario:
    """A Responses workload of `total_runs` responses (plus follow-ups) created at 4 per second, each lasting one or
    two seconds, ending in every terminal status."""
    knobs: dict[str, Any] = {
        "runs_per_second": 4.0, "threads": 3, "total_runs": total_runs, "steps": (2, 3),
        "step_seconds": (0.2, 0.8), "queue_seconds": (0.1, 0.3), "submit_delay_s": (0.2, 0.5),
        "failure_rate": 0.2, "incomplete_rate": 0.2, "cancel_rate": 0.3, **overrides,
    }  # fmt: skip
    return scenario_named("steady", **knobs)


def serve_env(api_url: str, traces_url: str, *, azure: bool, **extra: str) -> dict[str, str]:
    env = {
        "OPENAI_BASE_URL": api_url,
        "OPENAI_API_KEY": "sk-sim",
        "STEPSCOPE_PROTOCOL": "responses",
        "STEPSCOPE_POLL_INTERVAL": "0.2",
        "STEPSCOPE_DISCOVERY_INTERVAL": "0.5",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": traces_url,
        "OTEL_BSP_SCHEDULE_DELAY": "50",
    }
    if azure:
        env["STEPSCOPE_FLAVOR"] = "azure"
    return {**env, **extra}


def requests_to(samples: Samples, endpoint: str, **labels: str) -> float:
    """stepscope's own API requests to `endpoint`, as it counts them."""
    return sum(v for (n, ls), v in samples.items() if n == "stepscope_api_requests_total"
               and ("endpoint", endpoint) in ls and all((k, x) in ls for k, x in labels.items()))  # fmt: skip


# --- the simulator's truth ----------------------------------------------------------------------------------------


def responses_truth(root_url: str) -> dict[str, Any]:
    body = httpx.get(f"{root_url}/_sim/truth", timeout=10).json()
    return body["responses"]  # type: ignore[no-any-return]


def workload_done(world: dict[str, Any], total_runs: int) -> bool:
    """The workload started all `total_runs` responses, every response is terminal, and every one that ended on a
    function call has its follow-up (the response whose input answers that call)."""
    responses = world["responses"]
    answered = {
        i.get("call_id") for r in responses for i in r["input_items"] if i.get("type") == "function_call_output"
    }
    started = [r for r in responses if r["source"] == "workload"
               and not any(i.get("type") == "function_call_output" for i in r["input_items"])]  # fmt: skip
    last = [r["output"][-1] for r in responses if r["status"] == "completed" and r["output"]]
    waiting = [item for item in last if item["type"] == "function_call" and item["call_id"] not in answered]
    return len(started) == total_runs and all(r["status"] in TERMINAL for r in responses) and not waiting


def expected_counters(stats: dict[str, Any]) -> Counters:
    """The domain counters a correct stepscope reports for the truth's terminal responses, by label values."""
    items: Counter[tuple[str, ...]] = Counter()
    for item_type, by_status in stats["items"].items():
        for item_status, n in by_status.items():
            items[(item_type, "_unknown" if item_status == "none" else item_status)] += n
    tools: Counter[tuple[str, ...]] = Counter()
    for item_type, by_name in stats["tool_calls"].items():
        if item_type not in NOT_TOOL_CALLS:
            for name, n in by_name.items():
                tools[(name,)] += n
    usage = stats["usage"]
    tokens = {"input": usage["input_tokens"], "output": usage["output_tokens"],
              "cache_read": usage["cached_tokens"], "reasoning": usage["reasoning_tokens"]}  # fmt: skip
    return {
        "runs": Counter({(s,): n for s, n in stats["terminal"].items() if n}),
        "tokens": Counter({(t,): n for t, n in tokens.items() if n}),
        "items": items,
        "tools": tools,
        "durations": Counter(
            {("completed",): stats["terminal"]["completed"]} if stats["terminal"]["completed"] else {}
        ),
    }


def counters(samples: Samples) -> Counters:
    """The same figures as `expected_counters`, read from a scrape (responses series only, zeros left out)."""
    out: Counters = {k: Counter() for k in ("runs", "tokens", "items", "tools", "durations")}
    families = {
        "stepscope_runs_total": ("runs", ("status",)),
        "stepscope_tokens_total": ("tokens", ("token_type",)),
        "stepscope_run_steps_total": ("items", ("step_type", "status")),
        "stepscope_tool_calls_total": ("tools", ("tool_name",)),
        "stepscope_run_duration_seconds_count": ("durations", ("status",)),
    }
    for (name, labels), value in samples.items():
        if name not in families or ("protocol", "responses") not in labels or not value:
            continue
        which, keys = families[name]
        by_key = dict(labels)
        out[which][tuple(by_key[k] for k in keys)] += int(value)
    return out


def plus(a: Counters, b: Counters) -> Counters:
    return {k: a[k] + b[k] for k in a}


# --- what arrived at the receiver ---------------------------------------------------------------------------------


def response_spans(spans: list[ReceivedSpan]) -> list[ReceivedSpan]:
    """The response spans (each names its response in `gen_ai.response.id`)."""
    return [s for s in spans if "gen_ai.response.id" in s.attributes]


def tool_spans(spans: list[ReceivedSpan]) -> list[ReceivedSpan]:
    return [s for s in spans if s.name.startswith("execute_tool ")]


def one_span_each(spans: list[ReceivedSpan]) -> dict[str, ReceivedSpan]:
    """The response spans by response id; fails when a response has two."""
    found = response_spans(spans)
    copies = Counter(s.attributes["gen_ai.response.id"] for s in found)
    assert [rid for rid, n in copies.items() if n > 1] == [], "a response arrived as two spans"
    return {s.attributes["gen_ai.response.id"]: s for s in found}


def span_name(response: dict[str, Any]) -> str:
    """What the truth says a response's span is called: its agent's invocation, else a chat with its model."""
    agent = response.get("agent_reference")
    return f"invoke_agent {agent['name']}" if agent else f"chat {response['model']}"


def assert_response_span(span: ReceivedSpan, response: dict[str, Any], *, provider: str, seen_by: float) -> None:
    """The span of a terminal response as the truth has it: named by its agent or model, started at `created_at`;
    a completed one ends exactly at `completed_at`; any other ends at an observed moment, after the simulator ended
    it and before `seen_by` (Unix seconds), and says so; failed is ERROR with the error code, incomplete ERROR with
    the reason, cancelled no error; its provider, ids, agent, model and usage as the truth's, and nothing it lacks."""
    rid, outcome, attrs = response["id"], response["status"], span.attributes
    assert span.name == span_name(response), rid
    assert span.kind == "client" and attrs["openai.response.status"] == outcome, rid
    assert span.start_ns == response["created_at"] * NS, rid
    if outcome == "completed":
        assert span.end_ns == response["completed_at"] * NS, rid
        assert OBSERVED_END not in attrs, rid
    else:
        assert attrs[OBSERVED_END] is True, rid
        # 50 ms of slack: the simulated clock reads time.monotonic() from a time.time() start.
        assert response["sim_ended_at"] - 0.05 <= span.end_ns / NS <= seen_by, (rid, span.end_ns / NS, response)
    errors = {"failed": (response["error"] or {}).get("code"),
              "incomplete": (response["incomplete_details"] or {}).get("reason")}  # fmt: skip
    assert (span.status == "error") == (outcome in errors), rid
    assert attrs.get("error.type") == errors.get(outcome), rid
    agent = response.get("agent_reference") or {}
    conversation = response["conversation"] or {}
    usage = response["usage"] or {}
    expected = {
        "gen_ai.provider.name": provider,
        "gen_ai.operation.name": "invoke_agent" if agent else "chat",
        "gen_ai.agent.name": agent.get("name"),
        "gen_ai.agent.version": agent.get("version"),
        "openai.api.type": None if agent else "responses",
        "gen_ai.response.model": response["model"],
        "gen_ai.conversation.id": conversation.get("id"),
        "openai.response.previous_id": response["previous_response_id"],
        "openai.response.background": response["background"],
        "gen_ai.usage.input_tokens": usage.get("input_tokens"),
        "gen_ai.usage.output_tokens": usage.get("output_tokens"),
        "gen_ai.usage.cache_read.input_tokens": (usage.get("input_tokens_details") or {}).get("cached_tokens"),
        "gen_ai.usage.reasoning.output_tokens": (usage.get("output_tokens_details") or {}).get("reasoning_tokens"),
    }
    assert {k: attrs.get(k) for k in expected} == expected, rid
