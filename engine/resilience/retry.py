"""Retries, and their tenacity strategies.

The pipeline makes the first attempt bare: tenacity's machinery costs about as
much as the rest of a call, and most calls succeed at once. A transient
failure is handed to ``Retrier.again``, which replays it into tenacity, so
attempt numbers, waits and the stop rules are exactly tenacity's. Each retry
is announced (``TaskRetrying``).

- ``wait``: full jitter (a random delay between 0 and ``initial * backoff**n``,
  capped at ``max_delay`` after the jitter), unless the error carries a
  ``Retry-After``, which is honoured but clamped to ``retry_after_max``.
- ``stop``: the task's ``max_attempts``; the engine's attempts per error class
  (counted per class over the task's attempts); and the task's total retry time
  budget ``max_elapsed``, measured as the larger of the real time since the
  first attempt and the time slept (so a fake ``sleep`` in tests counts too).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import anyio
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception
from tenacity.stop import stop_base
from tenacity.wait import wait_base, wait_exponential, wait_random_exponential

from engine.compiler.plan import RetrySpec
from engine.errors import ModelError
from engine.events import TaskRetrying
from engine.resilience.call import Call, Sleep

T = TypeVar("T")


class Retrier:
    """Attempts again after a transient failure, with backoff, until the policy says stop."""

    def __init__(self, sleep: Sleep, attempts_per_kind: Mapping[Any, int], retry_after_max: float,
                 is_open: Callable[[str], bool] | None = None) -> None:
        self.sleep = sleep
        self.attempts_per_kind = attempts_per_kind
        self.retry_after_max = retry_after_max
        self.is_open = is_open  # alias -> is its circuit breaker open: then waiting to retry is pointless

    async def again(self, failure: ModelError, attempt: Callable[[], Awaitable[T]], call: Call, model: str) -> T:
        """Retry after the first attempt's ``failure`` (replayed into tenacity) as ``call.retry`` allows."""
        spec = call.retry
        if not failure.transient or spec is None or spec.max_attempts <= 1:
            raise failure
        first = [failure]
        async for retry in self._retrying(spec, model, call):
            with retry:
                if first:
                    raise first.pop()
                return await attempt()
        raise AssertionError("tenacity returns or re-raises")

    async def _pause(self, seconds: float, model: str, call: Call) -> None:
        """Wait before the next attempt, or less: until the model's breaker opens (the attempt that
        follows is then refused at once, and the call falls over)."""
        if self.is_open is None:
            await self.sleep(seconds)
            return
        opened = call.run.breaker_opened.setdefault(model, anyio.Event())
        async with anyio.create_task_group() as group:
            async def wait(done: Callable[[], Awaitable[object]]) -> None:
                await done()
                group.cancel_scope.cancel()

            group.start_soon(wait, lambda: self.sleep(seconds))
            group.start_soon(wait, opened.wait)

    def _retrying(self, spec: RetrySpec, model: str, call: Call) -> AsyncRetrying:
        def announce(retry_state: RetryCallState) -> None:
            error = retry_state.outcome.exception() if retry_state.outcome else None
            if isinstance(error, ModelError) and retry_state.next_action is not None:
                call.run.emit(TaskRetrying, task_id=call.task_id, attempt=call.tally.attempts, model=model,
                              error_kind=error.kind, error=error.message, delay_s=retry_state.next_action.sleep)

        is_open = self.is_open
        blocked = (lambda: is_open(model)) if is_open is not None else None
        async def pause(seconds: float) -> None:
            await self._pause(seconds, model, call)

        return AsyncRetrying(
            stop=ModelStop(spec, self.attempts_per_kind, blocked), sleep=pause, reraise=True,
            wait=ModelWait(spec, self.retry_after_max), before_sleep=announce,
            retry=retry_if_exception(lambda error: isinstance(error, ModelError) and worth_retrying(error, call)),
        )


def worth_retrying(error: ModelError, call: Call) -> bool:
    """Is a failed attempt retried on the same model? Transient errors are, unless the task's ``retry.on``
    sends them to a next model that exists: at once (``fallback``), or when a rate limit's Retry-After is
    longer than the policy would ever wait. The same rule for the first attempt and every later one."""
    spec = call.retry
    if spec is None or not error.transient:
        return False
    if not call.fallback:
        return True  # nowhere else to go
    action = spec.action(error.kind)
    if action == "fallback":
        return False
    return not (action == "retry_then_fallback" and (error.retry_after or 0) > spec.max_delay)


def stays_on_model(error: ModelError, call: Call) -> bool:
    """A ``retry`` policy keeps its class of error on the model: it never moves to the next one."""
    return error.transient and call.retry is not None and call.retry.action(error.kind) == "retry"


class ModelWait(wait_base):
    def __init__(self, spec: RetrySpec, retry_after_max: float) -> None:
        if spec.jitter == "full":
            self.backoff: wait_base = wait_random_exponential(
                multiplier=spec.initial_delay, max=spec.max_delay, exp_base=spec.backoff)
        else:
            self.backoff = wait_exponential(multiplier=spec.initial_delay, max=spec.max_delay, exp_base=spec.backoff)
        self.retry_after_max = retry_after_max
        self.max_elapsed = spec.max_elapsed

    def __call__(self, retry_state: RetryCallState) -> float:
        error = retry_state.outcome.exception() if retry_state.outcome else None
        if isinstance(error, ModelError) and error.retry_after is not None:
            delay = min(error.retry_after, self.retry_after_max)
        else:
            delay = self.backoff(retry_state)
        if self.max_elapsed is not None:  # never sleep past the task's retry budget
            delay = min(delay, max(self.max_elapsed - elapsed(retry_state), 0.0))
        return delay


class ModelStop(stop_base):
    def __init__(self, spec: RetrySpec, attempts_per_kind: Mapping[Any, int],
                 blocked: Callable[[], bool] | None = None) -> None:
        self.max_attempts = spec.max_attempts
        self.max_elapsed = spec.max_elapsed
        self.attempts_per_kind = attempts_per_kind
        self.blocked = blocked  # true once the model's breaker is open: stop before sleeping
        self.seen: Counter[str] = Counter()

    def __call__(self, retry_state: RetryCallState) -> bool:
        error = retry_state.outcome.exception() if retry_state.outcome else None
        kind = error.kind if isinstance(error, ModelError) else "unknown"
        self.seen[kind] += 1
        if retry_state.attempt_number >= self.max_attempts:
            return True
        if self.blocked is not None and self.blocked():
            return True
        if self.seen[kind] >= self.attempts_per_kind.get(kind, self.max_attempts):
            return True
        return self.max_elapsed is not None and elapsed(retry_state) >= self.max_elapsed


def elapsed(retry_state: RetryCallState) -> float:
    """Time spent on the task's attempts so far: real time, or time slept if more (fake sleeps)."""
    return max(retry_state.seconds_since_start or 0.0, retry_state.idle_for)
