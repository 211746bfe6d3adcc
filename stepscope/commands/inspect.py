"""`stepscope inspect`: one unit of work, read from the API now, drawn as a waterfall (or printed as JSON).

The waterfall fits the terminal, and 80 columns when piped (unless `$COLUMNS` says otherwise), with every column.

The protocol `STEPSCOPE_PROTOCOL` names reads the unit (`ProtocolInstance.inspect`) and maps it as it exports it;
`commands.views` draws the rows.
"""

from __future__ import annotations

import sys

from rich.console import Console

from stepscope.client.connect import connect
from stepscope.commands.views import FULL_TABLE_WIDTH, waterfall_json, waterfall_rows, waterfall_table
from stepscope.commands.wiring import resolve
from stepscope.config import Config
from stepscope.errors import InvalidObject, SourceError
from stepscope.protocols.base import ApiContext


async def inspect_unit(config: Config, unit_id: str, container_id: str | None, *, as_json: bool) -> int:
    """Read one unit of the configured protocol and print its waterfall (or JSON). Returns the exit code."""
    factory = resolve(config)
    api = connect(config)
    try:
        instance = factory.open(ApiContext(config=config, connection=api, options=api.options))
        spans = await instance.inspect(unit_id, container_id)
    except (SourceError, InvalidObject) as exc:
        print(f"stepscope: cannot read {unit_id}: {exc}", file=sys.stderr)
        return 1
    finally:
        await api.aclose()
    rows = waterfall_rows(spans)
    if not rows:
        print(f"stepscope: {unit_id} has nothing to show yet", file=sys.stderr)
        return 1
    if as_json:
        print(waterfall_json(unit_id, container_id, rows))
    else:
        # The terminal's width; piped, $COLUMNS or 80 (rich's rule). Below the full table's width the light table
        # keeps every column and the timeline still has room.
        console = Console()
        where = f" on {container_id}" if container_id else ""
        title = f"{unit_id}{where}: {rows[0].status}"
        console.print(waterfall_table(rows, title, compact=console.width < FULL_TABLE_WIDTH, details=True))
    return 0
