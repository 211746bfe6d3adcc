"""Which proxied requests create or resume runs, and the `traceparent` that may come with them.

Matched on the end of the request path, so every base path works the same: `/v1/threads/...` (OpenAI),
`/api/projects/<p>/threads/...` (Foundry Agents) and `/openai/threads/...` (Azure OpenAI):

| request                                           | route kind            | ids from the path   |
|---------------------------------------------------|-----------------------|---------------------|
| `POST .../threads/{thread_id}/runs`               | `create_run`          | thread              |
| `POST .../threads/runs`                           | `create_thread_and_run` | none              |
| `POST .../threads/{thread_id}/runs/{run_id}/submit_tool_outputs` | `submit_tool_outputs` | thread, run |
| `POST .../agents/sessions/{session_id}/events` (Agents API) | `session_events` | session (as thread) |
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote

CREATE_RUN = "create_run"
CREATE_THREAD_AND_RUN = "create_thread_and_run"
SUBMIT_TOOL_OUTPUTS = "submit_tool_outputs"
SESSION_EVENTS = "session_events"

_ID = r"([A-Za-z0-9_.~%-]{1,128})"
_CREATE_RUN = re.compile(rf"/threads/{_ID}/runs/?\Z")
_CREATE_THREAD_AND_RUN = re.compile(r"/threads/runs/?\Z")
_SUBMIT = re.compile(rf"/threads/{_ID}/runs/{_ID}/submit_tool_outputs/?\Z")
_SESSION_EVENTS = re.compile(rf"/agents/sessions/{_ID}/events/?\Z")
# W3C Trace Context level 1: version 00, non-zero trace and parent ids, lower-case hex.
_TRACEPARENT = re.compile(r"00-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-[0-9a-f]{2}")


@dataclass(frozen=True, slots=True)
class RunRoute:
    """A request that creates or resumes a run: its kind and the ids its path names."""

    kind: str
    thread_id: str | None = None
    run_id: str | None = None

    @property
    def creates(self) -> bool:
        """True for the two create requests (a `traceparent` header applies to them), False for a resume."""
        return self.kind in (CREATE_RUN, CREATE_THREAD_AND_RUN)


def classify(method: str, path: str) -> RunRoute | None:
    """The run route of a request, or None for every other request (those are only relayed).

    >>> classify("POST", "/v1/threads/thread_abc/runs")
    RunRoute(kind='create_run', thread_id='thread_abc', run_id=None)
    """
    if method != "POST":
        return None
    if match := _SESSION_EVENTS.search(path):
        return RunRoute(SESSION_EVENTS, thread_id=unquote(match.group(1)))
    if "/threads/" not in path:
        return None
    if match := _CREATE_RUN.search(path):
        return RunRoute(CREATE_RUN, thread_id=unquote(match.group(1)))
    if _CREATE_THREAD_AND_RUN.search(path):
        return RunRoute(CREATE_THREAD_AND_RUN)
    if match := _SUBMIT.search(path):
        return RunRoute(SUBMIT_TOOL_OUTPUTS, thread_id=unquote(match.group(1)), run_id=unquote(match.group(2)))
    return None


def valid_traceparent(value: bytes | None) -> str | None:
    """The header's value when it is a well-formed W3C `traceparent` (version 00), else None."""
    if not value:
        return None
    text = value.decode("latin-1").strip()
    return text if _TRACEPARENT.fullmatch(text) else None
