"""The slot stage: calls at once, per alias (``model_concurrency``) and per HTTP provider (its
``max_connections``), in a run.

A call takes its slots before it asks the circuit breaker, so calls queued behind a
dead endpoint are refused the moment its breaker opens, instead of each waiting in
the HTTP client's pool for a timeout of its own. A call waits for its slots before
its time limit starts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import anyio

from engine.model.client import ModelRequest, ModelResponse

if TYPE_CHECKING:
    from engine.resilience.call import Call, Pending

Slot = tuple[str, int]  # a key ("alias:fast_ai", "provider:router") and how many calls it allows at once


class SlotStage:
    def __init__(self, slots: Mapping[str, Sequence[Slot]]) -> None:
        self.slots = slots  # alias -> the slots a call to it takes, in order

    def enter(self, request: ModelRequest, call: Call) -> Pending:
        wanted = self.slots.get(request.model)
        if not wanted:
            return None
        limiters = [_limiter(call, key, limit) for key, limit in wanted]
        return limiters[0].acquire() if len(limiters) == 1 else _acquire_all(limiters)

    def exit(self, request: ModelRequest, call: Call, response: ModelResponse | None,
             error: BaseException | None) -> Pending:
        for key, _ in reversed(self.slots.get(request.model, ())):
            call.run.model_slots[key].release()
        return None


def _limiter(call: Call, key: str, limit: int) -> anyio.CapacityLimiter:
    limiters = call.run.model_slots
    limiter = limiters.get(key)
    if limiter is None:
        limiter = limiters[key] = anyio.CapacityLimiter(limit)
    return limiter


async def _acquire_all(limiters: Sequence[anyio.CapacityLimiter]) -> None:
    taken: list[anyio.CapacityLimiter] = []
    try:
        for limiter in limiters:  # always in the same order: no two calls wait for each other's slots
            await limiter.acquire()
            taken.append(limiter)
    except BaseException:
        for limiter in reversed(taken):
            limiter.release()
        raise
