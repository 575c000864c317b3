"""The circuit breaker alone, on a fake clock: no test waits for a reset timeout.

closed -> open after ``failures`` -> rejects -> one trial after ``reset_timeout``
-> closed on success, open again on failure; cancellations never count; Redis
storage shares it all between processes.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import anyio
import pytest

from engine.config import BreakerConfig
from engine.errors import ModelError
from engine.resilience.breaker import Breakers, EndpointBreaker
from tests.conftest import FakeClock

DOWN = ModelError("server_error", "503 from the endpoint", model="m")
TIMEOUT = 30.0


def make(clock: FakeClock, *, failures: int = 3, storage: str | None = None) -> Breakers:
    return Breakers(BreakerConfig(failures=failures, reset_timeout=TIMEOUT, storage=storage), clock=clock)


def fail(breaker: EndpointBreaker, times: int = 1) -> None:
    for _ in range(times):
        admission = breaker.admit()
        assert admission != "reject"
        breaker.record(admission, DOWN)


def trip(breaker: EndpointBreaker) -> None:
    fail(breaker, 3)
    assert breaker.health()["state"] == "open"
    breaker.drain_transitions()


def test_it_opens_after_the_set_number_of_consecutive_failures(clock: FakeClock) -> None:
    breaker = make(clock).get("m")
    fail(breaker, 2)
    assert breaker.health() == {"state": "closed", "failures": 2, "opened_at": None}
    fail(breaker)
    assert breaker.health() == {"state": "open", "failures": 3, "opened_at": clock.now.isoformat()}
    assert breaker.drain_transitions() == [("closed", "open")]
    assert breaker.admit() == "reject"


def test_only_endpoint_failures_count_and_any_answer_resets_the_count(clock: FakeClock) -> None:
    breaker = make(clock).get("m")
    fail(breaker, 2)
    breaker.record(breaker.admit(), None)
    fail(breaker, 2)
    breaker.record(breaker.admit(), ModelError("auth", "401: the endpoint is up, the key is wrong", model="m"))
    fail(breaker, 2)
    assert breaker.health()["state"] == "closed" and breaker.admit() == "call"


def test_an_open_breaker_rejects_until_its_reset_timeout_has_passed(clock: FakeClock) -> None:
    breaker = make(clock).get("m")
    trip(breaker)
    clock.advance(TIMEOUT - 0.001)
    assert breaker.admit() == "reject"
    clock.advance(0.001)
    assert breaker.admit() == "trial"


@pytest.mark.anyio
async def test_half_open_lets_exactly_one_trial_through_among_concurrent_callers(clock: FakeClock) -> None:
    breaker = make(clock).get("m")
    trip(breaker)
    clock.advance(TIMEOUT)
    admissions: list[str] = []
    everyone_asked = anyio.Event()

    async def call() -> None:
        admission = breaker.admit()
        admissions.append(admission)
        if admission != "reject":
            await everyone_asked.wait()  # the trial is still running while the others ask
            breaker.record(admission, None)

    async with anyio.create_task_group() as group:
        for _ in range(20):
            group.start_soon(call)
        await anyio.wait_all_tasks_blocked()
        everyone_asked.set()
    assert sorted(admissions) == ["reject"] * 19 + ["trial"]
    assert breaker.drain_transitions() == [("open", "half-open"), ("half-open", "closed")]
    assert breaker.health()["state"] == "closed" and breaker.admit() == "call"


def test_a_failed_trial_opens_it_again_for_another_timeout(clock: FakeClock) -> None:
    breaker = make(clock).get("m")
    trip(breaker)
    clock.advance(TIMEOUT)
    breaker.record(breaker.admit(), DOWN)
    assert breaker.drain_transitions() == [("open", "half-open"), ("half-open", "open")]
    assert breaker.health()["opened_at"] == clock.now.isoformat()  # the timeout starts again
    clock.advance(TIMEOUT - 1)
    assert breaker.admit() == "reject"
    clock.advance(1)
    assert breaker.admit() == "trial"


@pytest.mark.anyio
async def test_a_cancelled_call_is_never_counted(clock: FakeClock) -> None:
    breaker = make(clock, failures=1).get("m")

    async def cancelled_call() -> None:
        admission = breaker.admit()
        try:
            await anyio.sleep_forever()
        except anyio.get_cancelled_exc_class():
            breaker.release(admission)  # what the engine does with a cancelled call
            raise

    with anyio.move_on_after(0):
        await cancelled_call()
    assert breaker.health() == {"state": "closed", "failures": 0, "opened_at": None}


def test_a_cancelled_trial_lets_the_next_caller_try(clock: FakeClock) -> None:
    breaker = make(clock).get("m")
    trip(breaker)
    clock.advance(TIMEOUT)
    trial = breaker.admit()
    assert trial == "trial" and breaker.admit() == "reject"
    breaker.release(trial)
    assert breaker.health()["state"] == "open" and breaker.health()["failures"] == 3  # nothing recorded
    assert breaker.admit() == "trial"


def test_the_real_clock_is_the_default() -> None:
    breaker = Breakers(BreakerConfig(failures=1, reset_timeout=TIMEOUT)).get("m")
    fail(breaker)
    opened_at = datetime.fromisoformat(breaker.health()["opened_at"])
    assert abs(opened_at - datetime.now(UTC)) < timedelta(seconds=5)
    assert breaker.admit() == "reject"


# -- shared through a real redis-server (the redis_url fixture is in conftest.py) --------------------

def test_redis_storage_shares_the_breaker_between_engines(clock: FakeClock, redis_url: str) -> None:
    first, second = make(clock, storage=redis_url), make(clock, storage=redis_url)
    trip(first.get("m"))
    assert second.get("m").admit() == "reject"
    assert second.health()["m"] == {"state": "open", "failures": 3, "opened_at": clock.now.isoformat()}
    clock.advance(TIMEOUT)
    trial = second.get("m").admit()
    assert trial == "trial"
    second.get("m").record(trial, None)
    assert first.get("m").admit() == "call" and first.health()["m"]["state"] == "closed"


def test_redis_keeps_the_open_time_in_whole_seconds(clock: FakeClock, redis_url: str) -> None:
    clock.advance(0.75)
    breaker = make(clock, storage=redis_url).get("m")
    trip(breaker)
    assert breaker.health()["opened_at"] == (clock.now - timedelta(seconds=0.75)).isoformat()
    clock.advance(TIMEOUT - 0.75)  # a shared breaker may half-open up to a second early
    assert breaker.admit() == "trial"
