"""Typed records parsed from Assistants v2 JSON, and the tolerant parsers that build them.

Parsing rules, so that a newer or an Azure server never breaks parsing: unknown fields are ignored, unknown
enum values are kept as plain strings, missing optional fields become None, and Azure's extra step and tool-call
types parse like the known ones. Only a missing or mistyped *identity* (ids, `created_at`, `status`, `type`) makes
an object invalid: the parser then raises `InvalidObject`, which the caller counts and skips.

Numbers outside sane bounds also make an object invalid, because no span or counter built from them would be
true: any timestamp outside [1970-01-01, 2100-01-01) (`MIN_TIMESTAMP`, `MAX_TIMESTAMP`; nanoseconds past 2100 are
near the end of OTLP's unsigned 64-bit range, and 10^12 seconds is far beyond it) and any usage token count
outside 0..10^9 (`MAX_TOKENS`). A terminal timestamp before `created_at` is kept; mapping clamps such an end to the
start, so no span or duration is negative.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from stepscope.errors import InvalidObject

RUN_TERMINAL = frozenset({"completed", "failed", "cancelled", "expired", "incomplete"})
STEP_TERMINAL = frozenset({"completed", "failed", "cancelled", "expired"})
STEP_OBJECTS = frozenset({"thread.run.step", "assistant.run.step"})
MIN_TIMESTAMP = 0
"""Earliest accepted Unix timestamp (inclusive): 1970-01-01T00:00:00Z."""
MAX_TIMESTAMP = 4_102_444_800
"""Latest accepted Unix timestamp (exclusive): 2100-01-01T00:00:00Z."""
MAX_TOKENS = 1_000_000_000
"""Largest accepted token count in one object's usage; a step's context window is a few million at most."""


@dataclass(frozen=True, slots=True)
class RunRef:
    """The address of one run: both ids are needed for every run and step path."""

    thread_id: str
    run_id: str


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
    def ref(self) -> RunRef:
        return RunRef(self.thread_id, self.id)

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


@dataclass(frozen=True, slots=True)
class Page:
    """One page of a list endpoint. `invalid` holds items that failed to parse (already skipped)."""

    data: tuple[Any, ...]
    has_more: bool
    last_id: str | None
    invalid: tuple[InvalidObject, ...] = ()


# --- parsers -------------------------------------------------------------------------------------------------


def _req_str(obj: Mapping[str, Any], key: str, kind: str, oid: str | None) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not value:
        raise InvalidObject(kind, f"field {key!r} must be a non-empty string", object_id=oid)
    return value


def _opt_str(obj: Mapping[str, Any], key: str) -> str | None:
    value = obj.get(key)
    return value if isinstance(value, str) else None


def timestamp_field(
    obj: Mapping[str, Any], key: str, kind: str, oid: str | None, *, required: bool = False
) -> int | None:
    """`obj[key]` as whole Unix seconds; None when absent or untyped (`InvalidObject` if `required`).

    Raises `InvalidObject` for a number outside `MIN_TIMESTAMP`..`MAX_TIMESTAMP`. Shared by every parser.
    """
    value = obj.get(key)
    if value is None and not required:
        return None
    # bool is an int subclass; a timestamp of True is a malformed object, not 1970-01-01T00:00:01.
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        if required:
            raise InvalidObject(kind, f"field {key!r} must be a Unix timestamp", object_id=oid)
        return None
    # A typed but absurd number is corrupt data, not a schema variant: the whole object is rejected (and counted).
    if not MIN_TIMESTAMP <= value < MAX_TIMESTAMP:
        raise InvalidObject(kind, f"field {key!r} is outside 1970-01-01..2100-01-01", object_id=oid)
    return int(value)


def _usage(value: object, kind: str, oid: str | None) -> Usage | None:
    """Usage when both counts are integers, else None; a count outside 0..`MAX_TOKENS` makes the object invalid."""
    if not isinstance(value, Mapping):
        return None
    numbers = []
    for key in ("prompt_tokens", "completion_tokens"):
        number = value.get(key)
        if isinstance(number, bool) or not isinstance(number, int):
            return None
        if not 0 <= number <= MAX_TOKENS:
            raise InvalidObject(kind, f"usage {key!r} is outside 0..{MAX_TOKENS}", object_id=oid)
        numbers.append(number)
    total = value.get("total_tokens")
    if isinstance(total, bool) or not isinstance(total, int) or not 0 <= total <= 2 * MAX_TOKENS:
        total = numbers[0] + numbers[1]
    return Usage(numbers[0], numbers[1], total)


def _last_error(value: object) -> LastError | None:
    if not isinstance(value, Mapping):
        return None
    code = value.get("code")
    message = value.get("message")
    return LastError(
        code=code if isinstance(code, str) and code else "_OTHER",
        message=message if isinstance(message, str) else "",
    )


def _object_id(obj: object) -> str | None:
    if isinstance(obj, Mapping):
        value = obj.get("id")
        if isinstance(value, str):
            return value
    return None


def _text(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping | list):
        # Azure tools may send structured arguments; keep them as JSON text like function arguments.
        return json.dumps(value, ensure_ascii=False, default=str)
    return str(value)


def parse_tool_call(obj: object, *, step_id: str | None = None) -> ToolCall:
    """`{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}", "output": null}}`."""
    kind = "tool_call"
    if not isinstance(obj, Mapping):
        raise InvalidObject(kind, "not a JSON object", object_id=step_id)
    call_id = _req_str(obj, "id", kind, step_id)
    call_type = _req_str(obj, "type", kind, call_id)
    body = obj.get(call_type)
    body = body if isinstance(body, Mapping) else {}
    name = _opt_str(body, "name")
    if call_type == "code_interpreter":
        arguments = _text(body.get("input"))
        outputs = body.get("outputs")
        logs = [
            o.get("logs")
            for o in (outputs if isinstance(outputs, list) else ())
            if isinstance(o, Mapping) and isinstance(o.get("logs"), str)
        ]
        output = "\n".join(logs) if logs else None  # type: ignore[arg-type]
    else:
        arguments = _text(body.get("arguments", body.get("input")))
        output = _text(body.get("output"))
    return ToolCall(id=call_id, type=call_type, name=name, arguments=arguments, output=output)


def parse_step(obj: object) -> RunStep:
    """Parse one `thread.run.step` object; raise `InvalidObject` when its identity is unreadable."""
    kind = "run_step"
    if not isinstance(obj, Mapping):
        raise InvalidObject(kind, "not a JSON object")
    oid = _object_id(obj)
    step_id = _req_str(obj, "id", kind, oid)
    created_at = timestamp_field(obj, "created_at", kind, step_id, required=True)
    assert created_at is not None
    details = obj.get("step_details")
    details = details if isinstance(details, Mapping) else {}
    step_type = _req_str(obj, "type", kind, step_id)
    message_id = None
    calls: tuple[ToolCall, ...] = ()
    if step_type == "message_creation":
        mc = details.get("message_creation")
        message_id = _opt_str(mc, "message_id") if isinstance(mc, Mapping) else None
    raw_calls = details.get("tool_calls")
    if isinstance(raw_calls, list):
        calls = tuple(parse_tool_call(c, step_id=step_id) for c in raw_calls)
    return RunStep(
        id=step_id,
        run_id=_req_str(obj, "run_id", kind, step_id),
        thread_id=_req_str(obj, "thread_id", kind, step_id),
        assistant_id=_opt_str(obj, "assistant_id") or _opt_str(obj, "agent_id") or "_unknown",
        type=step_type,
        status=_req_str(obj, "status", kind, step_id),
        created_at=created_at,
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
    if not isinstance(obj, Mapping):
        raise InvalidObject(kind, "not a JSON object")
    oid = _object_id(obj)
    run_id = _req_str(obj, "id", kind, oid)
    created_at = timestamp_field(obj, "created_at", kind, run_id, required=True)
    assert created_at is not None
    incomplete = obj.get("incomplete_details")
    metadata = obj.get("metadata")
    traceparent = metadata.get("traceparent") if isinstance(metadata, Mapping) else None
    return Run(
        id=run_id,
        thread_id=_req_str(obj, "thread_id", kind, run_id),
        assistant_id=_opt_str(obj, "assistant_id") or _opt_str(obj, "agent_id") or "_unknown",
        status=_req_str(obj, "status", kind, run_id),
        created_at=created_at,
        model=_opt_str(obj, "model"),
        started_at=timestamp_field(obj, "started_at", kind, run_id),
        expires_at=timestamp_field(obj, "expires_at", kind, run_id),
        completed_at=timestamp_field(obj, "completed_at", kind, run_id),
        failed_at=timestamp_field(obj, "failed_at", kind, run_id),
        cancelled_at=timestamp_field(obj, "cancelled_at", kind, run_id),
        last_error=_last_error(obj.get("last_error")),
        incomplete_reason=_opt_str(incomplete, "reason") if isinstance(incomplete, Mapping) else None,
        usage=_usage(obj.get("usage"), kind, run_id),
        traceparent=traceparent if isinstance(traceparent, str) else None,
    )


def parse_assistant(obj: object) -> Assistant:
    """Parse an assistant (or Azure agent) object."""
    kind = "assistant"
    if not isinstance(obj, Mapping):
        raise InvalidObject(kind, "not a JSON object")
    return Assistant(
        id=_req_str(obj, "id", kind, _object_id(obj)),
        name=_opt_str(obj, "name"),
        model=_opt_str(obj, "model"),
    )


def parse_page(obj: object, kind: str, parse: Any) -> Page:
    """Parse a list envelope; items that fail to parse are collected in `Page.invalid`, not raised.

    Only `data`, `has_more` and the last raw item's id are relied on (Azure's envelope has no `first_id`). The raw
    last id is the cursor even when that item was invalid, so a bad object never stalls paging.
    """
    if not isinstance(obj, Mapping) or not isinstance(obj.get("data"), list):
        raise InvalidObject("list", f"{kind} list without a 'data' array")
    items: list[Any] = []
    invalid: list[InvalidObject] = []
    for raw in obj["data"]:
        try:
            items.append(parse(raw))
        except InvalidObject as exc:
            invalid.append(exc)
    raw_data = obj["data"]
    last_id = _object_id(raw_data[-1]) if raw_data else None
    has_more = obj.get("has_more") is True
    if has_more and last_id is None:
        raise InvalidObject("list", f"{kind} list has_more without a readable last id")
    return Page(data=tuple(items), has_more=has_more, last_id=last_id, invalid=tuple(invalid))
