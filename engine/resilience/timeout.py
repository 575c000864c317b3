"""The timeout: each attempt gets ``timeout`` seconds for the provider's answer, then fails with ``timeout``.

A timer per attempt (``anyio.fail_after``) costs a timer handle in the event
loop's heap; with ten thousand calls in flight that is a third of a call's
overhead. A run instead keeps its deadlines in ``Deadlines``: buckets of
cancel scopes by due time, watched by one task that sleeps until the earliest
bucket is due and cancels what is still in it. Registering and leaving a
bucket are a set insertion and removal. A deadline fires at most ``RESOLUTION``
seconds late. Deadlines are read from ``time.monotonic`` (the watcher only hands
anyio relative delays, so either backend's clock will do). Calls outside a run
(``Engine.plan``) use ``fail_after``.
"""

from __future__ import annotations

import contextlib
import heapq
import math
import time
from contextlib import AbstractContextManager
from types import TracebackType
from typing import TYPE_CHECKING, Any

import anyio

from engine.errors import ModelError
from engine.model.client import ModelRequest

if TYPE_CHECKING:
    from engine.resilience.call import Call

RESOLUTION = 0.01  # seconds


class Deadlines:
    """Per-attempt deadlines of one run, watched by one task (``watch``)."""

    def __init__(self) -> None:
        self._buckets: dict[int, set[anyio.CancelScope]] = {}
        self._due: list[int] = []  # bucket keys, a heap; keys of emptied buckets are skipped lazily
        self._queued: set[int] = set()  # the keys in the heap, each once however often its bucket returns
        self._earlier = anyio.Event()

    def add(self, scope: anyio.CancelScope, seconds: float) -> int:
        key = math.ceil((time.monotonic() + seconds) / RESOLUTION)
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = set()
            if not self._due or key < self._due[0]:
                self._earlier.set()  # the watcher sleeps until a later bucket, or forever: wake it
            if key not in self._queued:
                self._queued.add(key)
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
                self._queued.discard(heapq.heappop(self._due))
            delay = self._due[0] * RESOLUTION - time.monotonic() if self._due else math.inf
            if delay > 0:
                with anyio.move_on_after(delay):
                    await self._earlier.wait()
                self._earlier = anyio.Event()
                continue
            key = heapq.heappop(self._due)
            self._queued.discard(key)
            for scope in self._buckets.pop(key, ()):
                scope.cancel()


class TimeLimit:
    """One attempt's time limit, a context manager around the provider's call: ``seconds``, then
    ModelError ``timeout``. A class, not a generator or coroutine, so entering it adds no frame to
    the call in flight. Without ``deadlines`` (a call outside a run) it is ``anyio.fail_after``."""

    __slots__ = ("deadlines", "key", "model", "scope", "seconds", "timer")

    def __init__(self, seconds: float, model: str, deadlines: Deadlines | None) -> None:
        self.seconds = seconds
        self.model = model
        self.deadlines = deadlines
        self.scope = anyio.CancelScope()
        self.key = 0
        self.timer: Any = None

    def __enter__(self) -> None:
        if self.deadlines is None:
            self.timer = anyio.fail_after(self.seconds)
            self.timer.__enter__()
        else:
            self.scope.__enter__()
            self.key = self.deadlines.add(self.scope, self.seconds)

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> bool:
        if self.deadlines is None:
            try:
                return bool(self.timer.__exit__(kind, error, traceback))
            except TimeoutError:
                raise self._expired() from None
        self.deadlines.discard(self.key, self.scope)
        swallowed = self.scope.__exit__(kind, error, traceback)
        if self.scope.cancelled_caught:  # it caught its own cancellation: the deadline passed
            raise self._expired() from None
        return kind is not None and bool(swallowed)

    def _expired(self) -> ModelError:
        return ModelError("timeout", f"no answer within {self.seconds} s", model=self.model)


def time_limit(request: ModelRequest, call: Call) -> AbstractContextManager[None]:
    """The time limit of an attempt of ``call`` (none if its task has no ``timeout``)."""
    if call.timeout is None:
        return _NO_LIMIT
    return TimeLimit(call.timeout, request.model, call.run.deadlines)


_NO_LIMIT = contextlib.nullcontext()
