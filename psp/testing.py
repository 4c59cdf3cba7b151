"""Helpers for tests that need an ASGI app behind a real TCP port (real timeouts, real HTTP)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import uvicorn


@contextlib.asynccontextmanager
async def serve_in_background(app: Any, *, host: str = "127.0.0.1") -> AsyncIterator[str]:
    """Serve ``app`` with uvicorn on an ephemeral port of this event loop; yield its base URL."""
    config = uvicorn.Config(app, host=host, port=0, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            if task.done():
                task.result()  # surfaces the startup error
                raise RuntimeError("uvicorn exited before it started")
            await asyncio.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        # In-flight requests (a tok_slow sleep) must not hold the test up for long.
        config.timeout_graceful_shutdown = 2
        await asyncio.wait_for(task, timeout=10)
