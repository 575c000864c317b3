"""A real OpenAI-compatible HTTP server on 127.0.0.1 that injects faults on demand.

Each request takes the next fault from ``faults`` (a list consumed in order, then
``default``), or from ``chooser(request_body)`` if given. Faults:

    ok         200, the answer ``answer:<last user message>`` (JSON or SSE by ``stream``)
    429        rate limited, ``Retry-After: <retry_after>``
    500, 503   server errors
    400ctx     400 "maximum context length exceeded"
    401        bad key
    hang       no answer for ``hang_seconds`` (past the client's timeout)
    reset      the connection is closed without an answer
    malformed  200 with a body that is not JSON
    cut        a stream that stops mid-way, without its end marker
    nostream   the answer as plain JSON even when a stream was asked for (a server that ignores it)
    401echo    bad key, and the error repeats the request's Authorization header (some proxies do)
    deep       200 with valid JSON nested 100,000 deep (json.loads would raise RecursionError)
    huge       200 with a valid answer of 40 MB (JSON), or one 2 MB event line (SSE): past the client's bounds
"""

from __future__ import annotations

import contextlib
import json
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class FaultServer:
    def __init__(self) -> None:
        self.faults: list[str] = []
        self.default = "ok"
        self.chooser: Callable[[dict[str, Any]], str] | None = None
        self.retry_after = 1
        self.hang_seconds = 2.0
        self.requests: list[dict[str, Any]] = []
        self.request_headers: list[dict[str, str]] = []
        self.fault_log: list[str] = []  # the fault each request got, in the order of `requests`
        self.served: Counter[str] = Counter()  # fault -> count
        self.lock = threading.Lock()
        self.httpd = QuietServer(("127.0.0.1", 0), _handler(self))
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def next_fault(self, body: dict[str, Any], headers: dict[str, str]) -> str:
        with self.lock:
            fault = self.chooser(body) if self.chooser else (self.faults.pop(0) if self.faults else self.default)
            self.requests.append(body)
            self.request_headers.append(headers)
            self.fault_log.append(fault)
            self.served[fault] += 1
            return fault


class QuietServer(ThreadingHTTPServer):
    """A threaded test server that takes hundreds of connections at once and stays quiet when clients leave."""

    request_queue_size = 256  # socketserver's 5 resets connections when hundreds arrive at once

    def handle_error(self, request: Any, client_address: Any) -> None:
        return None  # a client that gave up on a hanging answer breaks the pipe: that is the point


class NoDelayHandler(BaseHTTPRequestHandler):
    """HTTP/1.1 keep-alive, no log lines, and TCP_NODELAY: headers and body go out in two writes, and
    without it Nagle's algorithm and the client's delayed ACK hold the body back 40 ms, which a real
    server does not do."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:  # quiet
        return None

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def answer_for(body: dict[str, Any]) -> str:
    prompt = next(m["content"] for m in reversed(body["messages"]) if m["role"] == "user")
    return f"answer:{prompt}"


def _handler(server: FaultServer) -> type[BaseHTTPRequestHandler]:
    class Handler(NoDelayHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            fault = server.next_fault(body, dict(self.headers.items()))
            getattr(self, "_" + fault)(body)

        def _send(self, status: int, payload: bytes, headers: dict[str, str] | None = None) -> None:
            self.send_response(status)
            for key, value in {"Content-Type": "application/json", **(headers or {})}.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def _error(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
            self._send(status, json.dumps({"error": {"message": message}}).encode(), headers)

        def _ok(self, body: dict[str, Any]) -> None:
            text = answer_for(body)
            if body.get("stream"):
                return self._stream(body, text, cut=False)
            usage = {"prompt_tokens": 10, "completion_tokens": len(text.split())}
            self._send(200, json.dumps({"model": body["model"], "usage": usage, "choices": [
                {"message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]}).encode())
            return None

        def _stream(self, body: dict[str, Any], text: str, *, cut: bool) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            words = text.split(":")
            pieces = [words[0] + ":", ":".join(words[1:])]
            for piece in pieces[:1] if cut else pieces:
                self._chunk(json.dumps({"model": body["model"], "choices": [{"delta": {"content": piece}}]}))
            if cut:
                self._reset()
                return
            self._chunk(json.dumps({"model": body["model"], "choices": [{"delta": {}, "finish_reason": "stop"}]}))
            self._chunk(json.dumps({"choices": [], "usage": {"prompt_tokens": 10, "completion_tokens": 2}}))
            self._chunk("[DONE]")
            self.wfile.write(b"0\r\n\r\n")

        def _chunk(self, data: str) -> None:
            payload = f"data: {data}\n\n".encode()
            self.wfile.write(f"{len(payload):x}\r\n".encode() + payload + b"\r\n")
            self.wfile.flush()

        def _reset(self, body: dict[str, Any] | None = None) -> None:
            # SO_LINGER 0: the close sends a TCP reset, as a crashed server or proxy would.
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
            self.close_connection = True

        def _nostream(self, body: dict[str, Any]) -> None:
            self._ok({**body, "stream": False})

        def _cut(self, body: dict[str, Any]) -> None:
            self._stream(body, answer_for(body), cut=True)

        def _hang(self, body: dict[str, Any]) -> None:
            time.sleep(server.hang_seconds)
            self._ok(body)

        def _malformed(self, body: dict[str, Any]) -> None:
            self._send(200, b'{"choices": [ {"message": ')

        def _deep(self, body: dict[str, Any]) -> None:
            self._send(200, b'{"choices": ' + b"[" * 100_000 + b"]" * 100_000 + b"}")

        def _huge(self, body: dict[str, Any]) -> None:
            # Written a megabyte at a time: one json.dumps of 40 MB would hold the GIL, and so the test's
            # event loop, for a third of a second.
            megabyte = b"x" * (1 << 20)
            if not body.get("stream"):
                head, tail = b'{"choices": [{"message": {"role": "assistant", "content": "', b'"}}]}'
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(head) + 40 * len(megabyte) + len(tail)))
                self.end_headers()
                with contextlib.suppress(OSError):  # the client stops reading, as it should
                    for piece in (head, *[megabyte] * 40, tail):
                        self.wfile.write(piece)
                self.close_connection = True
                return
            text = "x" * (2 << 20)
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.end_headers()
            with contextlib.suppress(OSError):  # the client stops reading, as it should
                self.wfile.write(b"data: " + json.dumps({"choices": [{"delta": {"content": text}}]}).encode())
            self.close_connection = True

        def _429(self, body: dict[str, Any]) -> None:
            self._error(429, "rate limited", {"Retry-After": str(server.retry_after)})

        def _500(self, body: dict[str, Any]) -> None:
            self._error(500, "internal error")

        def _503(self, body: dict[str, Any]) -> None:
            self._error(503, "overloaded")

        def _400ctx(self, body: dict[str, Any]) -> None:
            self._error(400, "This model's maximum context length is 8192 tokens")

        def _401(self, body: dict[str, Any]) -> None:
            self._error(401, "invalid api key")

        def _401echo(self, body: dict[str, Any]) -> None:
            self._error(401, f"invalid credentials: {self.headers.get('Authorization')}")

    return Handler


@contextmanager
def serving_in_thread(httpd: ThreadingHTTPServer) -> Iterator[None]:
    """``httpd`` serving in a thread until the block ends. A short poll interval: ``shutdown()`` waits for
    it (0.5 s by default, on every test's teardown)."""
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


@contextmanager
def running_fault_server() -> Iterator[FaultServer]:
    server = FaultServer()
    with serving_in_thread(server.httpd):
        yield server
