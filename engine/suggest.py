"""The one "did you mean" of every message about an unknown name: fields, inputs, names in scope,
models, addons, templates and functions."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def did_you_mean(name: str, known: Iterable[str]) -> str | None:
    """``"did you mean 'x'?"`` for the known name closest to ``name``; None if none is close."""
    close = difflib.get_close_matches(name, list(known), n=1)
    return f"did you mean {close[0]!r}?" if close else None
