"""Tolerant parsers from Responses API JSON to the records of `stepscope.protocols.responses.records`.

The rules of the tolerant-parsing kit (`stepscope.client.parsing`): unknown fields are ignored, open enums are kept
as plain strings, missing optional fields become None, and only a missing or mistyped identity (`id`, `created_at`,
`status`) makes a response invalid (`InvalidObject`, which the client counts). Timestamps outside [1970, 2100) and
token counts outside 0..10^9 reject the whole response. An item without a readable `type` is kept as `_unknown`:
a response is never lost for one odd item. Content (message text, reasoning summaries, tool arguments and outputs)
is kept only with `content=True`. Pure functions: no I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from stepscope.client.parsing import (
    as_object,
    as_text,
    created_at,
    object_id,
    optional_str,
    parse_usage,
    required_str,
    timestamp_field,
)
from stepscope.protocols.responses.records import AgentReference, Item, Response

KIND = "response"
MAX_ITEMS = 10_000
"""Output items kept per response at most: the span shows 128 of them, the metrics count these."""


def parse_response(obj: object, *, content: bool = False) -> Response:
    """Parse one Response; raise `InvalidObject` when its identity is unreadable.

    `{"id": "resp_1", "object": "response", "created_at": 100, "completed_at": 104, "status": "completed",
    "model": "gpt-5", "usage": {...}, "conversation": {"id": "conv_1"}, "output": [...]}` ->
    `Response("resp_1", "completed", 100, 104, "gpt-5", conversation_id="conv_1", ...)`.
    """
    o = as_object(obj, KIND)
    rid = required_str(o, "id", KIND, object_id(o))
    created = created_at(o, KIND, rid)
    error, incomplete = o.get("error"), o.get("incomplete_details")
    status = required_str(o, "status", KIND, rid)
    error_code = None
    if isinstance(error, Mapping) or status == "failed":
        code = error.get("code") if isinstance(error, Mapping) else None
        error_code = code if isinstance(code, str) and code else "_OTHER"
    reason = incomplete.get("reason") if isinstance(incomplete, Mapping) else None
    conversation = o.get("conversation")
    metadata = o.get("metadata")
    background = o.get("background")
    raw_items = o.get("output")
    items = raw_items[:MAX_ITEMS] if isinstance(raw_items, list) else []
    return Response(
        id=rid,
        status=status,
        created_at=created,
        completed_at=timestamp_field(o, "completed_at", KIND, rid),
        model=optional_str(o, "model"),
        error_code=error_code,
        incomplete_reason=reason if isinstance(reason, str) and reason else None,
        usage=parse_usage(o.get("usage"), KIND, rid),
        conversation_id=optional_str(conversation, "id") if isinstance(conversation, Mapping) else None,
        previous_response_id=optional_str(o, "previous_response_id"),
        background=background if isinstance(background, bool) else None,
        agent=parse_agent_reference(o.get("agent_reference")),
        output=tuple(parse_item(item, content=content) for item in items),
        traceparent=optional_str(metadata, "traceparent") if isinstance(metadata, Mapping) else None,
    )


def parse_agent_reference(value: object) -> AgentReference | None:
    """`{"type": "agent_reference", "name": "helper", "version": "3"}` -> `AgentReference("helper", "3")`; None
    without a name. A numeric version is read as text."""
    if not isinstance(value, Mapping):
        return None
    name = optional_str(value, "name")
    if not name:
        return None
    version = value.get("version")
    if isinstance(version, int) and not isinstance(version, bool):
        version = str(version)
    return AgentReference(name, version if isinstance(version, str) and version else None)


def parse_item(obj: object, *, content: bool = False) -> Item:
    """Parse one output item of any type; an unreadable type reads `_unknown`. Content only with `content=True`.

    `{"type": "function_call", "id": "fc_1", "call_id": "call_1", "name": "get_weather", "arguments": "{}",
    "status": "completed"}` -> `Item("function_call", "fc_1", "call_1", "get_weather", "completed")` (plus
    `arguments="{}"` with `content=True`).
    """
    o: Mapping[str, Any] = obj if isinstance(obj, Mapping) else {}
    item = Item(
        type=optional_str(o, "type") or "_unknown",
        id=object_id(o) or None,
        call_id=optional_str(o, "call_id"),
        name=optional_str(o, "name"),
        status=optional_str(o, "status"),
        role=optional_str(o, "role"),
        server_label=optional_str(o, "server_label"),
    )
    if not content:
        return item
    return replace(
        item,
        arguments=as_text(o.get("arguments", o.get("input", o.get("action")))),
        output=as_text(o.get("output", o.get("outputs", o.get("results")))),
        text=as_text(o.get("content", o.get("summary"))),
    )
