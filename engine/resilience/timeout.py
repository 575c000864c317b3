"""The timeout: each attempt gets ``timeout`` seconds for the provider's answer, then fails with ``timeout``.

A timer per attempt (``anyio.fail_after``) costs a timer handle in the event
loop's heap; with ten thousand calls in flight that is a third of a call's
overhead. A run instead keeps its deadlines in ``Deadlines``: buckets of
cancel scopes by due time, watched by one task that sleeps until the earliest
bucket is due and cancels what is still in it. Registering and leaving a
bucket are a set insertion and removal. A deadline fires at most ``RESOLUTION``
seconds late. Deadlines are read from ``time.monotonic`` (the watcher only hands
anyio relative delays, so either backend's clock will do). Calls outside a run (``Engine.plan``) use ``fail_after``.
"""

from __future__ import annotations

import heapq
import math
import time
from collections.abc import Awaitable
from typing import TYPE_CHECKING

import anyio

from engine.errors import ModelError
from engine.model.client import ModelRequest, ModelResponse

if TYPE_CHECKING:
    from engine.resilience.call import Call, Handler

RESOLUTION = 0.01  # seconds


class Deadlines:
    """Per-attempt deadlines of one run, watched by one task (``watch``)."""

    def __init__(self) -> None:
        self._buckets: dict[int, set[anyio.CancelScope]] = {}
        self._due: list[int] = []  # bucket keys, a heap; keys of emptied buckets are skipped lazily
        self._earlier = anyio.Event()

    def add(self, scope: anyio.CancelScope, seconds: float) -> int:
        key = math.ceil((time.monotonic() + seconds) / RESOLUTION)
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = set()
            if not self._due or key < self._due[0]:
                self._earlier.set()  # the watcher sleeps until a later bucket, or forever: wake it
            heapq.heappush(self._due, key)
        bucket.add(scope)
        return key

    def discard(self, key: int, scope: anyio.CancelScope) -> None:
        bucket = self._buckets.get(key)
        if bucket is not None:
            bucket.discard(scope)
            if not bucket:
                del self._buckets[key]

    async def watch(self) -> None:
        """Cancel the scopes whose deadline has passed, until cancelled."""
        while True:
            while self._due and self._due[0] not in self._buckets:
                heapq.heappop(self._due)
            delay = self._due[0] * RESOLUTION - time.monotonic() if self._due else math.inf
            if delay > 0:
                with anyio.move_on_after(delay):
                    await self._earlier.wait()
                self._earlier = anyio.Event()
                continue
            for scope in self._buckets.pop(heapq.heappop(self._due), ()):
                scope.cancel()


class TimeoutStage:
    def __init__(self, inner: Handler) -> None:
        self.inner = inner

    def __call__(self, request: ModelRequest, call: Call) -> Awaitable[ModelResponse]:
        if call.timeout is None:
            return self.inner(request, call)  # nothing to do: no coroutine of its own
        return self._timed(request, call, call.timeout)

    async def _timed(self, request: ModelRequest, call: Call, seconds: float) -> ModelResponse:
        deadlines = call.run.deadlines
        if deadlines is None:
            try:
                with anyio.fail_after(seconds):
                    return await self.inner(request, call)
            except TimeoutError:
                raise _timeout(request, seconds) from None
        scope = anyio.CancelScope()
        key = deadlines.add(scope, seconds)
        try:
            with scope:
                return await self.inner(request, call)
        finally:
            deadlines.discard(key, scope)
        raise _timeout(request, seconds)  # only reached when the scope was cancelled, by its deadline


def _timeout(request: ModelRequest, seconds: float) -> ModelError:
    return ModelError("timeout", f"no answer within {seconds} s", model=request.model)
