"""What calls cost: prices per million tokens, and the most a request may use before it is sent."""

from __future__ import annotations

from dataclasses import dataclass

from engine.model.client import ModelRequest, Usage
from engine.model.tokens import MESSAGE_OVERHEAD, estimate_tokens, images_tokens

DEFAULT_OUTPUT_ESTIMATE = 1024  # tokens assumed for a call without max_tokens; under a cost limit, the most it may ask


@dataclass(frozen=True, slots=True)
class Price:
    """US dollars per million tokens; per image and per second of video a generation makes."""

    input: float = 0.0
    output: float = 0.0
    cached_input: float | None = None
    image: float = 0.0
    video_second: float = 0.0

    def cost(self, usage: Usage) -> float:
        cached_price = self.input if self.cached_input is None else self.cached_input
        fresh = usage.input_tokens - usage.cached_input_tokens
        tokens = (fresh * self.input + usage.cached_input_tokens * cached_price
                  + usage.output_tokens * self.output) / 1_000_000
        if usage.images or usage.video_seconds:
            tokens += usage.images * self.image + usage.video_seconds * self.video_second
        return tokens

    def output_tokens_for(self, amount: float, input_tokens: int) -> int | None:
        """The most answer tokens ``amount`` dollars pay for after ``input_tokens`` of prompt at the full
        input price (None: answers cost nothing, so no amount bounds them)."""
        if self.output <= 0:
            return None
        left = amount * 1_000_000 - input_tokens * self.input
        return max(int(left // self.output), 0)


FREE = Price()


def prompt_bound(request: ModelRequest) -> int:
    """The gates' upper bound on the prompt's tokens, without a tokenizer (``tokens.estimate_tokens``),
    images counted by the largest provider rule."""
    text = sum(estimate_tokens(message.content) + MESSAGE_OVERHEAD for message in request.messages)
    return text + images_tokens(request) if any(message.images for message in request.messages) else text


def estimate_usage(request: ModelRequest) -> Usage:
    """What a call may cost at most: the bound on its prompt, and ``max_tokens`` of answer (a generation:
    the images or seconds of video it asks for, and its prompt)."""
    if request.generate is not None:
        images, seconds = request.generate.estimate()
        return Usage(prompt_bound(request), request.max_tokens or 0, images=images, video_seconds=seconds)
    return Usage(prompt_bound(request), request.max_tokens or DEFAULT_OUTPUT_ESTIMATE)
