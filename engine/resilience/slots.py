"""The slot stage: at most ``model_concurrency[alias]`` calls to an alias at once in a run.

A call waits for a slot before its timeout starts.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import anyio

from engine.model.client import ModelRequest, ModelResponse

if TYPE_CHECKING:
    from engine.resilience.call import Call, Handler


class SlotStage:
    def __init__(self, inner: Handler, limits: Mapping[str, int]) -> None:
        self.inner = inner
        self.limits = limits

    async def __call__(self, request: ModelRequest, call: Call) -> ModelResponse:
        limit = self.limits.get(request.model)
        if limit is None:
            return await self.inner(request, call)
        slots = call.run.model_slots
        limiter = slots.get(request.model)
        if limiter is None:
            limiter = slots[request.model] = anyio.CapacityLimiter(limit)
        async with limiter:
            return await self.inner(request, call)
