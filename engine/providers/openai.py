"""Any OpenAI-compatible chat completions API: OpenAI, OpenRouter, Ollama, vLLM, llama.cpp server.

Structured output goes through ``response_format`` (``json_schema``); streams
are server-sent events with ``stream_options.include_usage`` so usage arrives
in the last chunk.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any

from engine.errors import ModelError
from engine.model.client import ModelRequest, ModelResponse, TextDelta, Usage
from engine.model.tokens import estimate_tokens
from engine.providers.http import HttpClientPool, WholeAnswer, post_json, post_sse
from engine.providers.settings import HttpProviderConfig

DEFAULT_BASE_URL = "https://api.openai.com/v1"


class OpenAIProvider:
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
        data = await post_json(self.pool, "/chat/completions", self._body(request, model, stream=False), model)
        return _answer(data, model)

    async def stream(self, request: ModelRequest) -> AsyncIterator[TextDelta | ModelResponse]:
        model = self.models.get(request.model, request.model)
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

    def _body(self, request: ModelRequest, model: str, *, stream: bool) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": model,
            "messages": [{"role": message.role, "content": message.content} for message in request.messages],
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
