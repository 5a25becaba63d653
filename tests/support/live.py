"""The app served by a real uvicorn on a local port, in the test's event loop.

For what the in-memory ASGI transport cannot show: open streams, access logs, real sockets.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import uvicorn

from service.app import create_app
from service.settings import Settings


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Live:
    def __init__(self, app: Any, url: str) -> None:
        self.app = app
        self.url = url


@asynccontextmanager
async def live_server(settings: Settings, **config: Any) -> AsyncIterator[Live]:
    port = free_port()
    app = create_app(settings)
    options: dict[str, Any] = {"log_level": "warning", **config}
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, **options))
    task = asyncio.create_task(server.serve())
    while not server.started:
        assert not task.done(), "server did not start"
        await asyncio.sleep(0.05)
    try:
        yield Live(app, f"http://127.0.0.1:{port}")
    finally:
        server.should_exit = True
        server.force_exit = True
        await asyncio.wait_for(task, 30)
