"""From a prompt task and its variables to a ModelRequest, and from an answer to a value.

Structured output: the schema is given to the provider (``output_schema``)
and stated in the system message for providers without structured output;
the answer is parsed and validated with jsonschema, and an invalid answer is
raised as InvalidOutputError so the caller can ask again with the error.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from engine.addons import Addon
from engine.errors import InvalidOutputError
from engine.runtime.model import Message, ModelRequest

_FENCE = re.compile(r"^\s*```(?:json)?\s*\n?(.*?)\n?```\s*$", re.S)


def system_message(system: str | None, addons: tuple[str, ...], known: Mapping[str, Addon],
                   schema: Mapping[str, Any] | None) -> str | None:
    parts = [system] if system else []
    parts += [known[name].prompt.strip() for name in dict.fromkeys(addons) if name in known]  # each once
    if schema is not None:
        parts.append("Reply with only a JSON value, no prose, that matches this JSON Schema:\n"
                     + json.dumps(schema, sort_keys=True))
    return "\n\n".join(parts) or None


def build_request(alias: str, system: str | None, prompt: str, *, temperature: float | None,
                  max_tokens: int | None, schema: Mapping[str, Any] | None) -> ModelRequest:
    messages = (Message("system", system),) if system else ()
    return ModelRequest(alias, (*messages, Message("user", prompt)), temperature, max_tokens, schema)


def repair_request(request: ModelRequest, answer: str, error: str) -> ModelRequest:
    """The same request, with the invalid answer and what was wrong with it."""
    feedback = (f"That answer is invalid: {error}\n"
                "Reply again with only the corrected JSON value, matching the schema.")
    messages = (*request.messages, Message("assistant", answer), Message("user", feedback))
    return ModelRequest(request.model, messages, request.temperature, request.max_tokens, request.output_schema)


def parse_output(text: str, schema: Mapping[str, Any], model: str | None = None) -> Any:
    """The JSON value in ``text`` (code fences allowed), validated against ``schema``."""
    from jsonschema import Draft202012Validator

    fenced = _FENCE.match(text)
    candidate = fenced.group(1) if fenced else text.strip()
    try:
        value = json.loads(candidate, strict=False)  # raw newlines inside strings are common and harmless
    except json.JSONDecodeError as exc:
        raise InvalidOutputError(f"not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}",
                                 output=text, model=model) from None
    error = next(iter(Draft202012Validator(dict(schema)).iter_errors(value)), None)
    if error is not None:
        where = "/".join(map(str, error.absolute_path)) or "the top level"
        raise InvalidOutputError(f"at {where}: {error.message}", output=text, model=model)
    return value
