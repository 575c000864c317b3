"""The run store's cost on whole runs: the same workflow with no store, and with a SQLite store.

    python -m tests.bench.bench_store_runs [--quick]

Fan-outs of 1,000 zero-latency tasks and of 10,000 tasks at 50 ms, against the
minimal client of ``bench_runtime`` (``ThinClient``); each run checkpoints
every task (the results of one scheduler tick share a transaction) and
records every model call. Also a response-cache hit through a whole run.
Prints medians (min-max) of several runs and the ratio to the run without a
store; asserts nothing about time.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import anyio

from engine import Engine
from engine.store import RunStore, open_store
from tests.bench.bench_runtime import BARE, ThinClient, fan_workflow


async def timed_runs(engine: Engine, workflow: object, repeats: int) -> list[float]:
    await engine.run(workflow)  # warm-up: the plan is compiled, the store's tables are hot
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = await engine.run(workflow)
        samples.append(time.perf_counter() - start)
        if result.status != "succeeded":
            raise RuntimeError(result.error)
    return samples


def report(label: str, samples: list[float], per: int, floor: float | None = None) -> float:
    values = [sample / per * 1e6 for sample in samples]
    median = statistics.median(values)
    ratio = f"  {median / floor:5.2f}x the first row" if floor else ""
    print(f"   {label:<44} median {median:8.1f} us/task (min {min(values):8.1f}, max {max(values):8.1f})"
          f"  n={len(values)}{ratio}")
    return median


async def compare(title: str, width: int, latency: float, repeats: int, folder: Path) -> None:
    print(f"\n== {title}")
    workflow_document = fan_workflow(width, BARE)
    client = ThinClient(latency)
    plain = Engine(models=client)
    floor = report("no store", await timed_runs(plain, plain.load(workflow_document), repeats), width)
    store: RunStore = await open_store(f"sqlite+aiosqlite:///{folder / f'runs-{width}.db'}")
    try:
        stored = Engine(models=client, store=store)
        report("SQLite store (checkpoints and call records)",
               await timed_runs(stored, stored.load(workflow_document), repeats), width, floor)
    finally:
        await store.aclose()


async def cache_hit(repeats: int, folder: Path) -> None:
    print("\n== a run of one task with the SQLite store: answered from the cache, against calling the client")
    document = {"dsl": "orchestrion/v1", "name": "cached", "defaults": {**BARE, "cache": True},
                "stages": [{"type": "linear", "tasks": [{"id": "a", "model": "fast_ai", "prompt": "same"}]}]}
    uncached = {**document, "defaults": BARE}
    client = ThinClient(0.001)  # the fastest model there is: a millisecond
    store = await open_store(f"sqlite+aiosqlite:///{folder / 'cache.db'}")
    try:
        engine = Engine(models=client, store=store)
        floor = report("the client called (1 ms)", await timed_runs(engine, engine.load(uncached), repeats * 20), 1)
        report("a cache hit", await timed_runs(engine, engine.load(document), repeats * 20), 1, floor)
    finally:
        await store.aclose()


async def main(quick: bool) -> None:
    repeats = 3 if quick else 7
    with tempfile.TemporaryDirectory() as folder:
        await compare("fan-out of 1,000 zero-latency tasks", 1_000, 0.0, repeats, Path(folder))
        await compare("fan-out of 10,000 tasks at 50 ms", 10_000, 0.05, 2 if quick else 5, Path(folder))
        await cache_hit(repeats, Path(folder))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true")
    anyio.run(main, parser.parse_args().quick)
