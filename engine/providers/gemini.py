"""Google's Gemini API (``generateContent`` / ``streamGenerateContent``).

System messages become ``systemInstruction``; assistant turns have the role
``model``. Structured output goes through ``generationConfig.responseJsonSchema``
(with ``responseMimeType: application/json``). Streams are server-sent events
(``?alt=sse``), each a partial GenerateContentResponse; the last one carries
``usageMetadata`` and ``finishReason``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import aclosing
from typing import Any
from urllib.parse import quote

from engine.errors import ModelError
from engine.model.client import ModelRequest, ModelResponse, TextDelta, Usage
from engine.providers.http import HttpClientPool, WholeAnswer, error_from_event, post_json, post_sse
from engine.providers.settings import HttpProviderConfig

DEFAULT_BASE_URL = "https://generativelanguage.googleapis.com"

# the ``error.status`` of an error object sent inside a stream (the status is already 200 by then)
class GeminiProvider:
    @classmethod
    def from_settings(cls, name: str, config: HttpProviderConfig, models: Mapping[str, str]) -> GeminiProvider:
        return cls(name, config, models)

    def __init__(self, name: str, config: HttpProviderConfig, models: Mapping[str, str]) -> None:
        self.name = name
        self.models = dict(models)
        self.pool = HttpClientPool.for_provider(config, DEFAULT_BASE_URL, "x-goog-api-key")

    def __repr__(self) -> str:
        return f"GeminiProvider({self.name!r})"  # never the headers: they hold the key

    async def complete(self, request: ModelRequest) -> ModelResponse:
        model = self.models.get(request.model, request.model)
        return _answer(await post_json(self.pool, _path(model, "generateContent"), _body(request), model), model)

    async def stream(self, request: ModelRequest) -> AsyncIterator[TextDelta | ModelResponse]:
        model = self.models.get(request.model, request.model)
        pieces: list[str] = []
        usage, finish, answered_by = Usage(), "STOP", model
        failure: ModelError | None = None
        chunks = post_sse(
            self.pool, _path(model, "streamGenerateContent") + "?alt=sse", _body(request), model)
        whole: ModelResponse | None = None
        async with aclosing(chunks):  # closes the HTTP stream if the consumer leaves early
            async for chunk in chunks:
                if isinstance(chunk, WholeAnswer):  # the server ignored `alt=sse`
                    whole = _answer(chunk.data, model)
                    continue
                if failure is not None:
                    continue  # read to the end (the API closes the stream after an error), then raise
                failure = _failure(chunk, model)
                if failure is not None:
                    continue
                if chunk.get("usageMetadata"):
                    usage = _usage(chunk["usageMetadata"])
                answered_by = chunk.get("modelVersion") or answered_by
                for candidate in (chunk.get("candidates") or ())[:1]:
                    text = _text(candidate)
                    if text:
                        pieces.append(text)
                        yield TextDelta(text)
                    finish = candidate.get("finishReason") or finish
        if whole is not None:
            if whole.text:
                yield TextDelta(whole.text)
            yield whole
            return
        if failure is not None:
            raise failure
        yield ModelResponse("".join(pieces), usage, answered_by, finish)

    async def aclose(self) -> None:
        await self.pool.aclose()


def _path(model: str, method: str) -> str:
    return f"/v1beta/models/{quote(model.removeprefix('models/'), safe='')}:{method}"


def _body(request: ModelRequest) -> dict[str, Any]:
    system = [message.content for message in request.messages if message.role == "system"]
    body: dict[str, Any] = {
        "contents": [{"role": "model" if message.role == "assistant" else "user", "parts": [{"text": message.content}]}
                     for message in request.messages if message.role != "system"],
    }
    if system:
        body["systemInstruction"] = {"parts": [{"text": "\n\n".join(system)}]}
    config: dict[str, Any] = {}
    if request.temperature is not None:
        config["temperature"] = request.temperature
    if request.max_tokens is not None:
        config["maxOutputTokens"] = request.max_tokens
    if request.output_schema is not None:
        config["responseMimeType"] = "application/json"
        config["responseJsonSchema"] = dict(request.output_schema)
    if config:
        body["generationConfig"] = config
    return body


def _failure(data: Any, model: str) -> ModelError | None:
    """A blocked prompt (no candidates), or an error object sent inside a 200 stream."""
    if not isinstance(data, dict):
        return ModelError("server_error", f"{model} sent a malformed answer: {type(data).__name__}", model=model)
    error = data.get("error")
    if isinstance(error, dict):
        status = str(error.get("status") or "")
        return error_from_event(status, f"{model} failed: {status or 'error'}: {error.get('message') or ''}", model)
    reason = (data.get("promptFeedback") or {}).get("blockReason")
    if reason and not data.get("candidates"):
        return ModelError("bad_request", f"{model} blocked the prompt: {reason}", model=model)
    return None


def _text(candidate: Any) -> str:
    """The answer's text parts (thought summaries left out)."""
    parts = (candidate.get("content") or {}).get("parts") or ()
    return "".join(part.get("text") or "" for part in parts if not part.get("thought"))


def _usage(data: Any) -> Usage:
    """``promptTokenCount`` includes the cached tokens; thinking tokens are billed as output."""
    if not isinstance(data, dict):
        return Usage()
    output = int(data.get("candidatesTokenCount") or 0) + int(data.get("thoughtsTokenCount") or 0)
    return Usage(int(data.get("promptTokenCount") or 0), output, int(data.get("cachedContentTokenCount") or 0))


def _answer(data: Any, model: str) -> ModelResponse:
    """A generateContent answer's JSON as a ModelResponse (a blocked prompt is an error)."""
    failure = _failure(data, model)
    if failure is not None:
        raise failure
    try:
        candidate = data["candidates"][0]
        return ModelResponse(_text(candidate), _usage(data.get("usageMetadata")),
                             data.get("modelVersion") or model, candidate.get("finishReason") or "STOP")
    except (KeyError, IndexError, TypeError, AttributeError) as error:
        raise ModelError("server_error", f"{model} sent an answer without candidates: {error!r}",
                         model=model) from None
