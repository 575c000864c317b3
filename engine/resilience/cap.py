"""A cost cap across runs (``budget: {max_cost_usd: ...}``): every run of an engine together, and with
``storage: redis://...`` every process using that Redis (workers, Ray actors) together.

The same steps as a run's Budget (``budget.py``): before a call its most expensive outcome is
reserved, and refused (BudgetExceededError) if what is spent, what is reserved and it would pass
the cap; after the call the reservation is settled on the real cost. Reservations make calls in
flight see each other, here across processes, so concurrent workers cannot together pass the cap.

``MemoryCap`` holds it in this process. ``RedisCap`` holds it in Redis, each step one Lua script
(``RESERVE``, ``SETTLE``, ``STATUS``) on Redis's own clock; its keys, per ``budget.key``::

    orchestrion:cap:{KEY}:totals        hash: spent, reserved (dollars), refused_at (the cap under
                                        which a call was last refused)
    orchestrion:cap:{KEY}:reservations  hash: reservation id -> dollars reserved
    orchestrion:cap:{KEY}:leases        sorted set: reservation id -> when it lapses (ms): a process
                                        that died never settles; its reservation is dropped then
    orchestrion:cap:{KEY}:settled       sorted set: settled ids (ms), a settlement sent twice counts once

They are kept until deleted: a new ``key`` starts a new count. When Redis cannot be reached the cap
fails closed: the call is refused (BudgetExceededError saying why), since spend that cannot be
counted could pass it. A settlement that cannot be sent is logged; its reservation lapses after
``reservation_ttl`` and its spend is not counted (the calls in flight during an outage, at most).

``reached()`` tells a batch to stop starting runs: a call was refused under this cap (or Redis
cannot be reached), or everything is spent.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import anyio

from engine.errors import BudgetExceededError
from engine.resilience.budget import Budget
from engine.resilience.redis_link import RedisLink, Script, logger

SETTLE_TIMEOUT = 5.0  # seconds a settlement may take while its run is being cancelled


@dataclass(frozen=True, slots=True)
class Reservation:
    id: str
    amount: float


class CostCap(Protocol):
    limit: float

    async def reserve(self, amount: float, task_id: str) -> Reservation:
        """Hold ``amount`` dollars for a call, or raise BudgetExceededError."""
        ...

    async def settle(self, reservation: Reservation, actual: float) -> None:
        """The call is over: release its reservation, count what it cost. Never raises."""
        ...

    async def reached(self) -> str | None:
        """Why no new run should start (the cap is reached, or cannot be checked), else None."""
        ...

    async def aclose(self) -> None: ...


def _refusal(amount: float, spent: float, reserved: float, limit: float, *, where: str, task_id: str | None
             ) -> BudgetExceededError:
    return BudgetExceededError(
        f"the call is estimated at ${amount:.6f}, and ${spent:.6f} is spent and ${reserved:.6f} reserved of "
        f"the cost cap of ${limit:.6f} ({where})", task_id=task_id)


class MemoryCap:
    """The cap for this process's engine alone."""

    def __init__(self, limit: float) -> None:
        self.limit = limit
        self.budget = Budget(limit)
        self.refused = False

    async def reserve(self, amount: float, task_id: str) -> Reservation:
        budget = self.budget
        if budget.spent + budget.reserved + amount > self.limit + 1e-12:
            self.refused = True
            raise _refusal(amount, budget.spent, budget.reserved, self.limit, where="budget.max_cost_usd",
                           task_id=task_id)
        budget.reserved += amount
        return Reservation("", amount)

    async def settle(self, reservation: Reservation, actual: float) -> None:
        self.budget.settle(reservation.amount, actual)

    async def reached(self) -> str | None:
        if self.refused or self.budget.spent >= self.limit:
            return (f"the cost cap of ${self.limit:.6f} (budget.max_cost_usd) is reached: "
                    f"${self.budget.spent:.6f} spent")
        return None

    async def aclose(self) -> None:
        return None


_NOW = """
local now
if ARGV[#ARGV] ~= '' then
  now = tonumber(ARGV[#ARGV])
else
  local time = redis.call('TIME')
  now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
end
"""

# KEYS: totals, reservations, leases. ARGV: cap, amount, id, ttl ms, now ms ("": Redis's TIME).
# Lapsed leases are dropped first. Returns {1 or 0 (refused), spent, reserved} (as text: Redis
# would cut Lua numbers to integers). A reservation already held under this id is not held again.
RESERVE = Script(_NOW + """
local totals, reservations, leases = KEYS[1], KEYS[2], KEYS[3]
local lapsed = redis.call('ZRANGEBYSCORE', leases, '-inf', now)
for _, id in ipairs(lapsed) do
  local amount = redis.call('HGET', reservations, id)
  if amount then
    redis.call('HDEL', reservations, id)
    redis.call('HINCRBYFLOAT', totals, 'reserved', -tonumber(amount))
  end
end
if #lapsed > 0 then redis.call('ZREMRANGEBYSCORE', leases, '-inf', now) end
if redis.call('HLEN', reservations) == 0 then redis.call('HSET', totals, 'reserved', '0') end
local spent = tonumber(redis.call('HGET', totals, 'spent') or '0')
local reserved = tonumber(redis.call('HGET', totals, 'reserved') or '0')
if redis.call('HEXISTS', reservations, ARGV[3]) == 1 then
  return {1, tostring(spent), tostring(reserved)}
end
if spent + reserved + tonumber(ARGV[2]) > tonumber(ARGV[1]) + 1e-12 then
  redis.call('HSET', totals, 'refused_at', ARGV[1])
  return {0, tostring(spent), tostring(reserved)}
end
redis.call('HSET', reservations, ARGV[3], ARGV[2])
redis.call('ZADD', leases, now + tonumber(ARGV[4]), ARGV[3])
redis.call('HINCRBYFLOAT', totals, 'reserved', ARGV[2])
return {1, tostring(spent), tostring(reserved)}
""")

# KEYS: totals, reservations, leases, settled. ARGV: id, dollars spent, ttl ms, now ms.
# The reservation is released (if it has not lapsed) and the spend counted, once per id.
SETTLE = Script(_NOW + """
local totals, reservations, leases, settled = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
redis.call('ZREMRANGEBYSCORE', settled, '-inf', now - tonumber(ARGV[3]))
if redis.call('ZSCORE', settled, ARGV[1]) then return 0 end
redis.call('ZADD', settled, now, ARGV[1])
local amount = redis.call('HGET', reservations, ARGV[1])
if amount then
  redis.call('HDEL', reservations, ARGV[1])
  redis.call('ZREM', leases, ARGV[1])
  redis.call('HINCRBYFLOAT', totals, 'reserved', -tonumber(amount))
end
if redis.call('HLEN', reservations) == 0 then redis.call('HSET', totals, 'reserved', '0') end
redis.call('HINCRBYFLOAT', totals, 'spent', ARGV[2])
return 1
""")

# KEYS: totals. Returns {spent, reserved, refused_at} (false for a field not set).
STATUS = Script("""
return redis.call('HMGET', KEYS[1], 'spent', 'reserved', 'refused_at')
""")


class RedisCap:
    """The cap shared through Redis under ``key`` (see the module's docstring).

    ``clock`` (seconds) replaces Redis's ``TIME``, for tests of lapsed reservations."""

    def __init__(self, link: RedisLink, key: str, limit: float, *, reservation_ttl: float = 900.0,
                 clock: Callable[[], float] | None = None) -> None:
        self.link = link
        self.key = key
        self.limit = limit
        self.ttl_ms = math.ceil(reservation_ttl * 1000)
        self.clock = clock
        prefix = f"orchestrion:cap:{{{key}}}"
        self.keys = (f"{prefix}:totals", f"{prefix}:reservations", f"{prefix}:leases", f"{prefix}:settled")
        self.where = f"budget.key {key!r} at {link.shown}"

    async def reserve(self, amount: float, task_id: str) -> Reservation:
        reservation = Reservation(uuid.uuid4().hex, amount)
        try:
            admitted, spent, reserved = await self.link.run(
                RESERVE, self.keys[:3], [repr(self.limit), repr(amount), reservation.id, self.ttl_ms, self._now()])
        except self.link.errors() as error:
            raise BudgetExceededError(
                f"the cost cap ({self.where}) cannot be checked, so no call is made: {self.link.describe(error)}",
                task_id=task_id) from None
        if not int(admitted):
            raise _refusal(amount, float(spent), float(reserved), self.limit, where=self.where, task_id=task_id)
        return reservation

    async def settle(self, reservation: Reservation, actual: float) -> None:
        with anyio.CancelScope(shield=True), anyio.move_on_after(SETTLE_TIMEOUT):
            try:
                await self.link.run(SETTLE, self.keys, [reservation.id, repr(actual), self.ttl_ms, self._now()])
            except self.link.errors() as error:
                logger().warning("orchestrion cost cap: a call's cost could not be counted in Redis",
                                 orchestrion_cost_usd=actual, orchestrion_storage=self.link.shown,
                                 orchestrion_error=self.link.describe(error))

    async def status(self) -> tuple[float, float, float | None]:
        """(spent, reserved, the cap under which a call was last refused if any), as Redis holds them."""
        spent, reserved, refused_at = await self.link.run(STATUS, self.keys[:1], [])
        return float(spent or 0), float(reserved or 0), float(refused_at) if refused_at else None

    async def reached(self) -> str | None:
        try:
            spent, _, refused_at = await self.status()
        except self.link.errors() as error:
            return f"the cost cap ({self.where}) cannot be checked: {self.link.describe(error)}"
        if spent >= self.limit or (refused_at is not None and refused_at >= self.limit):
            return f"the cost cap of ${self.limit:.6f} ({self.where}) is reached: ${spent:.6f} spent"
        return None

    async def aclose(self) -> None:
        await self.link.aclose()

    def _now(self) -> str:
        if self.clock is None:
            return ""
        return repr(math.floor(self.clock() * 1000))
