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

Every reading of the time goes through ``clock`` (the real UTC time unless a
test gives a fake one): ``admit``, and pybreaker's own two readings, when it
opens and when an open breaker is called (``_ClockedBreaker``).

With Redis storage (``breaker.storage: redis://...``) the state is shared by
processes; pybreaker's Redis client blocks, so the engine calls ``admit`` and
``record`` in a worker thread. Redis keeps the open time in whole seconds, so
a shared breaker may half-open up to a second early.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, TypeVar

import pybreaker

from engine.config import BreakerConfig
from engine.errors import TRANSIENT_KINDS, ModelError

Admission = Literal["call", "trial", "reject"]
Clock = Callable[[], datetime]
T = TypeVar("T")


def utc_now() -> datetime:
    return datetime.now(UTC)


def _succeed() -> None:
    return None


def _fail(error: BaseException) -> None:
    raise error


class _ClockedBreaker(pybreaker.CircuitBreaker):
    """pybreaker's breaker, reading the time from ``clock`` instead of ``datetime.now``.

    pybreaker reads the time in ``open`` (stored as ``opened_at``) and when an
    open breaker is called; ``call`` makes that second decision itself before
    delegating, so pybreaker's reading is never reached. (Another process may
    open a shared breaker between the two; pybreaker then decides with the real
    time, which is the same clock outside tests.)
    """

    def __init__(self, clock: Clock, storage: pybreaker.CircuitBreakerStorage, **options: Any) -> None:
        self.clock = clock
        self.storage = storage
        self._deciding = threading.RLock()  # the check and the call it guards, as one step per process
        super().__init__(state_storage=storage, **options)

    def timeout_passed(self) -> bool:
        """Has an open breaker waited its ``reset_timeout``? (True if it has no open time.)"""
        opened_at = self.storage.opened_at
        return opened_at is None or self.clock() >= opened_at + timedelta(seconds=self.reset_timeout)

    def open(self) -> bool:
        self.storage.opened_at = self.clock()
        self.state = self.storage.state = pybreaker.STATE_OPEN
        return True  # the tripping call raises CircuitBreakerError (pybreaker's default)

    def call(self, func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        with self._deciding:
            if self.current_state == pybreaker.STATE_OPEN:
                if not self.timeout_passed():
                    raise pybreaker.CircuitBreakerError("Timeout not elapsed yet, circuit breaker still open")
                self.half_open()
            return super().call(func, *args, **kwargs)


def _counts_as_failure(error: BaseException | None) -> bool:
    return isinstance(error, ModelError) and error.kind in TRANSIENT_KINDS


class EndpointBreaker(pybreaker.CircuitBreakerListener):
    def __init__(self, name: str, config: BreakerConfig, storage: pybreaker.CircuitBreakerStorage,
                 clock: Clock = utc_now) -> None:
        self.name = name
        self.storage = storage
        self.breaker = _ClockedBreaker(clock, storage, fail_max=config.failures, reset_timeout=config.reset_timeout,
                                       name=name, listeners=[self])
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
        if state == pybreaker.STATE_OPEN and not self.breaker.timeout_passed():
            return "reject"
        with self._lock:  # open past its timeout, or half-open: one trial at a time
            if self._trial:
                return "reject"
            self._trial = True
        return "trial"

    def record(self, admission: Admission, error: BaseException | None) -> None:
        """Report how an admitted call went. (May block on Redis.)"""
        if admission == "call" and not _counts_as_failure(error) and self._untouched():
            return  # closed with no failure counted: a success would change nothing
        try:
            if _counts_as_failure(error):
                self.breaker.call(_fail, error)
            else:
                self.breaker.call(_succeed)
        except (pybreaker.CircuitBreakerError, ModelError):
            pass  # the outcome is recorded; the caller handles the error itself
        finally:
            self.release(admission)

    def _untouched(self) -> bool:
        return self.storage.counter == 0 and self.storage.state == pybreaker.STATE_CLOSED

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
    """The engine's breakers, created on first use, one per model alias.

    ``clock`` is read by every breaker created after it is set (tests give a fake one).
    """

    def __init__(self, config: BreakerConfig, clock: Clock = utc_now) -> None:
        self.config = config
        self.clock = clock
        self.blocking = config.storage is not None  # Redis I/O: keep admit/record off the event loop
        self._breakers: dict[str, EndpointBreaker] = {}
        self._redis: Any = None

    def get(self, alias: str) -> EndpointBreaker:
        breaker = self._breakers.get(alias)
        if breaker is None:
            breaker = self._breakers[alias] = EndpointBreaker(alias, self.config, self._storage(alias), self.clock)
        return breaker

    def is_open(self, alias: str) -> bool:
        """Is the alias's breaker open now (never called: no)? Reads its storage: may block on Redis."""
        breaker = self._breakers.get(alias)
        return breaker is not None and breaker.storage.state == pybreaker.STATE_OPEN

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
