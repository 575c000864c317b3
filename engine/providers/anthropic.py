"""Anthropic's Messages API (``POST /v1/messages``).

System messages go to the top-level ``system`` field; ``max_tokens`` is
required by the API (4096 when the task sets none). There is no JSON-schema
response format here: the schema instruction the engine writes into the system
message is what asks for structured output. Streams are server-sent events
(``message_start``, ``content_block_delta``, ``message_delta``, ``message_stop``,
and ``error`` when the API fails mid-stream). Images go as base64 image blocks before
the text; the API generates no images.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import aclosing
from typing import Any

from engine.errors import ModelError
from engine.model.client import Message, ModelRequest, ModelResponse, TextDelta, Usage
from engine.providers.http import HttpClientPool, WholeAnswer, error_from_event, post_json, post_sse
from engine.providers.images import ANTHROPIC, check_images, refuse_generation
from engine.providers.settings import HttpProviderConfig

DEFAULT_BASE_URL = "https://api.anthropic.com"
API_VERSION = "2023-06-01"
DEFAULT_MAX_TOKENS = 4096
PATH = "/v1/messages"

class AnthropicProvider:
    image_rule = "anthropic"  # how its images count in tokens (engine.model.media.image_tokens)

    @classmethod
    def from_settings(cls, name: str, config: HttpProviderConfig, models: Mapping[str, str]) -> AnthropicProvider:
        return cls(name, config, models)

    def __init__(self, name: str, config: HttpProviderConfig, models: Mapping[str, str]) -> None:
        self.name = name
        self.models = dict(models)
        self.pool = HttpClientPool.for_provider(config, DEFAULT_BASE_URL, "x-api-key",
                                                extra={"anthropic-version": API_VERSION})

    def __repr__(self) -> str:
        return f"AnthropicProvider({self.name!r})"  # never the headers: they hold the key

    async def complete(self, request: ModelRequest) -> ModelResponse:
        model = self.models.get(request.model, request.model)
        return _answer(await post_json(self.pool, PATH, self._body(request, model, stream=False), model), model)

    async def stream(self, request: ModelRequest) -> AsyncIterator[TextDelta | ModelResponse]:
        model = self.models.get(request.model, request.model)
        pieces: list[str] = []
        usage: dict[str, Any] = {}
        finish, answered_by = "end_turn", model
        failure: ModelError | None = None
        whole: ModelResponse | None = None
        events = post_sse(self.pool, PATH, self._body(request, model, stream=True), model)
        async with aclosing(events):  # closes the HTTP stream if the consumer leaves early
            async for event in events:
                if isinstance(event, WholeAnswer):  # the server ignored `stream: true`
                    whole = _answer(event.data, model)
                    continue
                if failure is not None or not isinstance(event, dict):
                    continue  # after an error, read to the end (the API closes the stream), then raise
                kind = event.get("type")
                if kind == "content_block_delta":
                    delta = event.get("delta") or {}
                    if delta.get("type") == "text_delta" and delta.get("text"):
                        pieces.append(delta["text"])
                        yield TextDelta(delta["text"])
                elif kind == "message_start":
                    message = event.get("message") or {}
                    answered_by = message.get("model") or answered_by
                    usage.update({k: v for k, v in (message.get("usage") or {}).items() if v is not None})
                elif kind == "message_delta":
                    finish = (event.get("delta") or {}).get("stop_reason") or finish
                    usage.update({k: v for k, v in (event.get("usage") or {}).items() if v is not None})
                elif kind == "error":
                    failure = _stream_error(event.get("error"), model)
        if whole is not None:
            if whole.text:
                yield TextDelta(whole.text)
            yield whole
            return
        if failure is not None:
            raise failure
        yield ModelResponse("".join(pieces), _usage(usage), answered_by, finish)

    async def aclose(self) -> None:
        await self.pool.aclose()

    def _body(self, request: ModelRequest, model: str, *, stream: bool) -> dict[str, Any]:
        if request.generate is not None:
            refuse_generation(request, "Anthropic", model)
        check_images(request, ANTHROPIC, model)
        system = [message.content for message in request.messages if message.role == "system"]
        body: dict[str, Any] = {
            "model": model,
            "max_tokens": request.max_tokens if request.max_tokens is not None else DEFAULT_MAX_TOKENS,
            "messages": [{"role": message.role, "content": _content(message)}
                         for message in request.messages if message.role != "system"],
        }
        if system:
            body["system"] = "\n\n".join(system)
        if request.temperature is not None:
            body["temperature"] = request.temperature
        if stream:
            body["stream"] = True
        return body


def _content(message: Message) -> str | list[dict[str, Any]]:
    """The text alone, or each image as a base64 block, then the text (the order Anthropic advises)."""
    if not message.images:
        return message.content
    blocks: list[dict[str, Any]] = [
        {"type": "image", "source": {"type": "base64", "media_type": image.media_type, "data": image.base64()}}
        for image in message.images]
    return [*blocks, {"type": "text", "text": message.content}]


def _usage(data: Any) -> Usage:
    """Anthropic's ``input_tokens`` leave out cache reads and writes; Usage counts every input token."""
    if not isinstance(data, dict):
        return Usage()
    cache_read = int(data.get("cache_read_input_tokens") or 0)
    cache_write = int(data.get("cache_creation_input_tokens") or 0)
    return Usage(int(data.get("input_tokens") or 0) + cache_read + cache_write, int(data.get("output_tokens") or 0),
                 cache_read)


def _stream_error(error: Any, model: str) -> ModelError:
    error = error if isinstance(error, dict) else {}
    error_type = str(error.get("type") or "error")
    message = f"{model} failed mid-stream: {error_type}: {error.get('message') or ''}".strip()
    return error_from_event(error_type, message, model)


def _answer(data: Any, model: str) -> ModelResponse:
    """A Messages API answer's JSON as a ModelResponse."""
    try:
        text = "".join(block["text"] for block in data["content"] if block.get("type") == "text")
        return ModelResponse(text, _usage(data.get("usage")), data.get("model") or model,
                             data.get("stop_reason") or "end_turn")
    except (KeyError, IndexError, TypeError, AttributeError) as error:
        raise ModelError("server_error", f"{model} sent an answer without content: {error!r}", model=model) from None
