"""A child process for the descriptor-exhaustion case: a server whose process has used up its descriptors.

Run as `python -m tests.faults.descriptor_child`. Under a 128-descriptor limit it serves a small JSON answer on
127.0.0.1 (a free port), then opens /dev/null until no descriptor is left, prints the port, and waits for a line
on stdin; it then gives the descriptors back, waits for a second line, stops the server and exits. It logs to
stderr at INFO.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import resource
import sys

from stepscope.receivers.asgi import Receive, Scope, Send, lifespan, respond
from stepscope.receivers.server import AsgiServer, ServerLimits


async def _app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        await lifespan(receive, send)
        return
    await respond(send, 200, {"ok": True})


async def _main() -> None:
    loop = asyncio.get_running_loop()
    server = AsgiServer(_app, "127.0.0.1", 0, setting="test.listen", fix="-", name="child",
                        limits=ServerLimits(max_connections=1000))  # fmt: skip
    await server.start()
    await loop.run_in_executor(None, lambda: None)  # the executor's thread exists before descriptors run out
    hoard: list[int] = []
    with contextlib.suppress(OSError):
        while True:
            hoard.append(os.open(os.devnull, os.O_RDONLY))
    print(server.port, flush=True)
    await loop.run_in_executor(None, sys.stdin.readline)
    for fd in hoard:
        os.close(fd)
    print("released", flush=True)
    await loop.run_in_executor(None, sys.stdin.readline)
    await server.stop(1.0)


if __name__ == "__main__":
    resource.setrlimit(resource.RLIMIT_NOFILE, (128, 128))
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    asyncio.run(_main())
