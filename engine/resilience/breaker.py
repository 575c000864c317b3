"""Circuit breakers, one per model endpoint, on pybreaker.

pybreaker has no asyncio support (``@breaker`` on a coroutine never trips), so
calls are not run *through* it: ``admit`` decides before a call, from the
breaker's state storage, and ``record`` reports the outcome afterwards through
``breaker.call`` with a function that succeeds or raises. So pybreaker owns
the state machine (closed -> open after ``failures`` -> half-open after
``reset_timeout`` -> closed or open), and:

- an open breaker rejects at once: the caller goes to the next model;
- half-open lets exactly one trial call through, however many tasks ask;
- a cancelled call is never recorded (pybreaker would count it);
- only failures of the endpoint count (rate limits, server errors, timeouts,
  connection errors); any other answer means it is up, and counts as a success.

With Redis storage (``breaker.storage: redis://...``) the state is shared by
processes; pybreaker's Redis client blocks, so the engine calls ``admit`` and
``record`` in a worker thread.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import pybreaker

from engine.config import BreakerConfig
from engine.errors import TRANSIENT_KINDS, ModelError

Admission = Literal["call", "trial", "reject"]


def _succeed() -> None:
    return None


def _fail(error: BaseException) -> None:
    raise error


class EndpointBreaker(pybreaker.CircuitBreakerListener):
    def __init__(self, name: str, config: BreakerConfig, storage: pybreaker.CircuitBreakerStorage) -> None:
        self.name = name
        self.storage = storage
        self.breaker = pybreaker.CircuitBreaker(fail_max=config.failures, reset_timeout=config.reset_timeout,
                                                state_storage=storage, name=name, listeners=[self])
        self.transitions: list[tuple[str, str]] = []
        self._trial = False
        self._lock = threading.Lock()

    def state_change(self, breaker: Any, old: Any, new: Any) -> None:
        with self._lock:
            self.transitions.append((old.name if old is not None else "closed", new.name))

    def admit(self) -> Admission:
        """May a call go to this endpoint now? (May block on Redis: call it off the event loop.)"""
        state = self.storage.state
        if state == pybreaker.STATE_CLOSED:
            return "call"
        if state == pybreaker.STATE_OPEN:
            opened_at = self.storage.opened_at
            if opened_at is not None and datetime.now(UTC) < opened_at + timedelta(seconds=self.breaker.reset_timeout):
                return "reject"
        with self._lock:  # open past its timeout, or half-open: one trial at a time
            if self._trial:
                return "reject"
            self._trial = True
        return "trial"

    def record(self, admission: Admission, error: BaseException | None) -> None:
        """Report how an admitted call went. (May block on Redis.)"""
        try:
            if isinstance(error, ModelError) and error.kind in TRANSIENT_KINDS:
                self.breaker.call(_fail, error)
            else:
                self.breaker.call(_succeed)
        except (pybreaker.CircuitBreakerError, ModelError):
            pass  # the outcome is recorded; the caller handles the error itself
        finally:
            self.release(admission)

    def release(self, admission: Admission) -> None:
        """End a trial without recording it (the call was cancelled)."""
        if admission == "trial":
            with self._lock:
                self._trial = False

    def drain_transitions(self) -> list[tuple[str, str]]:
        with self._lock:
            transitions, self.transitions = self.transitions, []
        return transitions

    def health(self) -> dict[str, Any]:
        opened_at = self.storage.opened_at
        return {"state": self.storage.state, "failures": self.storage.counter,
                "opened_at": opened_at.isoformat() if opened_at else None}

    def rejection(self) -> ModelError:
        return ModelError("breaker_open", f"the circuit breaker of {self.name} is open", model=self.name)


class Breakers:
    """The engine's breakers, created on first use, one per model alias."""

    def __init__(self, config: BreakerConfig) -> None:
        self.config = config
        self.blocking = config.storage is not None  # Redis I/O: keep admit/record off the event loop
        self._breakers: dict[str, EndpointBreaker] = {}
        self._redis: Any = None

    def get(self, alias: str) -> EndpointBreaker:
        breaker = self._breakers.get(alias)
        if breaker is None:
            breaker = self._breakers[alias] = EndpointBreaker(alias, self.config, self._storage(alias))
        return breaker

    def health(self) -> dict[str, dict[str, Any]]:
        return {alias: breaker.health() for alias, breaker in sorted(self._breakers.items())}

    def _storage(self, alias: str) -> pybreaker.CircuitBreakerStorage:
        if self.config.storage is None:
            return pybreaker.CircuitMemoryStorage(pybreaker.STATE_CLOSED)
        if self._redis is None:
            try:
                import redis
            except ImportError:
                from engine.errors import ConfigError

                raise ConfigError("breaker.storage needs the redis client: pip install 'orchestrion[redis]'") from None
            # pybreaker's Redis storage breaks with decode_responses=True (PITFALLS).
            self._redis = redis.Redis.from_url(self.config.storage, decode_responses=False)
        return pybreaker.CircuitRedisStorage(pybreaker.STATE_CLOSED, self._redis, namespace=f"orchestrion:{alias}")
