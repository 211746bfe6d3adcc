"""The start-up credential check is bounded, interruptible and gives its reason; the "nothing to watch" hint comes
once per episode, also when every configured thread was dropped later."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry

from stepscope.commands.sidecar import CredentialCheck, Sidecar
from stepscope.commands.wiring import Seams
from stepscope.config import load
from stepscope.errors import AuthError, ConfigError, Unavailable, reason_of
from stepscope.simulator import Simulator, scenario_named
from stepscope.testing import eventually

pytestmark = pytest.mark.anyio

URL = "https://api.example.test/v1"


async def never() -> None:
    """A probe the API never answers."""
    await asyncio.Event().wait()


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


class TestCredentialCheck:
    async def test_a_stop_abandons_a_check_the_api_never_answers(self, caplog: pytest.LogCaptureFixture) -> None:
        """While the API keeps the request open, a stop cancels the request and the start returns with a warning
        that says the API did not answer before the stop."""
        caplog.set_level(logging.INFO, "stepscope")
        stop, cancelled = asyncio.Event(), asyncio.Event()

        async def silent() -> None:
            try:
                await asyncio.Event().wait()
            finally:
                cancelled.set()

        check = CredentialCheck(silent, URL, stop=stop, timeout_s=60.0, notice_s=0.0)
        starting = asyncio.create_task(check.start())
        await eventually(lambda: "waiting for the API" in caplog.text, what="the waiting notice")
        stop.set()
        await starting
        assert cancelled.is_set()
        (warning,) = warnings(caplog)
        assert warning.startswith(f"cannot check the API at {URL} (no answer in ")
        assert warning.endswith("s before the stop)")

    async def test_no_answer_within_the_bound_is_a_warning_with_its_reason(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A request still unanswered at the bound is abandoned with a warning naming the bound."""
        check = CredentialCheck(never, URL, stop=asyncio.Event(), timeout_s=0.05)
        await check.start()
        assert warnings(caplog) == [
            f"cannot check the API at {URL} yet (no answer in 0.05s); polling retries with backoff"
        ]

    async def test_an_error_without_a_message_is_named_by_its_type(self, caplog: pytest.LogCaptureFixture) -> None:
        """A failure whose message is empty is reported by its type, never as `()`."""

        async def failing() -> None:
            raise Unavailable("")

        await CredentialCheck(failing, URL, stop=asyncio.Event()).start()
        assert warnings(caplog) == [f"cannot check the API at {URL} yet (Unavailable); polling retries with backoff"]
        assert reason_of(httpx.ReadTimeout("")) == "ReadTimeout"

    async def test_a_slow_answer_is_announced_then_judged(self, caplog: pytest.LogCaptureFixture) -> None:
        """A check still waiting after the notice time says so, then reports the answer when it comes."""
        caplog.set_level(logging.INFO, "stepscope")
        answer = asyncio.Event()

        async def slow() -> None:
            await answer.wait()

        check = CredentialCheck(slow, URL, stop=asyncio.Event(), timeout_s=60.0, notice_s=0.0)
        starting = asyncio.create_task(check.start())
        await eventually(lambda: "waiting for the API" in caplog.text, what="the waiting notice")
        answer.set()
        await starting
        messages = [r.getMessage() for r in caplog.records]
        assert messages == [
            f"waiting for the API at {URL} to answer the credential check (at most 60s more)",
            f"API at {URL} accepted the credentials",
        ]

    async def test_a_refused_key_is_a_configuration_problem(self) -> None:
        """A 401 is one problem naming the key's settings."""

        async def refused() -> None:
            raise AuthError("get_assistant: HTTP 401: Incorrect API key provided", status_code=401)

        with pytest.raises(ConfigError) as info:
            await CredentialCheck(refused, URL, stop=asyncio.Event()).start()
        assert info.value.problems == [
            f"api.api_key (OPENAI_API_KEY, STEPSCOPE_AUTH): {URL} rejected the credentials: get_assistant: HTTP 401: "
            "Incorrect API key provided"
        ]


@pytest.fixture
async def dropped(tmp_path: Path) -> AsyncIterator[tuple[Sidecar, Simulator]]:
    """A sidecar against the simulator in-process, configured with two threads the API does not have."""
    sim = Simulator(scenario_named("quiet"))
    env = {
        "OPENAI_BASE_URL": f"http://sim{sim.base_path}",
        "OPENAI_API_KEY": sim.api_key,
        "STEPSCOPE_THREADS": "thread_nope1,thread_nope2",
        "STEPSCOPE_DISCOVERY_INTERVAL": "0.05",
        "STEPSCOPE_STATE": str(tmp_path / "state.db"),
        "OTEL_TRACES_EXPORTER": "none",
    }
    sidecar = Sidecar(load(env=env), Seams(registry=CollectorRegistry(), transport=sim.transport()), serve_http=False)
    try:
        await sidecar.start()
        yield sidecar, sim
    finally:
        await sidecar.shutdown()


async def test_the_hint_comes_once_when_every_configured_thread_was_dropped(
    dropped: tuple[Sidecar, Simulator], caplog: pytest.LogCaptureFixture
) -> None:
    """Once both configured threads answered 404, one warning says there is nothing to watch, which threads were
    dropped, and names the proxy; it is not repeated while the episode lasts, and comes again in the next one."""
    sidecar, sim = dropped
    discovery, registrations, idle = sidecar.parts.finders.discovery, sidecar.parts.finders.registrations, sidecar.idle
    assert registrations is not None
    assert idle is not None

    def hints() -> list[str]:
        return [m for m in warnings(caplog) if m.startswith("nothing ") and "to watch" in m]

    await eventually(lambda: len(hints()) == 1, what="the nothing-to-watch hint")
    (hint,) = hints()
    assert "the configured thread(s) thread_nope1, thread_nope2 answered 404 (not found)" in hint
    assert hint.endswith("or put the proxy in front of the API (STEPSCOPE_PROXY_LISTEN)")
    passes: set[float | None] = set()

    def more_passes() -> bool:
        passes.add(discovery.last_pass)
        return len(passes) > 4

    await eventually(more_passes, what="four more discovery passes")
    assert len(hints()) == 1

    await registrations.watch({"thread_id": sim.thread_ids[0]})
    assert not idle.check()  # something to watch: the episode ends
    await registrations.unwatch({"thread_id": sim.thread_ids[0]})
    await eventually(lambda: len(hints()) == 2, what="the hint of the next episode")
