"""The slot stage: at most ``model_concurrency[alias]`` calls to an alias at once in a run.

A call waits for a slot before its timeout starts.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import anyio

from engine.model.client import ModelRequest, ModelResponse

if TYPE_CHECKING:
    from engine.resilience.call import Call, Pending


class SlotStage:
    def __init__(self, limits: Mapping[str, int]) -> None:
        self.limits = limits

    def enter(self, request: ModelRequest, call: Call) -> Pending:
        limit = self.limits.get(request.model)
        if limit is None:
            return None
        slots = call.run.model_slots
        limiter = slots.get(request.model)
        if limiter is None:
            limiter = slots[request.model] = anyio.CapacityLimiter(limit)
        return limiter.acquire()

    def exit(self, request: ModelRequest, call: Call, response: ModelResponse | None,
             error: BaseException | None) -> Pending:
        if request.model in self.limits:
            call.run.model_slots[request.model].release()
        return None
