"""Google's Gemini API (``generateContent`` / ``streamGenerateContent``).

System messages become ``systemInstruction``; assistant turns have the role
``model``. Structured output goes through ``generationConfig.responseJsonSchema``
(with ``responseMimeType: application/json``). Streams are server-sent events
(``?alt=sse``), each a partial GenerateContentResponse; the last one carries
``usageMetadata`` and ``finishReason``. Images go as ``inline_data`` parts.

``generate: image`` asks an image model through ``generateContent`` with
``responseModalities`` (one call per image); ``generate: video`` starts a Veo
long-running operation (``predictLongRunning``), polls it with growing waits,
downloads the video it points to, and cancels the operation if the task is cancelled.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import AsyncIterator, Mapping
from contextlib import aclosing
from typing import Any
from urllib.parse import quote

import anyio

from engine.errors import ErrorKind, ModelError
from engine.model.client import Message, ModelRequest, ModelResponse, TextDelta, Usage
from engine.model.media import DEFAULT_VIDEO_SECONDS, Media, MediaError, sniff
from engine.providers.http import HttpClientPool, WholeAnswer, download, error_from_event, post_json, post_sse
from engine.providers.images import GEMINI, check_images, media_from_base64
from engine.providers.settings import HttpProviderConfig

DEFAULT_BASE_URL = "https://generativelanguage.googleapis.com"

POLL_GROWTH, POLL_MAX = 1.5, 60.0  # each wait between polls of an operation, longer, up to a minute
POLL_FAILURES = 5  # transient failures of polling in a row before the operation is given up
ASPECT_RATIOS = ("1:1", "2:3", "3:2", "3:4", "4:3", "4:5", "5:4", "9:16", "16:9", "21:9")
# google.rpc.Code of a failed operation -> the engine's error class (anything else: bad_request)
_RPC_KINDS: dict[int, ErrorKind] = {4: "timeout", 7: "auth", 8: "rate_limit", 10: "server_error", 13: "server_error",
              14: "server_error", 16: "auth"}


class GeminiProvider:
    image_rule = "gemini"  # how its images count in tokens (engine.model.media.image_tokens)

    @classmethod
    def from_settings(cls, name: str, config: HttpProviderConfig, models: Mapping[str, str]) -> GeminiProvider:
        return cls(name, config, models)

    def __init__(self, name: str, config: HttpProviderConfig, models: Mapping[str, str]) -> None:
        self.name = name
        self.models = dict(models)
        self.pool = HttpClientPool.for_provider(config, DEFAULT_BASE_URL, "x-goog-api-key")
        self.poll_interval = config.poll_interval

    def __repr__(self) -> str:
        return f"GeminiProvider({self.name!r})"  # never the headers: they hold the key

    async def complete(self, request: ModelRequest) -> ModelResponse:
        model = self.models.get(request.model, request.model)
        if request.generate is not None:
            return await (self._video(request, model) if request.generate.media == "video"
                          else self._images(request, model))
        return _answer(await post_json(self.pool, _path(model, "generateContent"), _body(request, model), model),
                       model)

    async def stream(self, request: ModelRequest) -> AsyncIterator[TextDelta | ModelResponse]:
        model = self.models.get(request.model, request.model)
        if request.generate is not None:
            yield await self.complete(request)
            return
        pieces: list[str] = []
        usage, finish, answered_by = Usage(), "STOP", model
        failure: ModelError | None = None
        chunks = post_sse(
            self.pool, _path(model, "streamGenerateContent") + "?alt=sse", _body(request, model), model)
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

    async def _images(self, request: ModelRequest, model: str) -> ModelResponse:
        """One ``generateContent`` call per image asked for, each answering with an image part."""
        generation = request.generate
        assert generation is not None
        config: dict[str, Any] = {"responseModalities": ["TEXT", "IMAGE"]}
        if generation.size is not None:
            config["imageConfig"] = {"aspectRatio": _aspect_ratio(generation.size, model)}
        body = {"contents": [{"role": "user", "parts": [{"text": request.prompt}]}], "generationConfig": config}
        media: list[Media] = []
        input_tokens = output_tokens = 0
        for _ in range(generation.count):
            data = await post_json(self.pool, _path(model, "generateContent"), body, model)
            failure = _failure(data, model)
            if failure is not None:
                raise failure
            usage = _usage(data.get("usageMetadata"))
            input_tokens, output_tokens = input_tokens + usage.input_tokens, output_tokens + usage.output_tokens
            media += _inline_media(data, model)[:1]
        return ModelResponse("", Usage(input_tokens, output_tokens, images=len(media)), model, "STOP", tuple(media))

    async def _video(self, request: ModelRequest, model: str) -> ModelResponse:
        """A Veo operation: started, polled until done, its video downloaded; cancelled if the task is."""
        generation = request.generate
        assert generation is not None
        parameters: dict[str, Any] = {}
        if generation.aspect_ratio is not None:
            parameters["aspectRatio"] = generation.aspect_ratio
        if generation.seconds is not None:
            parameters["durationSeconds"] = generation.seconds
        body = {"instances": [{"prompt": request.prompt}], "parameters": parameters}
        started = await post_json(self.pool, _path(model, "predictLongRunning"), body, model)
        name = started.get("name") if isinstance(started, dict) else None
        if not isinstance(name, str) or not name:
            raise ModelError("server_error", f"{model} started an operation without a name", model=model)
        try:
            done = await self._wait(name, model)
        except BaseException:
            with anyio.CancelScope(shield=True), anyio.move_on_after(5):
                await self._cancel(name, model)
            raise
        media = [Media(*await _video_file(self.pool, uri, model)) for uri in _video_uris(done, model)]
        seconds = float(generation.seconds or DEFAULT_VIDEO_SECONDS) * len(media)
        return ModelResponse("", Usage(video_seconds=seconds), model, "STOP", tuple(media))

    async def _wait(self, name: str, model: str) -> dict[str, Any]:
        """The operation once done: polled after growing waits; a poll that fails for a passing reason
        is tried again (up to ``POLL_FAILURES`` in a row), since starting over would pay twice."""
        delay, failures = self.poll_interval, 0
        while True:
            await anyio.sleep(delay)
            delay = min(delay * POLL_GROWTH, POLL_MAX)
            try:
                operation = await post_json(self.pool, f"/v1beta/{_operation_path(name)}", None, model, method="GET")
            except ModelError as error:
                failures += 1
                if error.kind not in ("rate_limit", "server_error", "timeout", "connection") \
                        or failures >= POLL_FAILURES:
                    raise
                continue
            failures = 0
            if isinstance(operation, dict) and operation.get("done"):
                failed = operation.get("error")
                if isinstance(failed, dict):
                    raise _operation_error(failed, model)
                return operation

    async def _cancel(self, name: str, model: str) -> None:
        with contextlib.suppress(ModelError):  # best effort: else the operation ends on its own
            await post_json(self.pool, f"/v1beta/{_operation_path(name)}:cancel", {}, model)


def _operation_error(error: dict[str, Any], model: str) -> ModelError:
    code = error.get("code")
    kind: ErrorKind = _RPC_KINDS.get(code, "bad_request") if isinstance(code, int) else "server_error"
    return ModelError(kind, f"{model}'s operation failed: {error.get('message') or code}"[:500], model=model)


def _operation_path(name: str) -> str:
    """An operation's name as a URL path (its segments quoted; it comes from the provider)."""
    return "/".join(quote(part, safe="") for part in name.split("/"))


def _aspect_ratio(size: str, model: str) -> str:
    width, height = (int(side) for side in size.split("x"))
    divisor = math.gcd(width, height)
    ratio = f"{width // divisor}:{height // divisor}"
    if ratio not in ASPECT_RATIOS:
        raise ModelError("bad_request", f"Gemini ({model}) makes images in the aspect ratios "
                         f"{', '.join(ASPECT_RATIOS)}, not {size} ({ratio})", model=model)
    return ratio


def _inline_media(data: Any, model: str) -> list[Media]:
    """The image parts of a generateContent answer."""
    try:
        parts = data["candidates"][0]["content"]["parts"]
    except (KeyError, IndexError, TypeError):
        raise ModelError("server_error", f"{model} sent an answer without candidates", model=model) from None
    media = []
    for part in parts if isinstance(parts, list) else ():
        inline = (part.get("inlineData") or part.get("inline_data")) if isinstance(part, dict) else None
        if isinstance(inline, dict):
            declared = str(inline.get("mimeType") or inline.get("mime_type") or "image/png")
            made = media_from_base64(inline.get("data"), declared, model)
            # The bytes' own header names the type (and the file's suffix), not the label; a type the
            # engine does not read is kept as declared.
            with contextlib.suppress(MediaError):
                made = Media(made.data, sniff(made.data, f"an image from {model}")[0])
            media.append(made)
    if not media:
        raise ModelError("server_error", f"{model} answered without an image (is it an image model?)", model=model)
    return media


def _video_uris(operation: dict[str, Any], model: str) -> list[str]:
    response = operation.get("response")
    response = response if isinstance(response, dict) else {}  # the provider's answer: checked, not trusted
    video_response = response.get("generateVideoResponse") or response.get("generatedVideos") or {}
    samples = video_response.get("generatedSamples") if isinstance(video_response, dict) else None
    samples = samples if isinstance(samples, list) else []
    uris = [sample["video"]["uri"] for sample in samples
            if isinstance(sample, dict) and isinstance(sample.get("video"), dict)
            and isinstance(sample["video"].get("uri"), str)]
    if not uris:
        filtered = video_response.get("raiMediaFilteredReasons") if isinstance(video_response, dict) else None
        why = f": filtered ({'; '.join(map(str, filtered))})" if filtered else ""
        raise ModelError("bad_request" if filtered else "server_error", f"{model}'s operation made no video{why}",
                         model=model)
    return uris


async def _video_file(pool: HttpClientPool, uri: str, model: str) -> tuple[bytes, str]:
    data, media_type = await download(pool, uri, model)
    return data, media_type if media_type.startswith("video/") else "video/mp4"


def _path(model: str, method: str) -> str:
    return f"/v1beta/models/{quote(model.removeprefix('models/'), safe='')}:{method}"


def _parts(message: Message) -> list[dict[str, Any]]:
    parts: list[dict[str, Any]] = [{"text": message.content}]
    parts += [{"inline_data": {"mime_type": image.media_type, "data": image.base64()}} for image in message.images]
    return parts


def _body(request: ModelRequest, model: str) -> dict[str, Any]:
    check_images(request, GEMINI, model)
    system = [message.content for message in request.messages if message.role == "system"]
    body: dict[str, Any] = {
        "contents": [{"role": "model" if message.role == "assistant" else "user", "parts": _parts(message)}
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
