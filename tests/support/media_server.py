"""A real HTTP server on 127.0.0.1 that speaks the image and video wire formats of OpenAI, Anthropic and Gemini.

One port serves every provider (``server.url`` is ``http://127.0.0.1:PORT``; the providers' base URLs are
``server.openai_url`` = ``url + "/v1"``, ``server.anthropic_url`` = ``server.gemini_url`` = ``url``):

    chat      POST /v1/chat/completions                      OpenAI vision chat (JSON, or SSE with ``stream``)
    messages  POST /v1/messages                              Anthropic Messages (JSON, or SSE with ``stream``)
    generate  POST /v1beta/models/{m}:generateContent        Gemini; ``:streamGenerateContent?alt=sse`` streams
    images    POST /v1/images/generations                    OpenAI images: PNGs as ``b64_json`` or ``url``
    file      GET  /files/{id}.png                           an image of a ``url`` answer (no auth: a presigned URL)
    predict   POST /v1beta/models/{m}:predictLongRunning     Veo: starts a video operation
    poll      GET  /v1beta/models/{m}/operations/{id}        the operation: done at its ``polls_until_done``-th poll
    cancel    POST /v1beta/models/{m}/operations/{id}:cancel ``{}``; later polls: done, error code 1 CANCELLED
    video     GET  /v1beta/files/{id}:download?alt=media     the operation's MP4 (PyAV), encoded once

The vision routes answer ``saw 2 image(s): image/png 64x48, image/jpeg 10x10; text: <last user text>``: every
image of the request, decoded with Pillow (so its real format and size, proof the bytes arrived intact). An image
given by URL instead of inline base64 is a 400 (the engine must send data); so is undecodable data, an unknown
part type, and on Anthropic a ``media_type`` that is not the decoded format, a missing ``max_tokens`` or
``anthropic-version``. Every image seen is also in ``server.images_seen`` (route, declared and decoded type,
size). Usage: prompt tokens = words of every text + 85 per image; completion tokens = words of the answer. Gemini
with ``generationConfig.responseModalities`` holding ``"IMAGE"`` answers the same text plus a 64x64 PNG part whose
colour is a hash of the last user text.

Auth: OpenAI ``Authorization: Bearer <key>``, Anthropic ``x-api-key``, Gemini ``x-goog-api-key`` (a header, never
``?key=``; the video download too). Any non-empty key passes unless ``server.api_key`` is set. A missing or wrong key
is a 401 in the provider's error shape, recorded with fault ``"401"``, and consumes no fault.

Every request is recorded in ``server.requests``: ``{"method", "path", "query", "headers" (lower-case names),
"body" (parsed JSON, None for a GET), "kind" (the route kind above, "unknown" for a 404), "fault"}``.

Faults: each authorised request takes the next fault from ``faults_for[kind]`` if that list is not empty, else from
``faults`` (both consumed in order), else ``default`` ("ok"):

    ok               the answer
    500, 503         server errors in the provider's shape
    429              rate limited, ``Retry-After: <retry_after>``
    hang             no answer for ``hang_seconds``, then the answer
    reset            the connection is closed without an answer
    poll500          the next operation poll answers 500 once (on a poll: this one); the request itself is answered
    operation_error  the operation (started by this request, or polled by it, or else the next one started)
                     completes with ``done: true, error: {code: 13, message: "internal error"}``

e.g. ``server.faults_for["poll"] = ["500"]`` fails the next poll only, whatever comes before it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import json
import re
import socket
import struct
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import av
from PIL import Image

from tests.support.fault_server import NoDelayHandler, QuietServer, serving_in_thread

Color = tuple[int, int, int]
Image.init()  # every plugin, so Image.MIME knows WEBP too

TOKENS_PER_IMAGE = 85
GEMINI_IMAGE_TOKENS = 1290  # what Gemini counts for one generated image
ANTHROPIC_MEDIA_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")
OPERATION_TYPE = "type.googleapis.com/google.ai.generativelanguage.v1beta.PredictLongRunningResponse"
METADATA_TYPE = "type.googleapis.com/google.ai.generativelanguage.v1beta.PredictLongRunningMetadata"


# ── Helpers for tests ─────────────────────────────────────────────────────────────────────────────────────────────

def make_image(fmt: str, width: int, height: int, color: Color = (200, 30, 30)) -> bytes:
    """The bytes of a solid ``width``x``height`` image in Pillow format ``fmt`` (PNG, JPEG, GIF, WEBP)."""
    out = io.BytesIO()
    Image.new("RGB", (width, height), color).save(out, format=fmt)
    return out.getvalue()


def make_png(width: int, height: int, color: Color = (200, 30, 30)) -> bytes:
    """A solid PNG."""
    return make_image("PNG", width, height, color)


def make_jpeg(width: int, height: int, color: Color = (30, 200, 30)) -> bytes:
    """A solid JPEG."""
    return make_image("JPEG", width, height, color)


def make_gif(width: int, height: int, color: Color = (30, 30, 200)) -> bytes:
    """A solid GIF."""
    return make_image("GIF", width, height, color)


def data_url(data: bytes, mime: str | None = None) -> str:
    """``data:<mime>;base64,...``; the mime type is the decoded format's unless given."""
    return f"data:{mime or describe_image(data)[0]};base64,{base64.b64encode(data).decode()}"


def describe_image(data: bytes) -> tuple[str, int, int]:
    """(mime type, width, height) of image bytes, fully decoded; ValueError if Pillow cannot decode them."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            return Image.MIME.get(image.format or "", f"image/{(image.format or '?').lower()}"), *image.size
    except Exception as error:
        raise ValueError(f"invalid image data: {error}") from error


def color_for(seed: str) -> Color:
    """A colour that is a hash of ``seed``: two prompts, two images."""
    digest = hashlib.sha256(seed.encode()).digest()
    return digest[0], digest[1], digest[2]


_codec_lock = threading.Lock()
_codec: list[str] = []


def video_codec() -> str:
    """``libx264`` if the installed PyAV can encode with it, else ``mpeg4``."""
    with _codec_lock:
        if not _codec:
            try:
                av.codec.Codec("libx264", "w")
                _codec.append("libx264")
            except Exception:
                _codec.append("mpeg4")
        return _codec[0]


def make_mp4(seed: str = "", width: int = 64, height: int = 64, frames: int = 8, fps: int = 8) -> bytes:
    """A real MP4 of ``frames`` solid frames whose colours are a hash of ``seed``."""
    out = io.BytesIO()
    r, g, b = color_for(seed)
    with av.open(out, mode="w", format="mp4") as container:
        stream = container.add_stream(video_codec(), rate=fps)
        assert isinstance(stream, av.VideoStream)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(frames):
            image = Image.new("RGB", (width, height), ((r + 16 * i) % 256, g, b))
            frame = av.VideoFrame.from_image(image)  # type: ignore[no-untyped-call]
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return out.getvalue()


# ── The server ────────────────────────────────────────────────────────────────────────────────────────────────────

class BadRequestError(Exception):
    """A 400 in the provider's shape."""


@dataclass
class Operation:
    """A Veo-style long-running video operation."""

    id: str
    model: str
    prompt: str
    parameters: dict[str, Any]
    polls: int = 0
    cancelled: bool = False
    fail: bool = False
    done: bool = False
    video: bytes | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def name(self) -> str:
        return f"models/{self.model}/operations/{self.id}"


class MediaServer:
    def __init__(self) -> None:
        self.faults: list[str] = []
        self.faults_for: dict[str, list[str]] = {}
        self.default = "ok"
        self.api_key: str | None = None  # None: any non-empty key passes
        self.retry_after = 1
        self.hang_seconds = 2.0
        self.polls_until_done = 3
        self.max_side = 256  # generated images are scaled down to fit, keeping their aspect
        self.requests: list[dict[str, Any]] = []
        self.images_seen: list[dict[str, Any]] = []  # {"route", "declared", "format", "width", "height"}
        self.requested_sizes: list[tuple[int, int]] = []  # sizes asked of the images API, before the cap
        self.files: dict[str, bytes] = {}  # id -> PNG of a `url` answer
        self.operations: dict[str, Operation] = {}
        self.cancelled: list[str] = []  # operation ids, in the order of their cancel requests
        self.lock = threading.Lock()
        self._poll500_pending = 0
        self._operation_errors_pending = 0
        self.httpd = QuietServer(("127.0.0.1", 0), _handler(self))
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.openai_url = self.url + "/v1"
        self.anthropic_url = self.url
        self.gemini_url = self.url

    def record(self, entry: dict[str, Any], *, authorised: bool) -> str:
        """Record a request and return its fault (``"401"`` if not ``authorised``, which consumes none)."""
        with self.lock:
            if not authorised:
                fault = "401"
            elif self.faults_for.get(entry["kind"]):
                fault = self.faults_for[entry["kind"]].pop(0)
            else:
                fault = self.faults.pop(0) if self.faults else self.default
            self.requests.append({**entry, "fault": fault})
            return fault

    def requests_of(self, kind: str) -> list[dict[str, Any]]:
        """The recorded requests of one route kind."""
        with self.lock:
            return [r for r in self.requests if r["kind"] == kind]

    def operation(self, op_id: str) -> Operation | None:
        with self.lock:
            return self.operations.get(op_id)


# ── Routes ────────────────────────────────────────────────────────────────────────────────────────────────────────

_ROUTES: list[tuple[str, str, re.Pattern[str], str]] = [  # (method, kind, path, provider)
    ("POST", "chat", re.compile(r"/v1/chat/completions"), "openai"),
    ("POST", "images", re.compile(r"/v1/images/generations"), "openai"),
    ("GET", "file", re.compile(r"/files/(?P<id>[\w-]+)\.png"), "openai"),
    ("POST", "messages", re.compile(r"/v1/messages"), "anthropic"),
    ("POST", "generate", re.compile(r"/v1beta/models/(?P<model>[^/:]+):(?P<method>(stream)?[gG]enerateContent)"),
     "gemini"),
    ("POST", "predict", re.compile(r"/v1beta/models/(?P<model>[^/:]+):predictLongRunning"), "gemini"),
    ("GET", "poll", re.compile(r"/v1beta/models/(?P<model>[^/:]+)/operations/(?P<id>[\w-]+)"), "gemini"),
    ("POST", "cancel", re.compile(r"/v1beta/models/(?P<model>[^/:]+)/operations/(?P<id>[\w-]+):cancel"), "gemini"),
    ("GET", "video", re.compile(r"/v1beta/files/(?P<id>[\w-]+):download"), "gemini"),
]

_ERRORS: dict[str, dict[int, str]] = {  # provider -> status -> error type (OpenAI, Anthropic) or status (Gemini)
    "openai": {400: "invalid_request_error", 401: "invalid_request_error", 404: "invalid_request_error",
               429: "requests", 500: "server_error", 503: "server_error"},
    "anthropic": {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
                  429: "rate_limit_error", 500: "api_error", 503: "overloaded_error"},
    "gemini": {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 404: "NOT_FOUND", 429: "RESOURCE_EXHAUSTED",
               500: "INTERNAL", 503: "UNAVAILABLE"},
}


def error_body(provider: str, status: int, message: str) -> dict[str, Any]:
    """The provider's error JSON."""
    kind = _ERRORS[provider].get(status, _ERRORS[provider][500])
    if provider == "anthropic":
        return {"type": "error", "error": {"type": kind, "message": message}}
    if provider == "gemini":
        return {"error": {"code": status, "message": message, "status": kind}}
    code = {401: "invalid_api_key", 429: "rate_limit_exceeded"}.get(status)
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


def _words(text: str) -> int:
    return len(text.split())


@dataclass
class Seen:
    """What a vision request carried: its images, every text, and the last user text."""

    images: list[tuple[str, int, int]] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    last_user_text: str = ""

    def answer(self) -> str:
        listed = ": " + ", ".join(f"{mime} {w}x{h}" for mime, w, h in self.images) if self.images else ""
        return f"saw {len(self.images)} image(s){listed}; text: {self.last_user_text}"

    @property
    def prompt_tokens(self) -> int:
        return sum(_words(t) for t in self.texts) + TOKENS_PER_IMAGE * len(self.images)


def _decode_b64(data: Any) -> bytes:
    if not isinstance(data, str):
        raise BadRequestError("image data must be a base64 string")
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as error:
        raise BadRequestError(f"invalid base64 image data: {error}") from error


def _image(server: MediaServer, route: str, declared: str, raw: bytes) -> tuple[str, int, int]:
    try:
        mime, width, height = describe_image(raw)
    except ValueError as error:
        raise BadRequestError(str(error)) from error
    with server.lock:
        server.images_seen.append({"route": route, "declared": declared, "format": mime, "width": width,
                                   "height": height})
    return mime, width, height


def _parts(content: Any) -> list[Any]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if not isinstance(content, list):
        raise BadRequestError("content must be a string or a list of parts")
    return content


def seen_openai(server: MediaServer, body: dict[str, Any]) -> Seen:
    """The images and texts of an OpenAI chat request."""
    seen = Seen()
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequestError("'messages' must be a non-empty array")
    for message in messages:
        texts: list[str] = []
        for part in _parts(message.get("content")):
            if part.get("type") == "text":
                texts.append(str(part.get("text", "")))
            elif part.get("type") == "image_url":
                url = str((part.get("image_url") or {}).get("url", ""))
                match = re.fullmatch(r"data:([\w/+.-]+);base64,(.*)", url, re.DOTALL)
                if not match:
                    raise BadRequestError(f"image_url must be a base64 data URL here, not {url[:40]!r}")
                seen.images.append(_image(server, "chat", match[1], _decode_b64(match[2])))
            else:
                raise BadRequestError(f"unknown content part type {part.get('type')!r}")
        seen.texts += texts
        if message.get("role") == "user":
            seen.last_user_text = " ".join(texts)
    return seen


def seen_anthropic(server: MediaServer, body: dict[str, Any]) -> Seen:
    """The images and texts of an Anthropic Messages request."""
    seen = Seen()
    system = body.get("system")
    if system:
        seen.texts += [system] if isinstance(system, str) else [str(p.get("text", "")) for p in system]
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequestError("messages: field required")
    if not isinstance(body.get("max_tokens"), int):
        raise BadRequestError("max_tokens: field required")
    for message in messages:
        texts: list[str] = []
        for part in _parts(message.get("content")):
            if part.get("type") == "text":
                texts.append(str(part.get("text", "")))
            elif part.get("type") == "image":
                source = part.get("source") or {}
                if source.get("type") != "base64":
                    raise BadRequestError(f"image source must be base64 here, not {source.get('type')!r}")
                declared = source.get("media_type")
                if declared not in ANTHROPIC_MEDIA_TYPES:
                    raise BadRequestError(f"image.source.media_type: {declared!r} is not supported")
                image = _image(server, "messages", declared, _decode_b64(source.get("data")))
                if image[0] != declared:
                    raise BadRequestError(f"Image does not match the provided media type {declared}")
                seen.images.append(image)
            else:
                raise BadRequestError(f"unknown content block type {part.get('type')!r}")
        seen.texts += texts
        if message.get("role") == "user":
            seen.last_user_text = " ".join(texts)
    return seen


def seen_gemini(server: MediaServer, body: dict[str, Any]) -> Seen:
    """The images and texts of a Gemini generateContent request (snake_case or camelCase)."""
    seen = Seen()
    system = body.get("system_instruction") or body.get("systemInstruction")
    if system:
        seen.texts += [str(p.get("text", "")) for p in system.get("parts", [])]
    contents = body.get("contents")
    if not isinstance(contents, list) or not contents:
        raise BadRequestError("contents is not specified")
    for content in contents:
        texts: list[str] = []
        for part in content.get("parts") or []:
            inline = part.get("inline_data") or part.get("inlineData")
            if "text" in part:
                texts.append(str(part["text"]))
            elif inline is not None:
                declared = str(inline.get("mime_type") or inline.get("mimeType") or "")
                seen.images.append(_image(server, "generate", declared, _decode_b64(inline.get("data"))))
            else:
                raise BadRequestError(f"unsupported part {sorted(part)!r} (images must be inline_data)")
        seen.texts += texts
        if content.get("role", "user") == "user":
            seen.last_user_text = " ".join(texts)
    return seen


def _image_size(size: Any, max_side: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """(requested, served) sizes of an images API ``size``."""
    if size in (None, "auto"):
        size = "1024x1024"
    match = re.fullmatch(r"(\d+)x(\d+)", str(size))
    if not match or not int(match[1]) or not int(match[2]):
        raise BadRequestError(f"Invalid value: {size!r}. Expected a size like '1024x1024'.")
    width, height = int(match[1]), int(match[2])
    scale = min(1.0, max_side / max(width, height))
    return (width, height), (max(1, round(width * scale)), max(1, round(height * scale)))


# ── The handler ───────────────────────────────────────────────────────────────────────────────────────────────────

def _handler(server: MediaServer) -> type[BaseHTTPRequestHandler]:
    class Handler(NoDelayHandler):
        provider = "openai"

        def do_GET(self) -> None:
            self._serve("GET")

        def do_POST(self) -> None:
            self._serve("POST")

        # ── dispatch ──

        def _serve(self, method: str) -> None:
            split = urlsplit(self.path)
            query = {k: v[0] for k, v in parse_qs(split.query).items()}
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0)) if method == "POST" else b""
            entry: dict[str, Any] = {"method": method, "path": split.path, "query": query,
                                     "headers": {k.lower(): v for k, v in self.headers.items()}, "body": None}
            route = next(((kind, m, provider) for verb, kind, pattern, provider in _ROUTES
                          if verb == method and (m := pattern.fullmatch(split.path))), None)
            if route is None:
                server.record({**entry, "kind": "unknown"}, authorised=True)
                return self._error(404, f"no route for {method} {split.path}")
            kind, match, self.provider = route
            params = {k: unquote(v) for k, v in match.groupdict().items() if v is not None}
            try:
                entry["body"] = json.loads(raw) if raw else ({} if method == "POST" else None)
            except ValueError:
                server.record({**entry, "kind": kind}, authorised=True)
                return self._error(400, "the body is not valid JSON")
            fault = server.record({**entry, "kind": kind}, authorised=kind == "file" or self._authorised())
            if fault == "401":
                return self._error(401, "missing or invalid API key")
            if fault in ("500", "503"):
                return self._error(int(fault), "internal error" if fault == "500" else "overloaded")
            if fault == "429":
                return self._error(429, "rate limited", {"Retry-After": str(server.retry_after)})
            if fault == "reset":
                return self._reset()
            if fault == "hang":
                time.sleep(server.hang_seconds)
            elif fault == "poll500" and kind != "poll":
                with server.lock:
                    server._poll500_pending += 1
            elif fault == "operation_error" and kind not in ("predict", "poll"):
                with server.lock:
                    server._operation_errors_pending += 1
            try:
                getattr(self, "_" + kind)(entry["body"], params, query, fault)
            except BadRequestError as error:
                self._error(400, str(error))
            except (AttributeError, TypeError, KeyError, ValueError) as error:  # a part that is not an object...
                self._error(400, f"malformed request: {error!r}")
            return None

        def _authorised(self) -> bool:
            if self.provider == "openai":
                header = self.headers.get("Authorization") or ""
                key = header.removeprefix("Bearer ").strip() if header.startswith("Bearer ") else ""
            else:
                key = (self.headers.get("x-api-key" if self.provider == "anthropic" else "x-goog-api-key") or "")
            return bool(key) and (server.api_key is None or key == server.api_key)

        # ── writing ──

        def _send(self, status: int, payload: bytes, headers: dict[str, str] | None = None,
                  content_type: str = "application/json") -> None:
            self.send_response(status)
            for key, value in {"Content-Type": content_type, **(headers or {})}.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def _json(self, data: Any, status: int = 200) -> None:
            self._send(status, json.dumps(data).encode())

        def _error(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
            self._send(status, json.dumps(error_body(self.provider, status, message)).encode(), headers)

        def _start_stream(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()

        def _chunk(self, text: str) -> None:
            payload = text.encode()
            self.wfile.write(f"{len(payload):x}\r\n".encode() + payload + b"\r\n")
            self.wfile.flush()

        def _end_stream(self) -> None:
            self.wfile.write(b"0\r\n\r\n")

        def _reset(self) -> None:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
            self.close_connection = True

        # ── OpenAI chat ──

        def _chat(self, body: dict[str, Any], params: dict[str, str], query: dict[str, str], fault: str) -> None:
            seen = seen_openai(server, body)
            text, model = seen.answer(), body.get("model", "")
            usage = {"prompt_tokens": seen.prompt_tokens, "completion_tokens": _words(text),
                     "total_tokens": seen.prompt_tokens + _words(text)}
            ident, created = f"chatcmpl-{uuid.uuid4().hex[:12]}", int(time.time())
            if not body.get("stream"):
                return self._json({"id": ident, "object": "chat.completion", "created": created, "model": model,
                                   "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                                "finish_reason": "stop"}], "usage": usage})
            head, rest = text.split(":", 1) if ":" in text else (text, "")
            self._start_stream()
            base = {"id": ident, "object": "chat.completion.chunk", "created": created, "model": model}
            deltas = [{"role": "assistant", "content": ""}, {"content": head + ":" if rest else head}]
            deltas += [{"content": rest}] if rest else []
            for delta in deltas:
                self._chunk("data: " + json.dumps({**base, "choices": [
                    {"index": 0, "delta": delta, "finish_reason": None}]}) + "\n\n")
            self._chunk("data: " + json.dumps({**base, "choices": [
                {"index": 0, "delta": {}, "finish_reason": "stop"}]}) + "\n\n")
            if (body.get("stream_options") or {}).get("include_usage"):
                self._chunk("data: " + json.dumps({**base, "choices": [], "usage": usage}) + "\n\n")
            self._chunk("data: [DONE]\n\n")
            self._end_stream()
            return None

        # ── Anthropic ──

        def _messages(self, body: dict[str, Any], params: dict[str, str], query: dict[str, str],
                      fault: str) -> None:
            if not self.headers.get("anthropic-version"):
                raise BadRequestError("anthropic-version: header is required")
            seen = seen_anthropic(server, body)
            text, model = seen.answer(), body.get("model", "")
            ident = f"msg_{uuid.uuid4().hex[:12]}"
            if not body.get("stream"):
                return self._json({"id": ident, "type": "message", "role": "assistant", "model": model,
                                   "content": [{"type": "text", "text": text}], "stop_reason": "end_turn",
                                   "stop_sequence": None,
                                   "usage": {"input_tokens": seen.prompt_tokens, "output_tokens": _words(text)}})
            head, rest = text.split(":", 1) if ":" in text else (text, "")
            events: list[dict[str, Any]] = [
                {"type": "message_start", "message": {
                    "id": ident, "type": "message", "role": "assistant", "model": model, "content": [],
                    "stop_reason": None, "stop_sequence": None,
                    "usage": {"input_tokens": seen.prompt_tokens, "output_tokens": 1}}},
                {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
                *[{"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": piece}}
                  for piece in ([head + ":", rest] if rest else [head])],
                {"type": "content_block_stop", "index": 0},
                {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                 "usage": {"output_tokens": _words(text)}},
                {"type": "message_stop"},
            ]
            self._start_stream()
            for event in events:
                self._chunk(f"event: {event['type']}\ndata: {json.dumps(event)}\n\n")
            self._end_stream()
            return None

        # ── Gemini generateContent ──

        def _generate(self, body: dict[str, Any], params: dict[str, str], query: dict[str, str],
                      fault: str) -> None:
            seen = seen_gemini(server, body)
            text, model = seen.answer(), params["model"]
            modalities = [str(m).upper() for m in (body.get("generationConfig") or body.get("generation_config")
                                                    or {}).get("responseModalities", [])]
            parts: list[dict[str, Any]] = [{"text": text}]
            output_tokens = _words(text)
            details = [{"modality": "TEXT", "tokenCount": output_tokens}]
            if "IMAGE" in modalities:
                png = make_png(64, 64, color_for(seen.last_user_text))
                parts.append({"inlineData": {"mimeType": "image/png", "data": base64.b64encode(png).decode()}})
                output_tokens += GEMINI_IMAGE_TOKENS
                details.append({"modality": "IMAGE", "tokenCount": GEMINI_IMAGE_TOKENS})
            usage = {"promptTokenCount": seen.prompt_tokens, "candidatesTokenCount": output_tokens,
                     "totalTokenCount": seen.prompt_tokens + output_tokens, "candidatesTokensDetails": details}

            def chunk(chunk_parts: list[dict[str, Any]], last: bool) -> dict[str, Any]:
                candidate: dict[str, Any] = {"content": {"role": "model", "parts": chunk_parts}, "index": 0}
                answer: dict[str, Any] = {"candidates": [candidate], "modelVersion": model}
                if last:
                    candidate["finishReason"] = "STOP"
                    answer["usageMetadata"] = usage
                return answer

            if params["method"].startswith("generate"):
                return self._json(chunk(parts, last=True))
            head, rest = text.split(":", 1) if ":" in text else (text, "")
            pieces = [[{"text": head + ":"}], [{"text": rest}, *parts[1:]]] if rest else [parts]
            chunks = [chunk(p, last=i == len(pieces) - 1) for i, p in enumerate(pieces)]
            if query.get("alt") != "sse":
                return self._json(chunks)  # without alt=sse the API answers one JSON array
            self._start_stream()
            for c in chunks:
                self._chunk(f"data: {json.dumps(c)}\r\n\r\n")
            self._end_stream()
            return None

        # ── OpenAI images ──

        def _images(self, body: dict[str, Any], params: dict[str, str], query: dict[str, str], fault: str) -> None:
            prompt = body.get("prompt")
            if not isinstance(prompt, str) or not prompt:
                raise BadRequestError("'prompt' is a required property")
            n = body.get("n", 1)
            if not isinstance(n, int) or not 1 <= n <= 10:
                raise BadRequestError(f"Invalid 'n': {n!r}. Expected an integer from 1 to 10.")
            response_format = body.get("response_format") or "b64_json"
            if response_format not in ("b64_json", "url"):
                raise BadRequestError(f"Invalid 'response_format': {response_format!r}.")
            requested, (width, height) = _image_size(body.get("size"), server.max_side)
            with server.lock:
                server.requested_sizes.append(requested)
            data: list[dict[str, str]] = []
            for i in range(n):
                png = make_png(width, height, color_for(f"{prompt}#{i}"))
                if response_format == "b64_json":
                    data.append({"b64_json": base64.b64encode(png).decode()})
                    continue
                file_id = uuid.uuid4().hex
                with server.lock:
                    server.files[file_id] = png
                data.append({"url": f"{server.url}/files/{file_id}.png"})
            output_tokens = 100 * n
            self._json({"created": int(time.time()), "data": data,
                        "usage": {"input_tokens": _words(prompt), "output_tokens": output_tokens,
                                  "total_tokens": _words(prompt) + output_tokens,
                                  "input_tokens_details": {"text_tokens": _words(prompt), "image_tokens": 0}}})

        def _file(self, body: None, params: dict[str, str], query: dict[str, str], fault: str) -> None:
            with server.lock:
                png = server.files.get(params["id"])
            if png is None:
                return self._error(404, "no such file")
            self._send(200, png, content_type="image/png")
            return None

        # ── Veo operations ──

        def _predict(self, body: dict[str, Any], params: dict[str, str], query: dict[str, str],
                     fault: str) -> None:
            instances = body.get("instances")
            if not isinstance(instances, list) or not instances or not (instances[0] or {}).get("prompt"):
                raise BadRequestError("instances[0].prompt is required")
            op = Operation(uuid.uuid4().hex[:16], params["model"], str(instances[0]["prompt"]),
                           dict(body.get("parameters") or {}), fail=fault == "operation_error")
            with server.lock:
                if server._operation_errors_pending and not op.fail:
                    server._operation_errors_pending -= 1
                    op.fail = True
                server.operations[op.id] = op
            self._json({"name": op.name})

        def _op(self, params: dict[str, str]) -> Operation | None:
            op = server.operation(params["id"])
            if op is None or op.model != params["model"]:
                self._error(404, f"Operation models/{params['model']}/operations/{params['id']} not found")
                return None
            return op

        def _poll(self, body: None, params: dict[str, str], query: dict[str, str], fault: str) -> None:
            if (op := self._op(params)) is None:
                return None
            with server.lock:
                op.fail = op.fail or fault == "operation_error"
            if fault == "poll500":
                return self._error(500, "internal error")
            with server.lock:
                if server._poll500_pending:
                    server._poll500_pending -= 1
                    pending_500 = True
                else:
                    pending_500 = False
            if pending_500:
                return self._error(500, "internal error")
            with server.lock:
                if not op.done:
                    op.polls += 1
                    op.done = op.cancelled or op.polls >= server.polls_until_done
                answer: dict[str, Any] = {"name": op.name, "done": op.done,
                                          "metadata": {"@type": METADATA_TYPE}}
                if op.cancelled:
                    answer["error"] = {"code": 1, "message": "CANCELLED"}
                elif op.done and op.fail:
                    answer["error"] = {"code": 13, "message": "internal error"}
                elif op.done:
                    uri = f"{server.url}/v1beta/files/{op.id}:download?alt=media"
                    answer["response"] = {"@type": OPERATION_TYPE, "generateVideoResponse": {
                        "generatedSamples": [{"video": {"uri": uri}}]}}
            self._json(answer)
            return None

        def _cancel(self, body: dict[str, Any], params: dict[str, str], query: dict[str, str],
                    fault: str) -> None:
            if (op := self._op(params)) is None:
                return
            with server.lock:
                server.cancelled.append(op.id)
                if not op.done:
                    op.cancelled = True
            self._json({})

        def _video(self, body: None, params: dict[str, str], query: dict[str, str], fault: str) -> None:
            if query.get("alt") != "media":
                raise BadRequestError("this file is only served as media (?alt=media)")
            op = server.operation(params["id"])
            if op is None or not op.done or op.cancelled or op.fail:
                return self._error(404, f"File {params['id']} not found")
            with op.lock:  # encoded once, by the first download
                if op.video is None:
                    op.video = make_mp4(op.prompt)
            self._send(200, op.video, content_type="video/mp4")
            return None

    return Handler


@contextmanager
def running_media_server() -> Iterator[MediaServer]:
    """A started MediaServer, shut down on exit."""
    server = MediaServer()
    with serving_in_thread(server.httpd):
        yield server


__all__ = [
    "MediaServer", "Operation", "color_for", "data_url", "describe_image", "error_body", "make_gif", "make_image",
    "make_jpeg", "make_mp4", "make_png", "running_media_server", "video_codec",
]
