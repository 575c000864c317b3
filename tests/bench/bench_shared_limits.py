"""What the shared rate limits and cost cap cost per call, against their in-process twins.

Run: ``python -m tests.bench.bench_shared_limits`` (needs ``redis-server`` on the PATH; a server of
its own is started on a free port of 127.0.0.1, without persistence). Not part of the test run: it
prints the median and min-max of microseconds per call over several samples, asserts nothing.

1. ``RateLimiter.acquire`` (the window in this process), limits never reached.
2. ``SharedRateLimiter.acquire``: one ``EVALSHA`` of the window script on Redis, limits never reached.
3. ``MemoryCap`` reserve + settle.
4. ``RedisCap`` reserve + settle: two scripts, two round trips.
5. As 2, with 50 calls at once (the server's time per call under concurrency).
"""

from __future__ import annotations

import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable

import anyio

from engine.resilience.cap import MemoryCap, RedisCap
from engine.resilience.ratelimit import RateLimiter, SharedRateLimiter
from engine.resilience.redis_link import RedisLink

CALLS = 2_000  # per sample
SAMPLES = 7


async def _no_sleep(seconds: float) -> None:
    raise AssertionError("the limits are never reached here")


async def per_call(call: Callable[[], Awaitable[object]], count: int = CALLS, at_once: int = 1) -> list[float]:
    """Microseconds per call, one sample per ``count`` calls (``at_once`` in flight), after a warm-up."""

    async def batch() -> float:
        started = time.perf_counter()

        async def worker() -> None:
            for _ in range(count // at_once):
                await call()

        async with anyio.create_task_group() as group:
            for _ in range(at_once):
                group.start_soon(worker)
        return (time.perf_counter() - started) / count * 1e6

    await batch()
    return [await batch() for _ in range(SAMPLES)]


def show(name: str, samples: list[float]) -> None:
    print(f"{name:<48} {statistics.median(samples):8.1f} us  ({min(samples):.1f}-{max(samples):.1f})")


async def main(url: str) -> None:
    huge = 10**12
    local = RateLimiter(huge, huge)
    link = RedisLink(url, "rate_limits.storage")
    shared = SharedRateLimiter(link, "bench", huge, huge)
    memory_cap, redis_cap = MemoryCap(1e12), RedisCap(link, "bench", 1e12)

    async def capped(cap: MemoryCap | RedisCap) -> None:
        await cap.settle(await cap.reserve(0.001, "t"), 0.0005)

    show("RateLimiter.acquire (in process)", await per_call(lambda: local.acquire(100, _no_sleep)))
    show("SharedRateLimiter.acquire (Redis)", await per_call(lambda: shared.acquire(100, _no_sleep)))
    show("MemoryCap reserve + settle", await per_call(lambda: capped(memory_cap)))
    show("RedisCap reserve + settle (Redis)", await per_call(lambda: capped(redis_cap)))
    show("SharedRateLimiter.acquire, 50 at once", await per_call(lambda: shared.acquire(100, _no_sleep),
                                                                 at_once=50))
    await link.aclose()


def run() -> None:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not installed")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with tempfile.TemporaryDirectory() as folder:
        server = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                   "--appendonly", "no", "--dir", folder], stdout=subprocess.DEVNULL)
        try:
            for _ in range(200):
                with socket.socket() as client:
                    if client.connect_ex(("127.0.0.1", port)) == 0:
                        break
                time.sleep(0.05)
            anyio.run(main, f"redis://127.0.0.1:{port}/0")
        finally:
            server.terminate()
            server.wait(timeout=10)


if __name__ == "__main__":
    run()
