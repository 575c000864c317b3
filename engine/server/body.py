"""Request bodies bounded before they are read: over the limit is 413, too deeply nested JSON is 400.

An ASGI middleware, so it holds for every route, mounted or not: a declared
``Content-Length`` over the limit is refused before a byte is read, a chunked
body as soon as it passes the limit. What passes is buffered (at most the
limit) and handed on; JSON nested past ``max_depth`` is refused before any
parser recurses into it.
"""

from __future__ import annotations

import json
from typing import Any

import anyio
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from engine.depth import json_too_deep_at
from engine.server.errors import error_body

MAX_JSON_DEPTH = 64 + 8  # a workflow document may nest 64 levels; its envelope adds a few
DISCARD_BYTES, DISCARD_SECONDS = 64 << 20, 10.0  # how much of a refused body is read away before closing


class BodyLimit:
    def __init__(self, app: ASGIApp, max_bytes: int, max_depth: int = MAX_JSON_DEPTH) -> None:
        self.app, self.max_bytes, self.max_depth = app, max_bytes, max_depth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            if not _expects_continue(scope):  # it is sending anyway: read it away, or it never sees the answer
                await _discard(receive, declared)
            await _refuse(send, 413, "body_too_large", self._too_large())
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                chunks.clear()
                if message.get("more_body", False):
                    await _discard(receive, None)
                await _refuse(send, 413, "body_too_large", self._too_large())
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        text = body.decode("utf-8", "replace")
        depth_at = json_too_deep_at(text, self.max_depth) if body[:1] in b"[{ \t\r\n" else None
        if depth_at is not None:
            await _refuse(send, 400, "too_deep", f"the body nests more than {self.max_depth} levels "
                                                 f"(at character {depth_at})")
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: the disconnect, when it comes

        await self.app(scope, replay, send)

    def _too_large(self) -> str:
        return f"the request body is over the server's limit of {self.max_bytes} bytes"


async def _discard(receive: Receive, declared: int | None) -> None:
    """Read the rest of a refused body without keeping it, so the client, still sending, reads the 413
    (closing on unread data resets the connection and the answer is lost). At most DISCARD_BYTES or
    DISCARD_SECONDS: past that the connection is closed (as nginx's lingering close does)."""
    if declared is not None and declared > DISCARD_BYTES:
        return
    seen = 0
    with anyio.move_on_after(DISCARD_SECONDS):
        while seen <= DISCARD_BYTES:
            message = await receive()
            seen += len(message.get("body", b""))
            if message["type"] != "http.request" or not message.get("more_body", False):
                return


def _expects_continue(scope: Scope) -> bool:
    return any(name == b"expect" and value.lower() == b"100-continue" for name, value in scope.get("headers", ()))


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _refuse(send: Send, status: int, kind: str, message: str) -> None:
    payload: dict[str, Any] = error_body(status, kind, message)
    body = json.dumps(payload).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})
