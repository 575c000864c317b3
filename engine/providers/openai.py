"""Any OpenAI-compatible chat completions API: OpenAI, OpenRouter, Ollama, vLLM, llama.cpp server.

Structured output goes through ``response_format`` (``json_schema``); streams
are server-sent events with ``stream_options.include_usage`` so usage arrives
in the last chunk. Images go as ``image_url`` content parts holding data URLs;
``generate: image`` goes to the images API (``/images/generations``), whose
answer is base64 or a URL that is downloaded.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any

from engine.errors import ModelError
from engine.model.client import Message, ModelRequest, ModelResponse, TextDelta, Usage
from engine.model.media import Media, MediaError, sniff
from engine.model.tokens import estimate_tokens
from engine.providers.http import HttpClientPool, WholeAnswer, download, post_json, post_sse
from engine.providers.images import OPENAI, check_images, media_from_base64, refuse_generation
from engine.providers.settings import HttpProviderConfig

DEFAULT_BASE_URL = "https://api.openai.com/v1"


class OpenAIProvider:
    image_rule = "openai"  # how its images count in tokens (engine.model.media.image_tokens)

    @classmethod
    def from_settings(cls, name: str, config: HttpProviderConfig, models: Mapping[str, str]) -> OpenAIProvider:
        return cls(name, config, models)

    def __init__(self, name: str, config: HttpProviderConfig, models: Mapping[str, str]) -> None:
        self.name = name
        self.models = dict(models)
        self.structured_output = config.structured_output
        self.pool = HttpClientPool.for_provider(config, DEFAULT_BASE_URL, "Authorization", "Bearer {key}")

    def __repr__(self) -> str:
        return f"OpenAIProvider({self.name!r})"  # never the headers: they hold the key

    async def complete(self, request: ModelRequest) -> ModelResponse:
        model = self.models.get(request.model, request.model)
        if request.generate is not None:
            return await self._generate(request, model)
        data = await post_json(self.pool, "/chat/completions", self._body(request, model, stream=False), model)
        return _answer(data, model)

    async def stream(self, request: ModelRequest) -> AsyncIterator[TextDelta | ModelResponse]:
        model = self.models.get(request.model, request.model)
        if request.generate is not None:
            yield await self._generate(request, model)
            return
        pieces: list[str] = []
        usage, finish, answered_by = None, "stop", model
        body = self._body(request, model, stream=True)
        whole: ModelResponse | None = None
        async for chunk in post_sse(self.pool, "/chat/completions", body, model, done_marker=True):
            if isinstance(chunk, WholeAnswer):  # the server ignored `stream: true`
                whole = _answer(chunk.data, model)
                continue
            if chunk.get("usage"):
                usage = _usage(chunk["usage"])
            answered_by = chunk.get("model", answered_by)
            for choice in chunk.get("choices") or ():
                text = (choice.get("delta") or {}).get("content")
                if text:
                    pieces.append(text)
                    yield TextDelta(text)
                finish = choice.get("finish_reason") or finish
        if whole is not None:
            if whole.text:
                yield TextDelta(whole.text)
            yield whole
            return
        text = "".join(pieces)
        if usage is None:  # servers without stream_options (llama.cpp's) send no usage: an upper estimate
            answer = estimate_tokens(text)  # bytes: up to 4x the tokens, so capped at what was asked for
            usage = Usage(sum(estimate_tokens(m.content) for m in request.messages),
                          min(answer, request.max_tokens) if request.max_tokens else answer)
        yield ModelResponse(text, usage, answered_by, finish)

    async def aclose(self) -> None:
        await self.pool.aclose()

    async def _generate(self, request: ModelRequest, model: str) -> ModelResponse:
        """Images through the images API, base64 or downloaded from the URL it answers with."""
        generation = request.generate
        assert generation is not None
        if generation.media != "image":
            refuse_generation(request, "an OpenAI-compatible API", model, ("image",))
        body: dict[str, Any] = {"model": model, "prompt": request.prompt, "n": generation.count}
        if generation.size is not None:
            body["size"] = generation.size
        data = await post_json(self.pool, "/images/generations", body, model)
        items = data.get("data") if isinstance(data, dict) else None
        if not isinstance(items, list) or not items:
            raise ModelError("server_error", f"{model} sent no images", model=model)
        media = [await self._image(item, model) for item in items[:generation.count]]
        usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
        return ModelResponse("", Usage(int(usage.get("input_tokens") or 0), int(usage.get("output_tokens") or 0),
                                       images=len(media)), model, "stop", tuple(media))

    async def _image(self, item: Any, model: str) -> Media:
        if isinstance(item, dict) and item.get("b64_json") is not None:
            data = media_from_base64(item["b64_json"], "", model).data
        elif isinstance(item, dict) and isinstance(item.get("url"), str):
            data, _ = await download(self.pool, item["url"], model)
        else:
            raise ModelError("server_error", f"{model} sent an image without b64_json or url", model=model)
        try:
            return Media(data, sniff(data, f"an image from {model}")[0])
        except MediaError as error:
            raise ModelError("server_error", str(error), model=model) from None

    def _body(self, request: ModelRequest, model: str, *, stream: bool) -> dict[str, Any]:
        check_images(request, OPENAI, model)
        body: dict[str, Any] = {
            "model": model,
            "messages": [{"role": message.role, "content": _content(message)} for message in request.messages],
            "stream": stream,
        }
        if request.temperature is not None:
            body["temperature"] = request.temperature
        if request.max_tokens is not None:
            body["max_tokens"] = request.max_tokens
        if request.output_schema is not None and self.structured_output == "json_schema":
            body["response_format"] = {"type": "json_schema",
                                       "json_schema": {"name": "output", "schema": dict(request.output_schema)}}
        elif request.output_schema is not None and self.structured_output == "json_object":
            body["response_format"] = {"type": "json_object", "schema": dict(request.output_schema)}
        if stream:
            body["stream_options"] = {"include_usage": True}
        return body


def _content(message: Message) -> str | list[dict[str, Any]]:
    """The text alone, or the text and each image as content parts."""
    if not message.images:
        return message.content
    parts: list[dict[str, Any]] = [{"type": "text", "text": message.content}]
    parts += [{"type": "image_url", "image_url": {"url": image.data_url()}} for image in message.images]
    return parts


def _answer(data: Any, model: str) -> ModelResponse:
    """A completion's JSON as a ModelResponse."""
    try:
        choice = data["choices"][0]
        return ModelResponse(choice["message"].get("content") or "", _usage(data.get("usage")),
                             data.get("model", model), choice.get("finish_reason") or "stop")
    except (KeyError, IndexError, TypeError, AttributeError) as error:
        raise ModelError("server_error", f"{model} sent an answer without choices: {error!r}", model=model) from None


def _usage(data: Any) -> Usage:
    if not isinstance(data, dict):
        return Usage()
    cached = (data.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
    return Usage(int(data.get("prompt_tokens") or 0), int(data.get("completion_tokens") or 0), int(cached))
