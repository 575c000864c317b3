"""The ``fake`` provider: scripted answers, errors and latency per alias, or an echo of the prompt.

Per alias it gives scripted answers in order (the last one repeats), raises
scripted errors, waits a scripted latency, and counts tokens deterministically
(or returns a scripted ModelResponse with its own usage). Aliases without a
script are answered with an echo of the prompt, or, when the request asks for
JSON, with the simplest value that matches the schema; the echo names the images a
message carries. A ``generate:`` request is answered with solid-colour PNGs of the size
asked for, or a placeholder MP4 header for a video (not a playable file: for the
runtime's tests; the loopback servers of the test suite make real videos). Configured as
``{kind: fake}`` for dry runs; ``engine.testing.FakeModel`` for tests.
"""

from __future__ import annotations

import inspect
import json
import struct
import zlib
from collections.abc import AsyncIterator, Callable, Collection, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import anyio

from engine.errors import ModelError
from engine.model.client import ModelRequest, ModelResponse, TextDelta, Usage
from engine.model.media import DEFAULT_VIDEO_SECONDS, Generation, Media

if TYPE_CHECKING:
    from engine.providers.settings import FakeProviderConfig

Answer = Any  # text, a JSON value, an exception to raise, or a callable(request) giving one of those


class FakeModel:
    """A ModelClient for tests and dry runs; ``calls`` records every request."""

    def __init__(
        self,
        script: Mapping[str, Answer | Sequence[Answer]] | None = None,
        *,
        echo: bool = True,
        latency: float | Mapping[str, float] = 0.0,
        chunk_size: int = 16,
        vision: bool | Collection[str] = False,
        generates: Collection[str] = (),
    ) -> None:
        """``vision``: every alias (True) or the aliases given read images; ``generates``: the media
        (``image``, ``video``) every alias may be asked to make. The engine checks workflows against both."""
        self.script = {alias: _as_list(answers) for alias, answers in (script or {}).items()}
        self.vision = vision
        self.generates = frozenset(generates)
        self.echo = echo
        self.latency = latency
        self.chunk_size = chunk_size
        self.calls: list[ModelRequest] = []
        self._served: dict[str, int] = {}

    @classmethod
    def from_settings(cls, name: str, config: FakeProviderConfig, models: Mapping[str, str]) -> FakeModel:
        return cls(config.answers, echo=config.echo, latency=config.latency)

    def calls_to(self, alias: str) -> list[ModelRequest]:
        return [call for call in self.calls if call.model == alias]

    def reads_images(self, alias: str) -> bool:
        return self.vision is True or (not isinstance(self.vision, bool) and alias in self.vision)

    async def complete(self, request: ModelRequest) -> ModelResponse:
        self.calls.append(request)
        answer = self._next_answer(request)
        delay = self.latency.get(request.model, 0.0) if isinstance(self.latency, Mapping) else self.latency
        if delay > 0:
            await anyio.sleep(delay)
        if callable(answer) and not isinstance(answer, BaseException):
            answer = answer(request)
            if inspect.isawaitable(answer):
                answer = await answer
        if isinstance(answer, BaseException):
            raise answer
        if isinstance(answer, ModelResponse):  # scripted usage, model name or finish reason
            return answer
        if request.generate is not None:
            return _generated(request.generate, request.model)
        text = answer if isinstance(answer, str) else json.dumps(answer)
        usage = Usage(sum(count_tokens(m.content) for m in request.messages), count_tokens(text))
        return ModelResponse(text, usage, model=f"fake/{request.model}")

    async def stream(self, request: ModelRequest) -> AsyncIterator[TextDelta | ModelResponse]:
        response = await self.complete(request)
        for start in range(0, len(response.text), self.chunk_size):
            yield TextDelta(response.text[start:start + self.chunk_size])
        yield response

    def _next_answer(self, request: ModelRequest) -> Answer:
        answers = self.script.get(request.model)
        if answers:
            served = self._served.get(request.model, 0)
            self._served[request.model] = served + 1
            return answers[min(served, len(answers) - 1)]
        if not self.echo:
            return ModelError("not_found", f"FakeModel has no script for {request.model!r}", model=request.model)
        if request.output_schema is not None:
            return example_for_schema(request.output_schema)
        images = [image for message in request.messages for image in message.images]
        seen = f" [images: {', '.join(f'{i.media_type} {i.width}x{i.height}' for i in images)}]" if images else ""
        return f"[{request.model}] {request.prompt}{seen}"


def _generated(generation: Generation, alias: str) -> ModelResponse:
    if generation.media == "video":
        seconds = float(generation.seconds or DEFAULT_VIDEO_SECONDS)
        return ModelResponse("", Usage(video_seconds=seconds), f"fake/{alias}", "stop", (Media(FAKE_MP4, "video/mp4"),))
    width, height = (int(side) for side in (generation.size or "8x8").split("x"))
    images = tuple(Media(solid_png(width, height, (40 * number % 256, 120, 200)), "image/png")
                   for number in range(generation.count))
    return ModelResponse("", Usage(images=generation.count), f"fake/{alias}", "stop", images)


FAKE_MP4 = b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom"  # an MP4's first box only: not playable


def solid_png(width: int, height: int, rgb: tuple[int, int, int]) -> bytes:
    """A PNG of one colour (8-bit RGB), written with zlib alone."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\x00" + bytes(rgb) * width  # filter byte 0, then the pixels
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(row * height))
            + chunk(b"IEND", b""))


def _as_list(answers: Answer | Sequence[Answer]) -> list[Answer]:
    return list(answers) if isinstance(answers, list | tuple) else [answers]


def count_tokens(text: str) -> int:
    """Deterministic and close enough for tests: one token per four characters."""
    return (len(text) + 3) // 4


def _example_object(schema: Mapping[str, Any]) -> dict[str, Any]:
    properties = schema.get("properties", {})
    return {name: example_for_schema(properties.get(name, {})) for name in schema.get("required", [])}


def _example_array(schema: Mapping[str, Any]) -> list[Any]:
    count = max(schema.get("minItems", 1), 1)
    count = min(count, schema.get("maxItems", count))
    return [example_for_schema(schema.get("items", {"type": "string"}))] * count


def _example_number(schema: Mapping[str, Any]) -> float:
    low = float(schema.get("minimum", schema.get("exclusiveMinimum", 0)))
    return low + 1 if "exclusiveMinimum" in schema else low


def _example_null(schema: Mapping[str, Any]) -> None:
    return None


def _example_string(schema: Mapping[str, Any]) -> str:
    return "x" * int(schema.get("minLength", 1))


def _example_integer(schema: Mapping[str, Any]) -> int:
    return int(_example_number(schema))


def _example_boolean(schema: Mapping[str, Any]) -> bool:
    return False


_EXAMPLES: dict[str, Callable[[Mapping[str, Any]], Any]] = {
    "object": _example_object, "array": _example_array, "string": _example_string, "number": _example_number,
    "integer": _example_integer, "boolean": _example_boolean, "null": _example_null,
}


def example_for_schema(schema: Mapping[str, Any]) -> Any:
    """The simplest value that matches a (common subset of) JSON Schema."""
    if "const" in schema:
        return schema["const"]
    if "enum" in schema:
        return schema["enum"][0]
    if "default" in schema:
        return schema["default"]
    for key in ("anyOf", "oneOf"):
        if key in schema:
            return example_for_schema(schema[key][0])
    kind = schema.get("type", "object")
    name = str(kind[0] if isinstance(kind, list) else kind)
    example = _EXAMPLES.get(name)
    return None if example is None else example(schema)
