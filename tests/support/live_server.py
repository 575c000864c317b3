"""A real uvicorn server on 127.0.0.1 in the test's own event loop (asyncio), on a free port."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx
import uvicorn


@asynccontextmanager
async def serving(app: Any, **options: Any) -> AsyncIterator[str]:
    """Serve ``app`` until the block ends; yields its base URL. The app's lifespan runs (and drains)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", lifespan="on", ws="websockets-sansio",
                            timeout_graceful_shutdown=5, **options)
    server = uvicorn.Server(config)
    with sock:
        async with anyio.create_task_group() as group:
            group.start_soon(server.serve, [sock])
            with anyio.fail_after(10):
                while not server.started:  # noqa: ASYNC110 (uvicorn sets a flag, it has no event to wait on)
                    await anyio.sleep(0.01)
            try:
                yield f"http://127.0.0.1:{port}"
            finally:
                server.should_exit = True


def free_port() -> int:
    """A port nothing listens on now, on 127.0.0.1 (for a server started in another process)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def wait_until_up(url: str, process: subprocess.Popen[str] | subprocess.Popen[bytes], seconds: float = 30) -> None:
    """Until ``url``/health answers 200; RuntimeError with the process's output if it exits or time runs out."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            if httpx.get(f"{url}/health").status_code == 200:
                return
        except httpx.TransportError:
            if time.monotonic() > deadline or process.poll() is not None:
                process.kill()
                output = process.communicate()[0]
                raise RuntimeError(f"the server at {url} did not start: {output!r}") from None
            time.sleep(0.1)
