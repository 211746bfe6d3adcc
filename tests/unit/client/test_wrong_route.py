"""A 404 for a path the server does not serve is told apart from a 404 for a missing object, and the start-up
credential check turns the first into one configuration problem naming `OPENAI_BASE_URL`."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from stepscope import protocols
from stepscope.client import BearerAuth
from stepscope.client.answers import unknown_route
from stepscope.client.connect import connect
from stepscope.config import load
from stepscope.errors import ConfigError, NotFound, UnknownRoute
from stepscope.protocols.assistants.client import AssistantsClient
from stepscope.protocols.base import ApiContext, ProtocolInstance
from stepscope.simulator import Simulator, scenario_named
from tests.kit.client import NO_RETRY, REF, SECRET, error_body, harness, reply

pytestmark = pytest.mark.anyio

MISSING = error_body("No run found with id 'run_abc'.")


class TestTellingApart:
    @pytest.mark.parametrize(
        ("answer", "evidence"),
        [
            (error_body("Invalid URL (GET /threads/thread_abc/runs/run_abc)"), "Invalid URL"),
            (
                error_body("Unknown request URL: GET /threads/x. Please check the URL.", "unknown_url"),
                "Unknown request URL",
            ),
            ({"error": {"code": "404", "message": "Resource not found"}}, "Resource not found"),
            ({"detail": "Not Found"}, '{"detail":"Not Found"}'),
            ({"error": "not found"}, '{"error":"not found"}'),
            ("<html><body><h1>404 Not Found</h1></body></html>", "an HTML page"),
            ("404 page not found\n", "404 page not found"),
            ("", "an empty body"),
        ],
    )
    async def test_a_route_the_server_does_not_have(self, answer: Any, evidence: str) -> None:
        """A 404 whose body is not an API error naming an object is an `UnknownRoute` with the request and what
        showed it; it is still a `NotFound`."""
        async with harness([reply(answer, 404)], retry=NO_RETRY) as h:
            with pytest.raises(UnknownRoute) as info:
                await h.client.get_run(REF)
        error = info.value
        assert isinstance(error, NotFound)
        assert error.request == "GET /threads/thread_abc/runs/run_abc"
        assert error.evidence == evidence
        assert error.status_code == 404

    async def test_a_missing_object_is_a_plain_not_found(self) -> None:
        """The API's error naming the object it did not find is a `NotFound`, not an `UnknownRoute`."""
        async with harness([reply(MISSING, 404)], retry=NO_RETRY) as h:
            with pytest.raises(NotFound) as info:
                await h.client.get_run(REF)
        assert not isinstance(info.value, UnknownRoute)
        assert "No run found with id 'run_abc'." in str(info.value)

    @pytest.mark.parametrize(
        ("padding", "evidence"),
        [("", "no route for <redacted>"), ("x" * 40, "x" * 40 + " no route for <re...")],
    )
    async def test_evidence_never_shows_the_key(self, padding: str, evidence: str) -> None:
        """A text body echoing the credential shows it redacted, also where the quote is cut inside it."""
        async with harness([reply(f"{padding} no route for {SECRET}".strip(), 404)], retry=NO_RETRY) as h:
            with pytest.raises(UnknownRoute) as info:
                await h.client.get_run(REF)
        assert info.value.evidence == evidence

    def test_long_bodies_are_cut(self) -> None:
        """Evidence from a long body is one short line."""
        evidence = unknown_route(("word " * 100).encode())
        assert evidence is not None
        assert len(evidence) <= 60
        assert evidence.endswith("...")

    async def test_the_simulator_tells_them_apart(self) -> None:
        """The simulator answers a path off its `/v1` prefix with `Invalid URL` (an `UnknownRoute`) and a missing
        thread with an API error naming it (a plain `NotFound`)."""
        sim = Simulator(scenario_named("quiet"))
        auth = BearerAuth(sim.api_key)
        async with httpx.AsyncClient(transport=sim.transport()) as http:
            wrong = AssistantsClient(http, base_url="http://sim", auth=auth, retry=NO_RETRY)
            right = AssistantsClient(http, base_url=f"http://sim{sim.base_path}", auth=auth, retry=NO_RETRY)
            with pytest.raises(UnknownRoute) as off:
                await wrong.get_run(REF)
            with pytest.raises(NotFound) as missing:
                await right.get_run(REF)
        assert (off.value.request, off.value.evidence) == ("GET /threads/thread_abc/runs/run_abc", "Invalid URL")
        assert not isinstance(missing.value, UnknownRoute)
        assert "No thread found with id 'thread_abc'" in str(missing.value)


async def probe(protocol: str, sim: Simulator, base_url: str) -> None:
    """The start-up credential check of `protocol` against `sim` in-process, with `base_url`."""
    config = load(env={"OPENAI_BASE_URL": base_url, "OPENAI_API_KEY": sim.api_key, "STEPSCOPE_PROTOCOL": protocol})
    api = connect(config, transport=sim.transport())
    try:
        instance: ProtocolInstance = protocols.get(protocol).open(ApiContext(config=config, connection=api))
        await instance.probe()
    finally:
        await api.aclose()


class TestCredentialProbe:
    async def test_a_base_url_without_v1_is_one_problem_naming_the_setting(self) -> None:
        """The Assistants probe against the simulator's root fails with one line: the setting, the URL, the request,
        what answered it, and where the base URL usually ends."""
        sim = Simulator(scenario_named("quiet"))
        with pytest.raises(ConfigError) as info:
            await probe("assistants", sim, "http://sim")
        assert info.value.problems == [
            "OPENAI_BASE_URL (api.base_url): http://sim does not serve the Assistants API (GET "
            "/assistants/asst_stepscope_credential_check answered 404 Invalid URL); the base URL usually ends in /v1"
        ]

    @pytest.mark.parametrize(("protocol", "api"), [("agents", "Agents API"), ("responses", "Responses API")])
    async def test_a_server_of_another_api(self, protocol: str, api: str) -> None:
        """A protocol's probe against a server of another API, at the right `/v1`, names the API it missed."""
        sim = Simulator(scenario_named("quiet"))  # serves the Assistants API only
        with pytest.raises(ConfigError) as info:
            await probe(protocol, sim, f"http://sim{sim.base_path}")
        (problem,) = info.value.problems
        assert problem.startswith(f"OPENAI_BASE_URL (api.base_url): http://sim/v1 does not serve the {api} (GET /")
        assert problem.endswith(f"answered 404 Invalid URL); it ends in /v1 already: is it a server of the {api}?")

    @pytest.mark.parametrize("protocol", ["assistants", "agents", "responses"])
    async def test_the_missing_probe_object_still_accepts_the_credentials(self, protocol: str) -> None:
        """On a server of the protocol, the 404 for the made-up object the probe asks for means the key was
        accepted."""
        sim = Simulator(scenario_named("quiet"), protocol=protocol)
        await probe(protocol, sim, f"http://sim{sim.base_path}")
