"""What a response-cache hit costs, against calling a FakeModel directly and a call that is not cached.

Run: ``python -m tests.bench.bench_cache``. Not part of the test run: it prints the median and
min-max of per-call latency over several samples, and asserts nothing about time.

1. ``FakeModel.complete`` awaited directly: the floor (it records the request, counts tokens).
2. The same FakeModel through the pipeline, no ``cache``: gate-free pipeline, retry, spend, provider.
3. The pipeline with ``cache`` on, every call a hit (after one miss): the key (SHA-256 over the
   request's JSON), a MemoryStore lookup, the hit's event; no call.
4. As 3 with a 2,000-character prompt, since the key hashes the whole rendered request.
5. As 3 through ``engine.run`` on a one-task workflow, against the same run not cached.
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Awaitable, Callable

import anyio

from engine import Engine
from engine.compiler.plan import CacheSpec
from engine.model.client import Message, ModelRequest
from engine.resilience.call import Call, RunContext
from engine.resilience.pipeline import PipelineParts, build_pipeline
from engine.resilience.provider import Clients
from engine.runtime.results import TaskResult
from engine.testing import FakeModel

CALLS = 2_000  # per sample
SAMPLES = 9
RUNS = 300  # engine runs per sample
REQUEST = ModelRequest("fast_ai", (Message("user", "What is the capital of France?"),), temperature=0.2)
LONG = ModelRequest("fast_ai", (Message("system", "s" * 500), Message("user", "x" * 2_000)), temperature=0.2)


async def per_call(call: Callable[[], Awaitable[object]], count: int) -> list[float]:
    """Microseconds per call: one sample per batch of ``count`` calls, after a warm-up batch."""
    for _ in range(count):
        await call()
    samples = []
    for _ in range(SAMPLES):
        gc.collect()
        start = time.perf_counter()
        for _ in range(count):
            await call()
        samples.append((time.perf_counter() - start) / count * 1e6)
    return samples


def row(label: str, samples: list[float]) -> None:
    print(f"   {label:<58} median {statistics.median(samples):8.2f} us "
          f"(min {min(samples):8.2f}, max {max(samples):8.2f})  n={len(samples)}")


def flow(cache: bool) -> dict[str, object]:
    return {"dsl": "orchestrion/v1", "name": "bench", "defaults": {"model": "fast_ai", "cache": cache},
            "stages": [{"type": "linear", "tasks": [{"id": "a", "prompt": "What is the capital of France?"}]}]}


async def main() -> None:
    fake = FakeModel()
    pipeline = build_pipeline(PipelineParts(Clients({}, default=fake)))
    run = RunContext()

    def plain() -> Awaitable[object]:
        return pipeline.answer(REQUEST, Call("t", run, TaskResult("t")))

    def cached(request: ModelRequest = REQUEST) -> Callable[[], Awaitable[object]]:
        return lambda: pipeline.answer(request, Call("t", run, TaskResult("t"), cache=CacheSpec()))

    print(f"== per call ({CALLS} calls a sample, {SAMPLES} samples, asyncio)")
    row("FakeModel.complete, directly", await per_call(lambda: fake.complete(REQUEST), CALLS))
    row("pipeline, not cached (FakeModel answers)", await per_call(plain, CALLS))
    row("pipeline, cache hit", await per_call(cached(), CALLS))
    row("pipeline, cache hit, 2,500-character request", await per_call(cached(LONG), CALLS))
    calls_before = len(fake.calls)
    await cached()()
    assert len(fake.calls) == calls_before, "a hit must not call the model"

    engine = Engine(models=FakeModel())
    on, off = flow(True), flow(False)
    print(f"== per engine.run of one task ({RUNS} runs a sample)")
    row("engine.run, not cached", await per_call(lambda: engine.run(off), RUNS))
    row("engine.run, cache hit", await per_call(lambda: engine.run(on), RUNS))


if __name__ == "__main__":
    anyio.run(main)
