"""Structured output: an answer that is not valid JSON for the task's schema is asked again, with the
invalid answer and what was wrong with it, at most ``REPAIR_ATTEMPTS`` times.

Each repair is a new request through the stages below (gated, retried and
metered like the first); each is announced as a ``TaskRetrying`` with the
kind ``invalid_output``.
"""

from __future__ import annotations

from typing import Any

from engine.errors import InvalidOutputError
from engine.events import TaskRetrying
from engine.model.client import ModelRequest
from engine.model.output import parse_output, repair_request
from engine.resilience.call import Call, TextHandler

REPAIR_ATTEMPTS = 2


async def answer_with_repairs(handler: TextHandler, request: ModelRequest, call: Call) -> Any:
    """The answer's JSON value, checked against ``request.output_schema``."""
    assert request.output_schema is not None
    for repair in range(REPAIR_ATTEMPTS + 1):
        text = await handler(request, call)
        try:
            return parse_output(text, request.output_schema, request.model)
        except InvalidOutputError as error:
            if repair == REPAIR_ATTEMPTS:
                raise
            call.run.emit(TaskRetrying, task_id=call.task_id, attempt=call.tally.attempts, model=request.model,
                          error_kind="invalid_output", error=error.message, delay_s=0.0)
            request = repair_request(request, text, error.message)
    raise AssertionError("unreachable")
