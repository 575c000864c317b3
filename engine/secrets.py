"""Secrets scrubbed by value: whatever produced a text (a provider that echoes the request's headers in
an error, a function that prints its token, a model that repeats it), a configured secret never leaves
the engine in an error, an event or a result.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

REDACTED = "[redacted]"
SHORTEST = 6  # shorter values would scrub ordinary words; no real key is this short


class Scrubber:
    """Replaces every known secret value in texts and in the strings of JSON-like values."""

    __slots__ = ("secrets",)

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        found = {secret for secret in secrets if len(secret) >= SHORTEST}
        self.secrets = tuple(sorted(found, key=len, reverse=True))  # a longer secret may contain a shorter one

    def __bool__(self) -> bool:
        return bool(self.secrets)

    def text(self, text: str) -> str:
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        return text

    def value(self, value: Any) -> Any:
        """``value`` with every string in it scrubbed (dicts, lists and tuples are rebuilt)."""
        if not self.secrets:
            return value
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {key: self.value(item) for key, item in value.items()}
        if isinstance(value, list | tuple):
            return type(value)(self.value(item) for item in value)
        return value

    def error(self, error: BaseException) -> BaseException:
        """The same error, its message scrubbed (``message`` and ``args``, which tracebacks show)."""
        if self.secrets:
            error.args = tuple(self.value(list(error.args)))
            message = getattr(error, "message", None)
            if isinstance(message, str):
                error.message = self.text(message)  # type: ignore[attr-defined]
        return error


NO_SECRETS = Scrubber()
