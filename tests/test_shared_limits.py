"""Rate limits and a cost cap shared by workers through a real redis-server (``redis_url``, conftest.py).

Each "worker" is its own Engine (or limiter, or cap) with its own Redis connections, as two processes
or two Ray actors would be. Waits go through a fake sleep that moves a fake clock, which the Lua
scripts read in place of Redis's ``TIME``: nothing here waits 60 seconds, and every assertion is on
counts and on the fake clock, never on real time.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import pytest

from engine import BudgetExceededError, Engine
from engine.config import BudgetConfig, EngineConfig, RateLimitConfig
from engine.errors import ConfigError
from engine.resilience.cap import RESERVE, SETTLE, MemoryCap, RedisCap, Reservation
from engine.resilience.ratelimit import ACQUIRE, RateLimitStage, SharedRateLimiter
from engine.resilience.redis_link import RedisLink, shown_url

pytestmark = pytest.mark.anyio


class Clock:
    """Seconds that move only when a fake sleep says so; a sleep wakes at its start plus its delay."""

    def __init__(self) -> None:
        self.now = 1_000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        wake = self.now + seconds  # from when it fell asleep; others may move the clock meanwhile
        await anyio.lowlevel.checkpoint()
        self.now = max(self.now, wake)


@pytest.fixture
def dead_redis() -> Iterator[str]:
    """A Redis URL where nothing listens (a port just freed), with a password that must never be shown."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    yield f"redis://:hunter2@127.0.0.1:{port}/0"


_OPEN: list[RedisLink] = []  # the links a test made, closed after it on its own event loop


@pytest.fixture(autouse=True)
async def _close_links(anyio_backend: str) -> AsyncIterator[None]:
    yield
    while _OPEN:
        await _OPEN.pop().aclose()


def link(url: str, what: str = "rate_limits.storage") -> RedisLink:
    _OPEN.append(RedisLink(url, what))
    return _OPEN[-1]


def inspect(url: str) -> Any:
    import redis

    return redis.Redis.from_url(url, decode_responses=True)


def limiter(url: str, clock: Clock, rpm: int | None = None, tpm: int | None = None,
            provider: str = "dry") -> SharedRateLimiter:
    return SharedRateLimiter(link(url), provider, rpm, tpm, clock=clock)


# -- the rate-limit script ------------------------------------------------------------------------

async def test_rpm_lets_the_limit_through_then_waits_for_the_window(redis_url: str) -> None:
    clock = Clock()
    shared = limiter(redis_url, clock, rpm=2)
    assert [await shared.acquire(10, clock.sleep) for _ in range(2)] == [0.0, 0.0]
    assert await shared.acquire(10, clock.sleep) == pytest.approx(60.0)  # the first call leaves the window
    assert clock.now == pytest.approx(1_060.0)


async def test_tpm_waits_until_enough_tokens_left_the_window(redis_url: str) -> None:
    clock = Clock()
    shared = limiter(redis_url, clock, tpm=1_000)
    await shared.acquire(600, clock.sleep)
    clock.now += 10
    await shared.acquire(300, clock.sleep)
    assert await shared.acquire(200, clock.sleep) == pytest.approx(50.0)  # 600 + 300 + 200 > 1000: the 600 go
    # A call larger than the whole limit waits for an empty window, then goes alone.
    assert await shared.acquire(5_000, clock.sleep) == pytest.approx(60.0)
    assert await shared.acquire(1, clock.sleep) == pytest.approx(60.0)


async def test_the_window_forgets_old_calls_and_their_tokens(redis_url: str) -> None:
    clock = Clock()
    shared = limiter(redis_url, clock, rpm=100, tpm=10_000)
    for _ in range(3):
        await shared.acquire(100, clock.sleep)
    calls, tokens = shared.keys
    with inspect(redis_url) as client:
        assert (client.zcard(calls), client.get(tokens)) == (3, "300")
        clock.now += 61
        await shared.acquire(7, clock.sleep)
        assert (client.zcard(calls), client.get(tokens)) == (1, "7")
        assert 0 < client.pttl(calls) <= 61_000  # gone a second after the window once no call comes


async def test_a_call_sent_twice_is_counted_once(redis_url: str) -> None:
    clock = Clock()
    shared = limiter(redis_url, clock, rpm=5, tpm=1_000)
    args = shared._args(100, "same-id")
    first = await shared.link.run(ACQUIRE, shared.keys, args)
    again = await shared.link.run(ACQUIRE, shared.keys, args)  # a retried connection: the script ran twice
    assert first == again == [1, 1_000_000]
    with inspect(redis_url) as client:
        assert (client.zcard(shared.keys[0]), client.get(shared.keys[1])) == (1, "100")


async def test_two_workers_share_one_window_and_never_pass_it(redis_url: str) -> None:
    """Two limiters with their own connections take turns: 8 calls at 3 a minute need three windows,
    and no 60 seconds ever hold more than 3 (each worker alone would let 6 through the first minute)."""
    clock = Clock()
    workers = [limiter(redis_url, clock, rpm=3), limiter(redis_url, clock, rpm=3)]
    admitted = []
    for turn in range(8):
        await workers[turn % 2].acquire(1, clock.sleep)
        admitted.append(clock.now - 1_000)
    assert admitted == [0, 0, 0, 60, 60, 60, 120, 120]
    assert all(sum(start <= moment < start + 60 for moment in admitted) <= 3 for start in admitted)


# -- two engines, one Redis -----------------------------------------------------------------------

def _flow(tasks: int, **task: Any) -> dict[str, Any]:
    return {"dsl": "orchestrion/v1", "name": "shared", "defaults": {"model": "fast_ai"},
            "stages": [{"type": "linear", "tasks": [{"id": f"t{i}", "prompt": f"say {i}", **task}
                                                     for i in range(tasks)]}]}


def _limited_engine(clock: Clock, storage: str | None, rpm: int = 3) -> Engine:
    config = EngineConfig.model_validate({
        "providers": {"dry": {"kind": "fake", "rpm": rpm}}, "default_provider": "dry",
        "rate_limits": {"storage": storage}})
    engine = Engine(config, sleep=clock.sleep, store=None)
    for stage in engine._pipeline.stages:
        if isinstance(stage, RateLimitStage):
            for shared in stage.limiters.values():
                shared.clock = clock  # type: ignore[union-attr]  # Redis's TIME, or the local window's clock
    return engine


async def _run_both(engines: list[Engine], tasks: int) -> None:
    async with anyio.create_task_group() as group:
        for engine in engines:
            group.start_soon(_succeeds, engine, tasks)


async def _succeeds(engine: Engine, tasks: int) -> None:
    result = await engine.run(_flow(tasks))
    assert result.status == "succeeded"
    await engine.aclose()


async def test_two_engines_sharing_redis_stay_under_the_providers_rpm_together(redis_url: str) -> None:
    clock = Clock()
    await _run_both([_limited_engine(clock, redis_url), _limited_engine(clock, redis_url)], tasks=4)
    assert clock.now - 1_000 >= 120  # 8 calls at 3 a minute: the last two start in the third minute


async def test_without_storage_each_engine_keeps_its_own_window(redis_url: str) -> None:
    clock = Clock()
    engines = [_limited_engine(clock, None), _limited_engine(clock, None)]
    for engine in engines:
        for stage in engine._pipeline.stages:
            if isinstance(stage, RateLimitStage):
                for local in stage.limiters.values():
                    local.clock = clock  # type: ignore[union-attr]
    await _run_both(engines, tasks=4)
    assert clock.now - 1_000 == pytest.approx(60)  # each sent its 3, then 1 a minute later: 6 in the first minute


async def test_unreachable_redis_limits_each_process_alone_and_says_so(dead_redis: str,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    engine = _limited_engine(clock, dead_redis)
    with caplog.at_level("INFO", logger="orchestrion"):
        await _succeeds(engine, tasks=4)
    # The process's own window (on the real clock: less the real time the run took): 3, then the 4th a minute later.
    assert clock.now - 1_000 == pytest.approx(60, abs=5)
    warnings = [record.getMessage() for record in caplog.records if record.levelname == "WARNING"]
    assert len(warnings) == 1 and "Redis cannot be reached" in warnings[0]  # once per outage, not per call
    assert "hunter2" not in caplog.text and ":***@127.0.0.1" in warnings[0]


async def test_redis_is_asked_again_after_an_outage(redis_url: str, dead_redis: str,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from engine.resilience import ratelimit

    clock = Clock()
    shared = limiter(dead_redis, clock, rpm=2)
    await shared.acquire(1, clock.sleep)  # falls back to the local window
    assert shared._redis_back_at is not None
    shared.link = link(redis_url)  # the server is back
    monkeypatch.setattr(ratelimit, "RETRY_REDIS_AFTER", 0.0)
    shared._redis_back_at = 0.0
    await shared.acquire(1, clock.sleep)
    assert shared._redis_back_at is None


# -- the cost cap's scripts -----------------------------------------------------------------------

def cap(url: str, limit: float, key: str = "batch", clock: Clock | None = None, ttl: float = 900.0) -> RedisCap:
    return RedisCap(link(url, "budget.storage"), key, limit, reservation_ttl=ttl, clock=clock)


async def test_the_cap_reserves_refuses_and_settles(redis_url: str) -> None:
    shared = cap(redis_url, 1.0)
    first = await shared.reserve(0.6, "a")
    with pytest.raises(BudgetExceededError, match=r"\$0\.600000 reserved of the cost cap of \$1\.000000"):
        await shared.reserve(0.5, "b")
    assert await shared.reached() is not None  # a call was refused: a batch starts no more runs
    await shared.settle(first, 0.25)  # settled on what it really cost: the rest is free again
    assert await shared.status() == (0.25, 0.0, 1.0)
    await shared.reserve(0.75, "c")  # 0.25 + 0.75 is exactly the cap
    with pytest.raises(BudgetExceededError):
        await shared.reserve(0.000001, "d")


async def test_a_raised_cap_on_the_same_key_lets_calls_and_batches_go_on(redis_url: str) -> None:
    low = cap(redis_url, 1.0)
    await low.settle(await low.reserve(0.9, "a"), 0.9)
    with pytest.raises(BudgetExceededError):
        await low.reserve(0.2, "b")
    higher = cap(redis_url, 2.0)
    assert await higher.reached() is None  # refused under $1, not under $2
    await higher.reserve(0.2, "b")
    assert "$0.900000 spent" in (await low.reached() or "")


async def test_a_reservation_never_settled_lapses(redis_url: str) -> None:
    clock = Clock()
    shared = cap(redis_url, 1.0, clock=clock, ttl=60)
    await shared.reserve(0.9, "from a worker that died")
    with pytest.raises(BudgetExceededError):
        await shared.reserve(0.5, "b")
    clock.now += 61
    await shared.reserve(0.5, "b")  # the dead worker's hold is gone; its spend was never made
    assert (await shared.status())[:2] == (0.0, 0.5)


async def test_the_scripts_count_a_reservation_and_a_settlement_sent_twice_once(redis_url: str) -> None:
    shared = cap(redis_url, 1.0)
    reserve_args = ["1.0", "0.4", "id-1", shared.ttl_ms, ""]
    assert (await shared.link.run(RESERVE, shared.keys[:3], reserve_args))[0] == 1
    assert (await shared.link.run(RESERVE, shared.keys[:3], reserve_args))[0] == 1
    assert (await shared.status())[1] == pytest.approx(0.4)
    settle_args = ["id-1", "0.3", shared.ttl_ms, ""]
    await shared.link.run(SETTLE, shared.keys, settle_args)
    await shared.link.run(SETTLE, shared.keys, settle_args)
    assert (await shared.status())[:2] == (pytest.approx(0.3), 0.0)


async def test_keys_are_separate_caps(redis_url: str) -> None:
    await cap(redis_url, 1.0, key="a").reserve(1.0, "x")
    await cap(redis_url, 1.0, key="b").reserve(1.0, "x")


async def test_many_settlements_leave_no_reserved_dust(redis_url: str) -> None:
    shared = cap(redis_url, 100.0)
    held = [await shared.reserve(0.1, str(n)) for n in range(30)]
    for reservation in held:
        await shared.settle(reservation, 0.07)
    spent, reserved, _ = await shared.status()
    assert reserved == 0.0 and spent == pytest.approx(2.1)


async def test_the_memory_cap_is_the_same_interface() -> None:
    memory = MemoryCap(1.0)
    held = await memory.reserve(0.6, "a")
    with pytest.raises(BudgetExceededError, match=r"budget\.max_cost_usd"):
        await memory.reserve(0.5, "b")
    await memory.settle(held, 0.5)
    assert await memory.reached() is not None
    assert held == Reservation("", 0.6)


# -- a cost cap shared by two engines ---------------------------------------------------------------

PRICE_PER_MILLION = 100.0  # dollars per million input tokens: a call is estimated at about $0.001


def _priced_engine(budget: dict[str, Any], latency: float = 0.01) -> Engine:
    config = EngineConfig.model_validate({
        "providers": {"dry": {"kind": "fake", "latency": latency}},
        "models": {"fast_ai": {"provider": "dry", "input_price": PRICE_PER_MILLION, "output_price": 0.0}},
        "budget": budget})
    return Engine(config, store=None)


async def _spend(engine: Engine, tasks: int) -> list[Any]:
    result = await engine.run(_flow(tasks, critical=False))
    await engine.aclose()
    return list(result.tasks.values())


async def test_two_engines_never_pass_a_shared_cap_together(redis_url: str) -> None:
    limit = 0.02
    budget = {"max_cost_usd": limit, "storage": redis_url, "key": "two-workers"}
    engines = [_priced_engine(budget), _priced_engine(budget)]
    outcomes: list[list[Any]] = [[], []]

    async def work(index: int) -> None:
        outcomes[index] = await _spend(engines[index], tasks=40)

    async with anyio.create_task_group() as group:
        for index in range(2):
            group.start_soon(work, index)
    tasks = outcomes[0] + outcomes[1]
    succeeded = [task for task in tasks if task.status == "succeeded"]
    refused = [task for task in tasks if task.status != "succeeded"]
    spent_by_runs = sum(task.cost_usd for task in tasks)
    spent, reserved, _ = await cap(redis_url, limit, key="two-workers").status()
    assert succeeded and refused  # the cap let some through and stopped the rest
    assert {task.error_kind for task in refused} == {"budget"}
    assert spent == pytest.approx(spent_by_runs) and spent <= limit + 1e-9 and reserved == 0.0


async def test_a_cap_in_memory_holds_across_the_runs_of_one_engine() -> None:
    engine = _priced_engine({"max_cost_usd": 0.005})
    first = await _spend(engine, tasks=1)
    second = await _spend(engine, tasks=40)  # 40 calls cost more than the whole cap
    assert [task.status for task in first] == ["succeeded"]
    assert {task.error_kind for task in second if task.status != "succeeded"} == {"budget"}
    total = sum(task.cost_usd for task in first + second)
    assert 0 < total <= 0.005 and engine.cost_cap is not None


async def test_unreachable_redis_refuses_calls_under_a_shared_cap(dead_redis: str) -> None:
    engine = _priced_engine({"max_cost_usd": 1.0, "storage": dead_redis, "key": "k"})
    [task] = await _spend(engine, tasks=1)
    assert task.error_kind == "budget" and "cannot be checked" in (task.error or "")
    assert "hunter2" not in (task.error or "") and task.attempts == 0  # refused before any call


async def test_a_batch_stops_starting_runs_once_the_cap_is_reached() -> None:
    engine = _priced_engine({"max_cost_usd": 0.02})
    items = []
    with pytest.raises(BudgetExceededError, match="the batch stopped starting runs"):
        async with engine.batch(_flow(2, critical=False), ({} for _ in range(200)), concurrency=4) as results:
            async for item in results:
                items.append(item)
    assert 0 < len(items) < 200  # what ran is delivered; the rest never started
    assert sum(item.result.totals.cost_usd for item in items if item.result is not None) <= 0.02


# -- configuration ------------------------------------------------------------------------------------

def test_budget_storage_needs_a_key_and_a_cap() -> None:
    with pytest.raises(ValueError, match="needs a `key`"):
        BudgetConfig(max_cost_usd=1.0, storage="redis://127.0.0.1:6379/0")
    with pytest.raises(ValueError, match=r"give budget\.max_cost_usd"):
        BudgetConfig(storage="redis://127.0.0.1:6379/0", key="k")
    with pytest.raises(ValueError, match=r"give budget\.storage too"):
        BudgetConfig(max_cost_usd=1.0, key="k")
    with pytest.raises(ValueError, match="is a Redis URL"):
        RateLimitConfig(storage="postgresql://db")


def test_a_cap_kept_in_one_process_does_not_cross_to_workers() -> None:
    from engine.recipe import EngineRecipe

    with pytest.raises(ConfigError, match="each worker would spend up to it"):
        EngineRecipe.of(_priced_engine({"max_cost_usd": 1.0}))
    shared = _priced_engine({"max_cost_usd": 1.0, "storage": "redis://127.0.0.1:1/0", "key": "k"})
    twin = EngineRecipe.from_dict(EngineRecipe.of(shared).to_dict()).build()
    assert isinstance(twin.cost_cap, RedisCap) and twin.cost_cap.key == "k" and twin.cost_cap.limit == 1.0


def test_a_redis_url_is_shown_without_its_password() -> None:
    assert shown_url("redis://:hunter2@cache:6379/0") == "redis://:***@cache:6379/0"
    assert shown_url("rediss://user:hunter2@cache/1") == "rediss://user:***@cache/1"
    assert shown_url("redis://cache:6379/0") == "redis://cache:6379/0"
