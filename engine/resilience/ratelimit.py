"""Per-provider request and token rates: a call waits, never fails, when a limit is near.

A sliding window of the last 60 seconds of calls; ``acquire`` sleeps (through
the engine's ``sleep``, so tests never wait) until the call fits.

``RateLimiter`` keeps the window in this process. ``SharedRateLimiter``
(``rate_limits: {storage: redis://...}``) keeps it in Redis, so every process
using that Redis (workers, Ray actors) stays under the provider's limits
together: one Lua script checks the window and records the call as one step
(``ACQUIRE``), on Redis's own clock (``TIME``), so the workers' clocks do not
matter. Its keys, per provider (the name under ``providers``)::

    orchestrion:rate:{NAME}:calls    sorted set: one member "<call id>:<tokens>" per call, scored by
                                     its time in milliseconds; older than the window: removed
    orchestrion:rate:{NAME}:tokens   the tokens of the calls in the window (tpm)

Both expire a second after the window once no call comes. When Redis cannot be
reached, the call goes on under a window of this process's own (the same limits,
so N processes may send N times as much), a warning is logged, and Redis is
asked again after ``RETRY_REDIS_AFTER`` seconds.
"""

from __future__ import annotations

import math
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Protocol

from engine.model.client import ModelRequest, ModelResponse
from engine.model.prices import estimate_usage
from engine.resilience.redis_link import RedisLink, Script, logger

if TYPE_CHECKING:
    from engine.resilience.call import Call, Pending, Sleep

WINDOW = 60.0
RETRY_REDIS_AFTER = 5.0  # seconds on the local window after Redis failed, before Redis is asked again


class Limiter(Protocol):
    async def acquire(self, tokens: int, sleep: Callable[[float], Awaitable[None]]) -> float:
        """Wait until a call of ``tokens`` fits the limits, and count it; returns the seconds waited."""
        ...


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


# KEYS: the calls (sorted set), the tokens in the window. ARGV: rpm (0: none), tpm (0: none), the call's
# tokens, its id, the window in ms, and the time in ms ("" for Redis's own; a test's fake clock).
# Returns {1, now} once the call is counted (a retried call with the same id is counted once), or
# {0, ms to wait}. The waits are those of RateLimiter._delay, on the window kept here.
ACQUIRE = Script("""
local calls, counted = KEYS[1], KEYS[2]
local rpm, tpm, tokens = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local member, window = ARGV[4] .. ':' .. ARGV[3], tonumber(ARGV[5])
local now
if ARGV[6] ~= '' then
  now = tonumber(ARGV[6])
else
  local time = redis.call('TIME')
  now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
end
if redis.call('ZSCORE', calls, member) then return {1, now} end
local function tokens_of(entry) return tonumber(string.match(entry, ':(%d+)$')) end
local expired = redis.call('ZRANGEBYSCORE', calls, '-inf', now - window)
if #expired > 0 then
  local freed = 0
  for _, entry in ipairs(expired) do freed = freed + tokens_of(entry) end
  redis.call('ZREMRANGEBYSCORE', calls, '-inf', now - window)
  redis.call('DECRBY', counted, freed)
end
local delay = 0
local count = redis.call('ZCARD', calls)
if rpm > 0 and count >= rpm then
  local oldest = redis.call('ZRANGE', calls, count - rpm, count - rpm, 'WITHSCORES')
  delay = tonumber(oldest[2]) + window - now
end
if tpm > 0 then
  local used = tonumber(redis.call('GET', counted) or '0')
  local need = math.min(tokens, tpm)
  local start = 0
  while used + need > tpm do
    local page = redis.call('ZRANGE', calls, start, start + 99, 'WITHSCORES')
    if #page == 0 then break end
    for i = 1, #page, 2 do
      if used + need <= tpm then break end
      used = used - tokens_of(page[i])
      delay = math.max(delay, tonumber(page[i + 1]) + window - now)
    end
    start = start + 100
  end
end
if delay > 0 then return {0, math.ceil(delay)} end
redis.call('ZADD', calls, now, member)
redis.call('INCRBY', counted, tokens)
redis.call('PEXPIRE', calls, window + 1000)
redis.call('PEXPIRE', counted, window + 1000)
return {1, now}
""")


class SharedRateLimiter:
    """A provider's window kept in Redis, for every process using it (see the module's docstring).

    ``clock`` (seconds) replaces Redis's ``TIME``: for tests, whose fake sleep moves a fake clock.
    """

    def __init__(self, link: RedisLink, provider: str, rpm: int | None, tpm: int | None, *,
                 clock: Callable[[], float] | None = None, window: float = WINDOW) -> None:
        self.link = link
        self.provider = provider
        self.rpm, self.tpm = rpm, tpm
        self.clock = clock
        self.window = window
        self.keys = (f"orchestrion:rate:{{{provider}}}:calls", f"orchestrion:rate:{{{provider}}}:tokens")
        self.local = RateLimiter(rpm, tpm)  # while Redis cannot be reached
        self._redis_back_at: float | None = None  # monotonic time to ask Redis again, after it failed

    async def acquire(self, tokens: int, sleep: Callable[[float], Awaitable[None]]) -> float:
        call_id, waited = uuid.uuid4().hex, 0.0
        while not self._on_local():
            try:
                admitted, value = await self.link.run(ACQUIRE, self.keys, self._args(tokens, call_id))
            except self.link.errors() as error:
                self._redis_failed(error)
                break
            if self._redis_back_at is not None:
                self._redis_back_at = None
                logger().info("orchestrion rate limits shared again", orchestrion_provider=self.provider,
                              orchestrion_storage=self.link.shown)
            if admitted:
                return waited
            delay = int(value) / 1000
            await sleep(delay)
            waited += delay
        return waited + await self.local.acquire(tokens, sleep)

    def _args(self, tokens: int, call_id: str) -> list[str | int]:
        now = "" if self.clock is None else repr(math.floor(self.clock() * 1000))
        return [self.rpm or 0, self.tpm or 0, tokens, call_id, math.ceil(self.window * 1000), now]

    def _on_local(self) -> bool:
        return self._redis_back_at is not None and time.monotonic() < self._redis_back_at

    def _redis_failed(self, error: BaseException) -> None:
        if self._redis_back_at is None:
            logger().warning("orchestrion rate limits: Redis cannot be reached, each process limits its own calls",
                             orchestrion_provider=self.provider, orchestrion_storage=self.link.shown,
                             orchestrion_error=self.link.describe(error))
        self._redis_back_at = time.monotonic() + RETRY_REDIS_AFTER


class RateLimitStage:
    """Waits for the alias's provider limits (``rpm``/``tpm``) before each attempt."""

    def __init__(self, limiters: Mapping[str, Limiter], sleep: Sleep) -> None:
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
