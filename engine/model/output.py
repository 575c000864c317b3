"""Structured output: the JSON value in a model's answer, checked against the task's schema.

The answer is parsed (code fences allowed) and validated with jsonschema; an
invalid answer raises InvalidOutputError so the caller can ask again with the
error (``repair_request``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from engine.depth import json_too_deep_at
from engine.errors import InvalidOutputError
from engine.model.client import Message, ModelRequest

MAX_ANSWER_DEPTH = 64  # as for workflow files: a planner's answer becomes one
_FENCE = re.compile(r"^\s*```(?:json)?\s*\n?(.*?)\n?```\s*$", re.S)


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
    if json_too_deep_at(candidate, MAX_ANSWER_DEPTH) is not None:  # `json` and jsonschema recurse per level
        raise InvalidOutputError(f"nested too deep (more than {MAX_ANSWER_DEPTH} levels)", output=text, model=model)
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
