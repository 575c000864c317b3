"""A prompt task's system message: its system prompt, its addons, and the schema instruction.

The schema is also given to the provider (``output_schema``); stating it in the
system message serves providers without structured output.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from engine.addons import Addon


def system_message(system: str | None, addons: tuple[str, ...], known: Mapping[str, Addon],
                   schema: Mapping[str, Any] | None) -> str | None:
    parts = [system] if system else []
    parts += [known[name].prompt.strip() for name in dict.fromkeys(addons) if name in known]  # each once
    if schema is not None:
        parts.append("Reply with only a JSON value, no prose, that matches this JSON Schema:\n"
                     + json.dumps(schema, sort_keys=True))
    return "\n\n".join(parts) or None
