"""Items as span events: the attribute keys and the cap every protocol whose items carry no times shares.

The Agents API (turn items) and the Responses API (output items) record no time per item, so an item never becomes
a timed span from the server's data: it is an event on its unit's span, at the span's end, in the API's order, with
its identity (type, index, id, status, tool call id, tool name and type) and, with content capture on only, its
content. Pure: no I/O, no clock.
"""

from __future__ import annotations

from stepscope.core.records import AttrValue
from stepscope.mapping import attributes as a

ITEM_TYPE = "openai.item.type"
ITEM_ID = "openai.item.id"
ITEM_STATUS = "openai.item.status"
ITEM_INDEX = "openai.item.index"
ITEM_ROLE = "openai.item.role"
ITEM_SERVER_LABEL = "openai.item.server_label"
ITEM_CONTENT = "openai.item.content"
ITEM_ERROR = "openai.item.error"
MAX_ITEM_EVENTS = 128
"""Item events per span at most: the OpenTelemetry SDK's default event limit, which would drop the rest silently;
the span says how many were left out."""


def item_identity(
    item_type: str,
    index: int,
    optional: tuple[tuple[str, AttrValue | None], ...],
    tool: tuple[str, str] | None = None,
    name: str | None = None,
) -> dict[str, AttrValue]:
    """An item event's identity: type and index, the `optional` attributes that are set, and for a tool call
    `tool = (tool name, tool type)`; another item's `name` (if any) goes to `gen_ai.tool.name` as well."""
    attrs: dict[str, AttrValue] = {ITEM_TYPE: item_type, ITEM_INDEX: index}
    attrs.update((key, value) for key, value in optional if value is not None)
    if tool is not None:
        attrs[a.GEN_AI_TOOL_NAME], attrs[a.GEN_AI_TOOL_TYPE] = tool
    elif name is not None:
        attrs[a.GEN_AI_TOOL_NAME] = name
    return attrs


def with_content(attrs: dict[str, AttrValue], content: tuple[tuple[str, str | None], ...]) -> dict[str, AttrValue]:
    """`attrs` plus each content value that is set, cut to the content limit (call only with capture on)."""
    attrs.update((key, a.truncate_content(value)) for key, value in content if value is not None)
    return attrs
