"""What the HTTP providers share: one pooled httpx client each, and the one
place where HTTP failures become the engine's error classes.

    429, 529                       rate_limit      (Retry-After read, seconds or HTTP date)
    500, 502, 503, 504, bad JSON   server_error
    408, read/connect timeouts     timeout
    connection refused/reset/cut   connection
    401, 403                       auth
    404                            not_found
    400, 413, 422                  bad_request, or context_length when the message says so
    error events inside a stream   by the vendor's error type (error_from_event)

Error messages carry the status and the provider's message, never request
headers (where the key is).
"""

from __future__ import annotations

import email.utils
import json
import time
from collections.abc import AsyncGenerator, Mapping
from contextlib import aclosing
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import anyio
import httpx

from engine.depth import json_too_deep_at
from engine.errors import ErrorKind, ModelError

if TYPE_CHECKING:
    from engine.providers.settings import HttpProviderConfig

_CONTEXT_MARKERS = ("context_length", "context length", "maximum context", "too many tokens", "prompt is too long",
                    "exceeds the maximum number of tokens", "input token count")
_STATUS_KINDS: dict[int, ErrorKind] = {
    401: "auth", 403: "auth", 404: "not_found", 408: "timeout", 429: "rate_limit", 529: "rate_limit",
    400: "bad_request", 413: "bad_request", 422: "bad_request",
}


def error_from_response(response: httpx.Response, body: bytes, model: str) -> ModelError:
    """The ModelError for an HTTP error response."""
    message = _provider_message(body) or response.reason_phrase
    kind = _STATUS_KINDS.get(response.status_code, "server_error" if response.status_code >= 500 else "bad_request")
    if kind == "bad_request" and any(marker in message.lower() for marker in _CONTEXT_MARKERS):
        kind = "context_length"
    retry_after = retry_after_seconds(response.headers.get("retry-after")) if kind == "rate_limit" else None
    return ModelError(kind, f"HTTP {response.status_code} from {model}: {message}"[:500], model=model,
                      retry_after=retry_after)


# Error types that arrive inside a 200 response (a stream's error event): Anthropic's `type`s,
# Google's `status`es. Anything else is a bad request.
_EVENT_KINDS: dict[str, ErrorKind] = {
    "overloaded_error": "rate_limit", "rate_limit_error": "rate_limit", "api_error": "server_error",
    "RESOURCE_EXHAUSTED": "rate_limit", "UNAVAILABLE": "server_error", "INTERNAL": "server_error",
    "DEADLINE_EXCEEDED": "timeout",
}


def error_from_event(error_type: str, message: str, model: str) -> ModelError:
    """The ModelError for an error reported inside a successful response (mid-stream)."""
    return ModelError(_EVENT_KINDS.get(error_type, "bad_request"), message[:500], model=model)


def error_from_exception(error: Exception, model: str) -> ModelError:
    """The ModelError for a transport failure (no HTTP response, or a broken one)."""
    if isinstance(error, httpx.TimeoutException):
        return ModelError("timeout", f"{model} did not answer in time ({type(error).__name__})", model=model)
    if isinstance(error, httpx.TransportError | anyio.BrokenResourceError | anyio.EndOfStream):
        return ModelError("connection", f"connection to {model} failed: {type(error).__name__}", model=model)
    if isinstance(error, json.JSONDecodeError | KeyError | IndexError | TypeError | ValueError):
        return ModelError("server_error", f"{model} sent a malformed answer: {type(error).__name__}: {error}"[:300],
                          model=model)
    raise error


def retry_after_seconds(value: str | None) -> float | None:
    """``Retry-After`` as seconds: a number, or an HTTP date."""
    if not value:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(moment.timestamp() - time.time(), 0.0)


def _provider_message(body: bytes) -> str:
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return body[:200].decode("utf-8", "replace").strip()
    error = data.get("error", data) if isinstance(data, dict) else data
    if isinstance(error, dict):
        return str(error.get("message") or error.get("status") or error)
    return str(error)


def _data(line: bytes) -> str | None:
    """The payload of an SSE ``data:`` line, else None."""
    text = line.decode("utf-8").rstrip("\r")
    return text[5:].strip() if text.startswith("data:") else None


class HttpClientPool:
    """One pooled ``httpx.AsyncClient`` per event loop (an engine may be used from several ``anyio.run``)."""

    def __init__(self, base_url: str, headers: Mapping[str, str], timeout: float, connect_timeout: float,
                 max_connections: int) -> None:
        self._options: dict[str, Any] = {
            "base_url": base_url, "headers": dict(headers),
            # Loading the certificates takes ~20 ms: once, when the engine is built, not per event loop
            # inside it (where it would block the loop on the first request).
            "verify": httpx.create_ssl_context(),
            # No pool timeout: waiting for a free connection is queueing, not a fault of the provider.
            "timeout": httpx.Timeout(timeout, connect=connect_timeout, pool=None),
            "limits": httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
        }
        self._clients: dict[int, httpx.AsyncClient] = {}

    @classmethod
    def for_provider(cls, config: HttpProviderConfig, default_base_url: str, key_header: str,
                     key_format: str = "{key}", extra: Mapping[str, str] | None = None) -> HttpClientPool:
        """The pool of a configured provider: its URL, its headers, and its key in ``key_header``."""
        headers = {**(extra or {}), **config.headers}
        if config.api_key is not None:
            headers[key_header] = key_format.format(key=config.api_key.get_secret_value())
        return cls(config.base_url or default_base_url, headers, config.timeout, config.connect_timeout,
                   config.max_connections)

    def client(self) -> httpx.AsyncClient:
        loop = id(anyio.lowlevel.current_token().native_token)
        client = self._clients.get(loop)
        if client is None or client.is_closed:
            client = self._clients[loop] = httpx.AsyncClient(**self._options)
        return client

    async def aclose(self) -> None:
        for client in self._clients.values():
            await client.aclose()
        self._clients.clear()


# What is read of a provider's answer before giving up on it: its bodies are untrusted text,
# bounded before they allocate (an answer of 32 MB is some 8 million tokens).
MAX_ANSWER_BYTES = 32 * 1024 * 1024
MAX_ERROR_BYTES = 64 * 1024  # an error's message is cut to 500 characters anyway
MAX_EVENT_BYTES = 1024 * 1024  # one line of a server-sent event stream
MAX_ANSWER_DEPTH = 100  # a vendor's envelope, around a structured answer of at most 64 levels


async def _read_bounded(response: httpx.Response, limit: int, model: str) -> bytes:
    """The body, or a server_error once it passes ``limit`` bytes (an error body: its first bytes)."""
    chunks, size = [], 0
    async for chunk in response.aiter_bytes():
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            if response.status_code >= 400:
                break  # enough of an error's message to report it
            raise ModelError("server_error", f"the answer from {model} is larger than {limit} bytes", model=model)
    return b"".join(chunks)[:limit]


def _decoded(body: bytes | str, model: str) -> Any:
    """A JSON body, refused before ``json`` recurses into one nested deeper than any answer is."""
    text = body.decode("utf-8") if isinstance(body, bytes) else body
    if json_too_deep_at(text, MAX_ANSWER_DEPTH) is not None:
        raise ModelError("server_error", f"the answer from {model} is nested more than {MAX_ANSWER_DEPTH} deep",
                         model=model)
    return json.loads(text)


async def _error_from(response: httpx.Response, model: str) -> ModelError:
    return error_from_response(response, await _read_bounded(response, MAX_ERROR_BYTES, model), model)


async def post_json(pool: HttpClientPool, path: str, body: Mapping[str, Any] | None, model: str, *,
                    method: str = "POST") -> Any:
    """POST a JSON body (or send ``method`` without one); the decoded JSON answer, or a ModelError."""
    try:
        async with pool.client().stream(method, path, json=body) as response:
            if response.status_code >= 400:
                raise await _error_from(response, model)
            return _decoded(await _read_bounded(response, MAX_ANSWER_BYTES, model), model)
    except ModelError:
        raise
    except Exception as error:
        raise error_from_exception(error, model) from None


MAX_MEDIA_BYTES = 256 * 1024 * 1024  # one generated file (a video), downloaded


async def download(pool: HttpClientPool, url: str, model: str, limit: int = MAX_MEDIA_BYTES) -> tuple[bytes, str]:
    """A file a provider's answer points to: (bytes, media type). The provider's headers (its key) go
    only to the provider's own origin; another host (where the provider may redirect) is asked without
    them, over https only."""
    client = pool.client()
    target = httpx.URL(url)
    try:
        if _origin(target) == _origin(client.base_url):
            async with client.stream("GET", target) as response:  # no redirect followed with the key
                if response.is_redirect and "location" in response.headers:
                    target = target.join(response.headers["location"])
                else:
                    return await _body_of(response, model, limit)
        if target.scheme != "https":
            raise ModelError("server_error", f"{model} pointed to a file at {target.scheme}://{target.host}: "
                             "from another host than the provider's, only https is fetched", model=model)
        async with httpx.AsyncClient(timeout=client.timeout, follow_redirects=True) as stranger:  # noqa: SIM117
            async with stranger.stream("GET", target) as response:
                return await _body_of(response, model, limit)
    except ModelError:
        raise
    except Exception as error:
        raise error_from_exception(error, model) from None


def _origin(url: httpx.URL) -> tuple[str, str, int | None]:
    return url.scheme, url.host, url.port


async def _body_of(response: httpx.Response, model: str, limit: int) -> tuple[bytes, str]:
    if response.status_code >= 400:
        raise await _error_from(response, model)
    return await _read_bounded(response, limit, model), _media_type(response)


@dataclass(frozen=True, slots=True)
class WholeAnswer:
    """What a server that ignored ``stream: true`` sent instead: the whole answer as plain JSON."""

    data: Any


def _media_type(response: httpx.Response) -> str:
    return str(response.headers.get("content-type", "")).split(";")[0].strip().lower()


async def post_sse(
    pool: HttpClientPool, path: str, body: Mapping[str, Any], model: str, *, done_marker: bool = False,
) -> AsyncGenerator[Any, None]:
    """POST and read a server-sent event stream: each ``data:`` payload decoded as JSON.

    With ``done_marker`` (OpenAI's ``data: [DONE]``), a stream that ends without it was cut: a
    ``connection`` error, so the call is retried rather than a partial answer taken as whole. A
    server that answers with plain JSON (by its content type) instead of a stream gives one
    ``WholeAnswer``, which the provider reads as it reads a completion.
    """
    try:
        # Identity encoding and our own line splitting over aiter_raw: httpx's aiter_lines nests four
        # async generators, which trio reports as leaked when a stream breaks off.
        headers = {"Accept-Encoding": "identity"}
        async with pool.client().stream("POST", path, json=body, headers=headers) as response:
            if response.status_code >= 400:
                raise await _error_from(response, model)
            if _media_type(response) == "application/json":
                yield WholeAnswer(_decoded(await _read_bounded(response, MAX_ANSWER_BYTES, model), model))
                return
            raw = cast(AsyncGenerator[bytes, None], response.aiter_raw())  # typed as an iterator; a generator
            async with aclosing(raw):
                pending = b""
                async for chunk in raw:
                    *lines, pending = (pending + chunk).split(b"\n")
                    if len(pending) > MAX_EVENT_BYTES:
                        raise ModelError("server_error", f"an event from {model} is longer than "
                                         f"{MAX_EVENT_BYTES} bytes", model=model)
                    for line in lines:
                        payload = _data(line)
                        if payload == "[DONE]":
                            return
                        if payload is not None:
                            yield _decoded(payload, model)
            if done_marker:
                raise ModelError("connection", f"the stream from {model} ended before its end marker", model=model)
    except ModelError:
        raise
    except Exception as error:
        raise error_from_exception(error, model) from None
