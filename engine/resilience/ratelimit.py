"""Per-provider request and token rates: a call waits, never fails, when a limit is near.

A sliding window of the last 60 seconds of calls; ``acquire`` sleeps (through
the engine's ``sleep``, so tests never wait) until the call fits.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING

from engine.model.client import ModelRequest, ModelResponse
from engine.model.prices import estimate_usage

if TYPE_CHECKING:
    from engine.resilience.call import Call, Pending, Sleep

WINDOW = 60.0


class RateLimiter:
    def __init__(self, rpm: int | None, tpm: int | None, clock: Callable[[], float] = time.monotonic) -> None:
        self.rpm, self.tpm = rpm, tpm
        self.clock = clock
        self.calls: deque[tuple[float, int]] = deque()

    async def acquire(self, tokens: int, sleep: Callable[[float], Awaitable[None]]) -> float:
        """Wait until a call of ``tokens`` fits both limits; returns the seconds waited."""
        start, waited = self.clock(), 0.0
        now = start
        while (delay := self._delay(tokens, now)) > 0:
            await sleep(delay)
            waited += delay
            now = max(self.clock(), start + waited)  # a fake sleep in tests does not move the clock
        self.calls.append((now, tokens))
        return waited

    def _delay(self, tokens: int, now: float) -> float:
        while self.calls and self.calls[0][0] <= now - WINDOW:
            self.calls.popleft()
        delay = 0.0
        if self.rpm is not None and len(self.calls) >= self.rpm:
            delay = self.calls[len(self.calls) - self.rpm][0] + WINDOW - now
        if self.tpm is not None:
            used = sum(count for _, count in self.calls)
            for moment, count in self.calls:  # wait until enough of the window's tokens have expired
                if used + min(tokens, self.tpm) <= self.tpm:
                    break
                used -= count
                delay = max(delay, moment + WINDOW - now)
        return max(delay, 0.0)


class RateLimitStage:
    """Waits for the alias's provider limits (``rpm``/``tpm``) before each attempt."""

    def __init__(self, limiters: Mapping[str, RateLimiter], sleep: Sleep) -> None:
        self.limiters = limiters
        self.sleep = sleep

    def enter(self, request: ModelRequest, call: Call) -> Pending:
        limiter = self.limiters.get(request.model)
        if limiter is None:
            return None
        usage = estimate_usage(request)
        return limiter.acquire(usage.input_tokens + usage.output_tokens, self.sleep)

    def exit(self, request: ModelRequest, call: Call, response: ModelResponse | None,
             error: BaseException | None) -> Pending:
        return None
