"""Sample runs and steps for mapping and exporter tests: one base, overridden per test module and per test."""

from __future__ import annotations

from stepscope.models import Run, RunStep


def make_run(**kw: object) -> Run:
    """A completed run `run_1` on `thread_1` (created 100, started 102, completed 130); `kw` overrides any field."""
    fields: dict[str, object] = {
        "id": "run_1",
        "thread_id": "thread_1",
        "assistant_id": "asst_1",
        "status": "completed",
        "created_at": 100,
        "model": "gpt-4o",
        "started_at": 102,
        "completed_at": 130,
        **kw,
    }
    return Run(**fields)  # type: ignore[arg-type]


def make_step(**kw: object) -> RunStep:
    """A completed message-creation step `step_1` of `run_1` (created 103, completed 105); `kw` overrides."""
    fields: dict[str, object] = {
        "id": "step_1",
        "run_id": "run_1",
        "thread_id": "thread_1",
        "assistant_id": "asst_1",
        "type": "message_creation",
        "status": "completed",
        "created_at": 103,
        "completed_at": 105,
        **kw,
    }
    return RunStep(**fields)  # type: ignore[arg-type]
