"""Typed records parsed from Assistants v2 JSON, and the tolerant parsers that build them.

The parsers follow the rules of the tolerant-parsing kit (`stepscope.client.parsing`): unknown fields ignored,
open enums kept as strings, only a broken identity or an absurd number rejects an object. Azure's extra step and
tool-call types parse like the known ones. A terminal timestamp before `created_at` is kept; mapping clamps such an
end to the start, so no span or duration is negative.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Protocol

from stepscope.client.parsing import (
    as_object,
    as_text,
    created_at,
    object_id,
    optional_str,
    required_str,
    timestamp_field,
    token_count,
    total_tokens,
)
from stepscope.core.records import UnitRef
from stepscope.errors import InvalidObject

RUN_TERMINAL = frozenset({"completed", "failed", "cancelled", "expired", "incomplete"})
STEP_TERMINAL = frozenset({"completed", "failed", "cancelled", "expired"})
STEP_OBJECTS = frozenset({"thread.run.step", "assistant.run.step"})


@dataclass(frozen=True, slots=True)
class Usage:
    """Token usage of a run or step. `total_tokens` is kept as the server reported it."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


@dataclass(frozen=True, slots=True)
class LastError:
    """`last_error` of a run or step. `code` is an open string (Azure); `message` never leaves the process."""

    code: str
    message: str


@dataclass(frozen=True, slots=True)
class ToolCall:
    """One entry of `step_details.tool_calls`.

    `name` is the function's (or MCP tool's, connected agent's) name, else None. `arguments` holds function
    arguments or a code interpreter's input; `output` a function's output or the code interpreter's logs. Both
    are content: they reach telemetry only when content capture is on.
    """

    id: str
    type: str
    name: str | None = None
    arguments: str | None = None
    output: str | None = None


@dataclass(frozen=True, slots=True)
class RunStep:
    """A run step (`thread.run.step`)."""

    id: str
    run_id: str
    thread_id: str
    assistant_id: str
    type: str
    status: str
    created_at: int
    completed_at: int | None = None
    failed_at: int | None = None
    cancelled_at: int | None = None
    expired_at: int | None = None
    last_error: LastError | None = None
    usage: Usage | None = None
    message_id: str | None = None
    tool_calls: tuple[ToolCall, ...] = ()

    @property
    def is_terminal(self) -> bool:
        """True once the step reached a final status; unknown statuses count as terminal only with an end."""
        if self.status in STEP_TERMINAL:
            return True
        return self.status != "in_progress" and self.ended_at is not None

    @property
    def ended_at(self) -> int | None:
        """The terminal timestamp that matches the status, else the first one present."""
        ends = {
            "completed": self.completed_at,
            "failed": self.failed_at,
            "cancelled": self.cancelled_at,
            "expired": self.expired_at,
        }
        return _terminal_time(self.status, ends)


@dataclass(frozen=True, slots=True)
class Run:
    """A run (`thread.run`). `traceparent` comes from `metadata.traceparent` when present."""

    id: str
    thread_id: str
    assistant_id: str
    status: str
    created_at: int
    model: str | None = None
    started_at: int | None = None
    expires_at: int | None = None
    completed_at: int | None = None
    failed_at: int | None = None
    cancelled_at: int | None = None
    last_error: LastError | None = None
    incomplete_reason: str | None = None
    usage: Usage | None = None
    traceparent: str | None = None

    @property
    def ref(self) -> UnitRef:
        return UnitRef(self.thread_id, self.id)

    @property
    def is_terminal(self) -> bool:
        return self.status in RUN_TERMINAL

    @property
    def ended_at(self) -> int | None:
        """The terminal timestamp: `expires_at` stands in for expired runs, which have no `expired_at`."""
        if not self.is_terminal:
            return None
        ends = {
            "completed": self.completed_at,
            "failed": self.failed_at,
            "cancelled": self.cancelled_at,
            "expired": self.expires_at,
        }
        # incomplete has no timestamp of its own; the server sets completed_at (or failed_at) for it.
        return _terminal_time(self.status, ends)


def _terminal_time(status: str, ends: dict[str, int | None]) -> int | None:
    """The timestamp named by `status`, else the first terminal timestamp present (unknown or open statuses)."""
    by_status = ends.get(status)
    if by_status is not None:
        return by_status
    return next((value for value in ends.values() if value is not None), None)


@dataclass(frozen=True, slots=True)
class Assistant:
    """An assistant (`asst_...`): only what telemetry needs."""

    id: str
    name: str | None
    model: str | None


# --- parsers -------------------------------------------------------------------------------------------------


def _usage(value: object, kind: str, oid: str | None) -> Usage | None:
    """Usage when both counts are integers, else None; a count outside 0..`MAX_TOKENS` makes the object invalid."""
    if not isinstance(value, Mapping):
        return None
    prompt = token_count(value.get("prompt_tokens"), "prompt_tokens", kind, oid)
    completion = token_count(value.get("completion_tokens"), "completion_tokens", kind, oid)
    if prompt is None or completion is None:
        return None
    return Usage(prompt, completion, total_tokens(value.get("total_tokens"), (prompt, completion)))


def _last_error(value: object) -> LastError | None:
    if not isinstance(value, Mapping):
        return None
    code = value.get("code")
    message = value.get("message")
    return LastError(
        code=code if isinstance(code, str) and code else "_OTHER",
        message=message if isinstance(message, str) else "",
    )


def parse_tool_call(obj: object, *, step_id: str | None = None) -> ToolCall:
    """`{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}", "output": null}}`."""
    kind = "tool_call"
    if not isinstance(obj, Mapping):
        raise InvalidObject(kind, "not a JSON object", object_id=step_id)
    call_id = required_str(obj, "id", kind, step_id)
    call_type = required_str(obj, "type", kind, call_id)
    body = obj.get(call_type)
    body = body if isinstance(body, Mapping) else {}
    name = optional_str(body, "name")
    if call_type == "code_interpreter":
        arguments = as_text(body.get("input"))
        outputs = body.get("outputs")
        logs = [
            o.get("logs")
            for o in (outputs if isinstance(outputs, list) else ())
            if isinstance(o, Mapping) and isinstance(o.get("logs"), str)
        ]
        output = "\n".join(logs) if logs else None  # type: ignore[arg-type]
    else:
        arguments = as_text(body.get("arguments", body.get("input")))
        output = as_text(body.get("output"))
    return ToolCall(id=call_id, type=call_type, name=name, arguments=arguments, output=output)


def parse_step(obj: object) -> RunStep:
    """Parse one `thread.run.step` object; raise `InvalidObject` when its identity is unreadable."""
    kind = "run_step"
    obj = as_object(obj, kind)
    oid = object_id(obj)
    step_id = required_str(obj, "id", kind, oid)
    details = obj.get("step_details")
    details = details if isinstance(details, Mapping) else {}
    step_type = required_str(obj, "type", kind, step_id)
    message_id = None
    calls: tuple[ToolCall, ...] = ()
    if step_type == "message_creation":
        mc = details.get("message_creation")
        message_id = optional_str(mc, "message_id") if isinstance(mc, Mapping) else None
    raw_calls = details.get("tool_calls")
    if isinstance(raw_calls, list):
        calls = tuple(parse_tool_call(c, step_id=step_id) for c in raw_calls)
    return RunStep(
        id=step_id,
        run_id=required_str(obj, "run_id", kind, step_id),
        thread_id=required_str(obj, "thread_id", kind, step_id),
        assistant_id=optional_str(obj, "assistant_id") or optional_str(obj, "agent_id") or "_unknown",
        type=step_type,
        status=required_str(obj, "status", kind, step_id),
        created_at=created_at(obj, kind, step_id),
        completed_at=timestamp_field(obj, "completed_at", kind, step_id),
        failed_at=timestamp_field(obj, "failed_at", kind, step_id),
        cancelled_at=timestamp_field(obj, "cancelled_at", kind, step_id),
        expired_at=timestamp_field(obj, "expired_at", kind, step_id),
        last_error=_last_error(obj.get("last_error")),
        usage=_usage(obj.get("usage"), kind, step_id),
        message_id=message_id,
        tool_calls=calls,
    )


def parse_run(obj: object) -> Run:
    """Parse one `thread.run` object; raise `InvalidObject` when its identity is unreadable."""
    kind = "run"
    obj = as_object(obj, kind)
    oid = object_id(obj)
    run_id = required_str(obj, "id", kind, oid)
    incomplete = obj.get("incomplete_details")
    metadata = obj.get("metadata")
    traceparent = metadata.get("traceparent") if isinstance(metadata, Mapping) else None
    return Run(
        id=run_id,
        thread_id=required_str(obj, "thread_id", kind, run_id),
        assistant_id=optional_str(obj, "assistant_id") or optional_str(obj, "agent_id") or "_unknown",
        status=required_str(obj, "status", kind, run_id),
        created_at=created_at(obj, kind, run_id),
        model=optional_str(obj, "model"),
        started_at=timestamp_field(obj, "started_at", kind, run_id),
        expires_at=timestamp_field(obj, "expires_at", kind, run_id),
        completed_at=timestamp_field(obj, "completed_at", kind, run_id),
        failed_at=timestamp_field(obj, "failed_at", kind, run_id),
        cancelled_at=timestamp_field(obj, "cancelled_at", kind, run_id),
        last_error=_last_error(obj.get("last_error")),
        incomplete_reason=optional_str(incomplete, "reason") if isinstance(incomplete, Mapping) else None,
        usage=_usage(obj.get("usage"), kind, run_id),
        traceparent=traceparent if isinstance(traceparent, str) else None,
    )


def parse_assistant(obj: object) -> Assistant:
    """Parse an assistant (or Azure agent) object."""
    kind = "assistant"
    obj = as_object(obj, kind)
    return Assistant(
        id=required_str(obj, "id", kind, object_id(obj)),
        name=optional_str(obj, "name"),
        model=optional_str(obj, "model"),
    )


class StepSource(Protocol):
    """The Assistants API as the poller sees it. Raises only `SourceError` subclasses.

    List methods page lazily (the caller may stop early) and skip objects that fail to parse, reporting each to
    the source's invalid-object callback.
    """

    def list_runs(self, thread_id: str, *, limit: int = 20) -> AsyncIterator[Run]:
        """Runs of a thread, newest first."""
        ...

    async def get_run(self, ref: UnitRef) -> Run: ...

    def list_steps(self, ref: UnitRef, *, after: str | None = None, limit: int = 100) -> AsyncIterator[RunStep]:
        """Steps of a run in ascending creation order, starting after step id `after`."""
        ...

    async def get_step(self, ref: UnitRef, step_id: str) -> RunStep: ...

    async def get_assistant(self, assistant_id: str) -> Assistant: ...
