"""The one set of sample runs and steps: a base record per type, overridden per test module and per test."""

from __future__ import annotations

from stepscope.protocols.assistants.records import Run, RunStep


def make_run(**kw: object) -> Run:
    """A run `run_1` on `thread_1` of `asst_1` (model gpt-4o, created 100, started 102); `kw` overrides any field.

    The status is `completed` unless given; a completed run ends at 130 unless `completed_at` says otherwise, and a
    run in any other status has no `completed_at` unless given.
    """
    status = kw.get("status", "completed")
    fields: dict[str, object] = {
        "id": "run_1",
        "thread_id": "thread_1",
        "assistant_id": "asst_1",
        "status": "completed",
        "created_at": 100,
        "model": "gpt-4o",
        "started_at": 102,
        "completed_at": 130 if status == "completed" else None,
        **kw,
    }
    return Run(**fields)  # type: ignore[arg-type]


def make_step(run: Run | None = None, **kw: object) -> RunStep:
    """A message-creation step `step_1` (created 103) of `run`, or of `make_run()`'s ids; `kw` overrides any field.

    The status is `completed` unless given; a completed step ends at 105 unless `completed_at` says otherwise, and a
    step in any other status has no `completed_at` unless given.
    """
    status = kw.get("status", "completed")
    fields: dict[str, object] = {
        "id": "step_1",
        "run_id": run.id if run else "run_1",
        "thread_id": run.thread_id if run else "thread_1",
        "assistant_id": run.assistant_id if run else "asst_1",
        "type": "message_creation",
        "status": "completed",
        "created_at": 103,
        "completed_at": 105 if status == "completed" else None,
        **kw,
    }
    return RunStep(**fields)  # type: ignore[arg-type]
