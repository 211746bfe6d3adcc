"""AssistantsClient against stepscope's simulator (in-process ASGI transport, manual clock), both flavours."""

from __future__ import annotations

from collections import Counter

import httpx
import pytest

from stepscope.client import ApiKeyAuth, BearerAuth, RetryPolicy
from stepscope.client.auth import Auth
from stepscope.errors import InvalidObject, SourceError
from stepscope.protocols.assistants.client import AssistantsClient
from stepscope.simulator import FaultConfig, FaultSpec, Simulator, scenario_named
from stepscope.testing import FakeClock
from tests.kit.client import Recorder

KEYS = {"openai": "sk-sim-key-0001", "azure": "az-sim-key-0001"}


async def crawl(flavor: str, faults: FaultConfig, retry: RetryPolicy) -> tuple[Recorder, Counter[str], int]:
    """List runs and steps of 20 threads; return the observer, the errors raised and the steps read."""
    clock = FakeClock()
    sim = Simulator(scenario_named("lively"), faults, flavor=flavor, api_key=KEYS[flavor], clock=clock, seed=3)
    clock.advance(120)

    async def sleep(seconds: float) -> None:
        clock.advance(seconds)  # the simulated service and the client share one manual timeline

    auth: Auth = ApiKeyAuth(KEYS[flavor]) if flavor == "azure" else BearerAuth(KEYS[flavor])
    observer = Recorder()
    errors: Counter[str] = Counter()
    steps = 0
    async with httpx.AsyncClient(transport=sim.transport()) as http:
        client = AssistantsClient(
            http,
            base_url="http://sim" + sim.base_path,
            auth=auth,
            api_version="v1" if flavor == "azure" else None,
            flavor=flavor,
            observer=observer,
            clock=clock,
            sleep=sleep,
            rng=lambda: 0.5,
            retry=retry,
        )
        for thread_id in sim.thread_ids[:20]:
            try:
                async for run in client.list_runs(thread_id, limit=5):
                    steps += len([s async for s in client.list_steps(run.ref, limit=3)])
            except (SourceError, InvalidObject) as exc:
                errors[type(exc).__name__] += 1
    return observer, errors, steps


@pytest.mark.parametrize("flavor", ["openai", "azure"])
@pytest.mark.anyio
async def test_budget_avoids_rate_limit(flavor: str) -> None:
    """With a 50-requests-per-10-s budget and no other faults, pacing alone keeps every answer a 200."""
    faults = FaultConfig(request_budget=50, budget_window_s=10.0)
    observer, errors, steps = await crawl(flavor, faults, RetryPolicy())
    codes = Counter(code for _, code, _ in observer.requests)
    assert steps > 100
    assert len(observer.requests) > 50
    assert codes == Counter({"200": len(observer.requests)})
    assert not errors


@pytest.mark.parametrize("flavor", ["openai", "azure"])
@pytest.mark.anyio
async def test_faults_are_absorbed(flavor: str) -> None:
    """5xx, 429 bursts, dropped connections and truncated bodies are retried until the data is read."""
    spec = FaultSpec(error_rate=0.05, rate_limit_rate=0.03, rate_limit_burst=2, drop_rate=0.03, truncate_rate=0.03)
    observer, errors, steps = await crawl(flavor, FaultConfig(default=spec), RetryPolicy(max_retries=6))
    codes = Counter(code for _, code, _ in observer.requests)
    assert steps > 100
    assert codes["429"] and codes["error"] and codes["200"]
    assert sum(codes[c] for c in ("500", "502", "503")) > 0
    assert not errors
