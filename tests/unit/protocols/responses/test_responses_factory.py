"""What `STEPSCOPE_PROTOCOL=responses` accepts: its settings, its `/v1/watch` body, its webhook events."""

from __future__ import annotations

import pytest

from stepscope import protocols
from stepscope.config import load
from stepscope.errors import ConfigError
from stepscope.protocols.base import InvalidRegistration
from stepscope.protocols.responses.factory import RESPONSE_EVENTS, response_id

KEY = {"OPENAI_API_KEY": "sk-test"}
FOUNDRY = {
    **KEY,
    "STEPSCOPE_FLAVOR": "azure",
    "OPENAI_BASE_URL": "https://acct.services.ai.azure.com/api/projects/proj/openai/v1",
}
PROJECT = "/subscriptions/0000/resourceGroups/rg/providers/Microsoft.CognitiveServices/accounts/acct/projects/proj"


def test_the_foundry_project_id_must_look_like_one() -> None:
    """STEPSCOPE_FOUNDRY_PROJECT_ID takes a project's resource id; anything else is one line naming the setting."""
    config = load(env={**FOUNDRY, "STEPSCOPE_FOUNDRY_PROJECT_ID": f" {PROJECT} "})
    assert config.api.foundry_project_id == PROJECT
    with pytest.raises(ConfigError) as raised:
        load(env={**KEY, "STEPSCOPE_FOUNDRY_PROJECT_ID": "proj"})
    assert [p.split(":")[0] for p in raised.value.problems] == ["STEPSCOPE_FOUNDRY_PROJECT_ID (api.foundry_project_id)"]


def test_responses_refuses_settings_of_other_protocols() -> None:
    """Threads belong to Assistants, and the Foundry project id to Foundry: each is named when misused."""
    factory = protocols.get("responses")
    threads = load(env={**KEY, "STEPSCOPE_PROTOCOL": "responses", "STEPSCOPE_THREADS": "thread_a"})
    assert [p.split(":")[0] for p in factory.check(threads)] == ["STEPSCOPE_THREADS (poll.threads)"]
    project = load(env={**KEY, "STEPSCOPE_PROTOCOL": "responses", "STEPSCOPE_FOUNDRY_PROJECT_ID": PROJECT})
    assert [p.split(":")[0] for p in factory.check(project)] == [
        "STEPSCOPE_FOUNDRY_PROJECT_ID (api.foundry_project_id)"
    ]
    foundry = load(env={**FOUNDRY, "STEPSCOPE_PROTOCOL": "responses", "STEPSCOPE_AGENTS": "helper",
                        "STEPSCOPE_FOUNDRY_PROJECT_ID": PROJECT})  # fmt: skip
    assert factory.check(foundry) == []


@pytest.mark.parametrize(
    "fields",
    [{"thread_id": "thread_a"}, {"response_id": "resp_1", "run_id": "run_1"}, {"response_id": "../x"}, {}],
)
def test_a_registration_names_one_response(fields: dict[str, str]) -> None:
    """`/v1/watch` for responses takes exactly a response id that could be one; anything else is refused."""
    assert response_id({"response_id": "resp_1"}) == "resp_1"
    with pytest.raises(InvalidRegistration):
        response_id(fields)


def test_only_terminal_response_events_make_a_read() -> None:
    """The webhook events that name a finished background response are the ones acted on."""
    assert {"response.completed", "response.failed", "response.cancelled", "response.incomplete"} == RESPONSE_EVENTS
