"""The one seam between the runtime and models: the ModelClient Protocol.

Providers (OpenAI-compatible, Anthropic, Gemini, llama.cpp) and the test
fake provider (``engine.testing.FakeModel``) implement it; the runtime knows nothing else
about them. A client raises ``engine.ModelError`` with a ``kind`` for failures.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

from engine.model.media import Generation, Image, Media


@dataclass(frozen=True, slots=True)
class Message:
    role: Literal["system", "user", "assistant"]
    content: str
    images: tuple[Image, ...] = ()  # sent after the text, in each provider's wire format


@dataclass(frozen=True, slots=True)
class ModelRequest:
    """What a task asks of a model."""

    model: str  # the alias, as the workflow names it
    messages: tuple[Message, ...]
    temperature: float | None = None
    max_tokens: int | None = None
    output_schema: Mapping[str, Any] | None = None  # ask for JSON matching this schema
    generate: Generation | None = None  # images or a video instead of text (the prompt describes them)

    @property
    def prompt(self) -> str:
        """The last user message."""
        return next((m.content for m in reversed(self.messages) if m.role == "user"), "")


@dataclass(frozen=True, slots=True)
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0
    images: int = 0  # made by a generation (priced per image)
    video_seconds: float = 0.0  # of video made (priced per second)


@dataclass(frozen=True, slots=True)
class ModelResponse:
    """A model's answer: its text, and the tokens it cost."""

    text: str
    usage: Usage = Usage()
    model: str = ""  # the provider's name for the model that answered
    finish_reason: str = "stop"
    media: tuple[Media, ...] = ()  # what a generation made


@dataclass(frozen=True, slots=True)
class TextDelta:
    """A piece of a streamed answer."""

    text: str


@runtime_checkable
class ModelClient(Protocol):
    """Answers model requests; ``stream`` yields TextDelta pieces, then the ModelResponse.

    A client without ``stream`` still works: the engine calls ``complete`` and its events
    carry no token deltas for that model.

    A client may also have ``async def count_tokens(self, request) -> int``: the prompt's
    exact token count by the model's own tokenizer, which the token gates then use. It must
    not block the event loop (llama.cpp's runs in a worker thread).
    """

    async def complete(self, request: ModelRequest) -> ModelResponse: ...

    def stream(self, request: ModelRequest) -> AsyncIterator[TextDelta | ModelResponse]: ...


def build_request(alias: str, system: str | None, prompt: str, *, temperature: float | None,
                  max_tokens: int | None, schema: Mapping[str, Any] | None,
                  images: tuple[Image, ...] = ()) -> ModelRequest:
    messages = (Message("system", system),) if system else ()
    return ModelRequest(alias, (*messages, Message("user", prompt, images)), temperature, max_tokens, schema)
