"""The tolerant-parsing kit every protocol's parsers are built from: field readers, bounds, and one list envelope.

The rules, the same for every protocol, so that a newer server, an Azure server or a drifting one never breaks
parsing: unknown fields are ignored, open enums (statuses, error codes, item types) are kept as plain strings,
missing optional fields become None, and only a missing or mistyped *identity* (ids, `created_at`, `status`,
`type`) makes an object invalid: the reader then raises `InvalidObject`, which the client counts and skips.

Numbers outside sane bounds also make an object invalid, because no span or counter built from them would be
true: a timestamp outside [1970-01-01, 2100-01-01) (`MIN_TIMESTAMP`, `MAX_TIMESTAMP`: nanoseconds past 2100 are
near the end of OTLP's unsigned 64-bit range) and a token count outside 0..10^9 (`MAX_TOKENS`).

Pure functions over JSON values: no I/O, no clock.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from stepscope.errors import InvalidObject

MIN_TIMESTAMP = 0
"""Earliest accepted Unix timestamp (inclusive): 1970-01-01T00:00:00Z."""
MAX_TIMESTAMP = 4_102_444_800
"""Latest accepted Unix timestamp (exclusive): 2100-01-01T00:00:00Z."""
MAX_TOKENS = 1_000_000_000
"""Largest accepted token count in one object's usage; a context window is a few million at most."""


@dataclass(frozen=True, slots=True)
class Page:
    """One page of a list endpoint. `invalid` holds items that failed to parse (already skipped)."""

    data: tuple[Any, ...]
    has_more: bool
    last_id: str | None
    invalid: tuple[InvalidObject, ...] = ()


def as_object(obj: object, kind: str) -> Mapping[str, Any]:
    """`obj` when it is a JSON object; `InvalidObject(kind)` otherwise."""
    if not isinstance(obj, Mapping):
        raise InvalidObject(kind, "not a JSON object")
    return obj


def object_id(obj: object) -> str | None:
    """The `id` of a JSON object, when it has a string one."""
    value = obj.get("id") if isinstance(obj, Mapping) else None
    return value if isinstance(value, str) else None


def required_str(obj: Mapping[str, Any], key: str, kind: str, oid: str | None) -> str:
    """`obj[key]` as a non-empty string; `InvalidObject` naming the field otherwise."""
    value = obj.get(key)
    if not isinstance(value, str) or not value:
        raise InvalidObject(kind, f"field {key!r} must be a non-empty string", object_id=oid)
    return value


def optional_str(obj: Mapping[str, Any], key: str) -> str | None:
    """`obj[key]` when it is a non-empty string, else None."""
    value = obj.get(key)
    return value if isinstance(value, str) and value else None


def integer(value: object) -> int | None:
    """`value` when it is an integer (a bool is a malformed number, not 1), else None."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def token_count(value: object, key: str, kind: str, oid: str | None) -> int | None:
    """A usage count: None when absent or untyped; `InvalidObject` outside 0..`MAX_TOKENS`."""
    number = integer(value)
    if number is not None and not 0 <= number <= MAX_TOKENS:
        raise InvalidObject(kind, f"usage {key!r} is outside 0..{MAX_TOKENS}", object_id=oid)
    return number


def total_tokens(value: object, parts: tuple[int, int]) -> int:
    """The server's `total_tokens` when it is a plausible integer, else the sum of the two main counts."""
    total = integer(value)
    return total if total is not None and 0 <= total <= 2 * MAX_TOKENS else parts[0] + parts[1]


def timestamp_field(
    obj: Mapping[str, Any], key: str, kind: str, oid: str | None, *, required: bool = False
) -> int | None:
    """`obj[key]` as whole Unix seconds; None when absent or untyped (`InvalidObject` if `required`).

    Raises `InvalidObject` for a number outside `MIN_TIMESTAMP`..`MAX_TIMESTAMP`. Fractional seconds are cut.
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


def created_at(obj: Mapping[str, Any], kind: str, oid: str) -> int:
    """The required `created_at` of an object, as whole Unix seconds."""
    value = timestamp_field(obj, "created_at", kind, oid, required=True)
    assert value is not None  # required=True raises instead of returning None
    return value


def as_text(value: object) -> str | None:
    """Content as text: strings as they are, structured values (objects, arrays) as JSON, numbers as text."""
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping | list):
        return json.dumps(value, ensure_ascii=False, default=str)
    return str(value)


def nested_deeper_than(value: object, limit: int) -> bool:
    """Whether JSON `value` nests objects and arrays more than `limit` levels deep (checked without recursion)."""
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, Mapping | list):
            if depth > limit:
                return True
            children = node.values() if isinstance(node, Mapping) else node
            stack.extend((child, depth + 1) for child in children)
    return False


def parse_page(obj: object, kind: str, parse: Callable[[object], Any], *, body_cursor: bool = False) -> Page:
    """Parse a list envelope `{"data": [...], "has_more": bool, ...}`; items that fail to parse are collected in
    `Page.invalid`, never raised.

    The cursor (`Page.last_id`) is the last raw item's id, even when that item was invalid, so a bad object never
    stalls paging; with `body_cursor` the body's own `last_id` wins (an API whose cursor may differ from the last
    item's id), the last item's id standing in when it is absent. Raises `InvalidObject("list")` for an envelope
    without a `data` array, or one that has more without a readable cursor.
    """
    if not isinstance(obj, Mapping) or not isinstance(obj.get("data"), list):
        raise InvalidObject("list", f"{kind} list without a 'data' array")
    raw_data: list[Any] = obj["data"]
    items: list[Any] = []
    invalid: list[InvalidObject] = []
    for raw in raw_data:
        try:
            items.append(parse(raw))
        except InvalidObject as exc:
            invalid.append(exc)
    last_id = optional_str(obj, "last_id") if body_cursor else None
    if last_id is None:
        last_id = object_id(raw_data[-1]) if raw_data else None
    has_more = obj.get("has_more") is True
    if has_more and last_id is None:
        raise InvalidObject("list", f"{kind} list has_more without a readable last id")
    return Page(data=tuple(items), has_more=has_more, last_id=last_id, invalid=tuple(invalid))


@dataclass(frozen=True, slots=True)
class TokenUsage:
    """The `usage` object of the Agents and Responses APIs. `cached_tokens` is part of `input_tokens` and
    `reasoning_tokens` of `output_tokens` (the API's breakdowns), None when the breakdown is missing."""

    input_tokens: int
    output_tokens: int
    total_tokens: int
    cached_tokens: int | None = None
    reasoning_tokens: int | None = None


def parse_usage(value: object, kind: str = "usage", oid: str | None = None) -> TokenUsage | None:
    """`TokenUsage` when both main counts are integers, else None; any count outside 0..10^9 is `InvalidObject`.

    `{"input_tokens": 120, "input_tokens_details": {"cached_tokens": 100}, "output_tokens": 30,
    "output_tokens_details": {"reasoning_tokens": 12}, "total_tokens": 150}` -> `TokenUsage(120, 30, 150, 100, 12)`.
    """
    if not isinstance(value, Mapping):
        return None
    input_tokens = token_count(value.get("input_tokens"), "input_tokens", kind, oid)
    output_tokens = token_count(value.get("output_tokens"), "output_tokens", kind, oid)
    in_details = value.get("input_tokens_details")
    out_details = value.get("output_tokens_details")
    cached = (
        token_count(in_details.get("cached_tokens"), "cached_tokens", kind, oid)
        if isinstance(in_details, Mapping)
        else None
    )
    reasoning = (
        token_count(out_details.get("reasoning_tokens"), "reasoning_tokens", kind, oid)
        if isinstance(out_details, Mapping)
        else None
    )
    if input_tokens is None or output_tokens is None:
        return None
    total = total_tokens(value.get("total_tokens"), (input_tokens, output_tokens))
    return TokenUsage(input_tokens, output_tokens, total, cached, reasoning)
