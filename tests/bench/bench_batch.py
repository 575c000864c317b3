"""Batch throughput and memory: ``engine.batch`` on the local backend against a bare anyio loop.

Run: ``python -m tests.bench.bench_batch`` (``--quick``: fewer samples). Not part of the test run:
the machines are shared and noisy, so it prints the median and min-max of several samples and
asserts nothing about time.

1. Runs per second, 10,000 inputs of a one-task workflow whose model takes 50 ms (``ThinClient``:
   ``await anyio.sleep(0.05)``, then a ModelResponse made once), 1,000 runs at a time:
   - **floor**: a bare anyio loop calling ``engine.run`` with the same bound (a semaphore taken
     before each run starts, a task group): what the seam costs is the difference;
   - **engine.batch**: the local backend, items read as they come;
   - **engine.batch, fake provider**: the same with the configuration's ``fake`` provider (latency
     50 ms) in place of ThinClient: what the Ray actors run, since a client object cannot cross;
   - **engine.batch, Ray backend**: on a Ray cluster of this machine started for the benchmark
     (``ray.init(address="local", num_cpus=2)``, 127.0.0.1), 2 actors of up to 500 runs each, the
     fake provider; each sample starts its actors and ends them (about 0.2 s of it). Skipped with
     a note without Ray (``pip install 'orchestrion[ray]'``).
   The ideal is 1,000 / 0.05 s = 20,000 runs/s; all are bound by the engine's own cost per run (and
   Ray's per call: the caller submits and awaits each run, two CPUs serve the caller and both actors).
2. Peak memory of a batch of 10,000 and of 100,000 inputs (from a generator), each in a fresh
   process (``--rss N``) that first builds the engine, compiles the plan and runs a batch of 100,
   frees what that left (gc, malloc_trim) and resets its peak (``/proc/self/clear_refs``): "the
   batch's peak" is VmHWM after it minus VmRSS just before it; the process's ``ru_maxrss`` is
   printed too. A batch that reads its inputs lazily and keeps nothing per finished run stays
   flat from 10,000 to 100,000.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio

from engine import Engine, EngineConfig, load_workflow
from engine.batch import BatchBackend
from engine.dsl.models import Workflow
from tests.bench.bench_runtime import ThinClient  # the same minimal client as the runtime bench

LATENCY = 0.05
CONCURRENCY = 1_000
INPUTS = 10_000
DOCUMENT: dict[str, Any] = {
    "dsl": "orchestrion/v1", "name": "bench_batch", "inputs": {"n": {"type": "integer"}},
    "stages": [{"type": "inline", "tasks": [{"id": "a", "model": "fast_ai", "prompt": "go {{ n }}"}]}]}


def inputs(count: int) -> Iterator[dict[str, int]]:
    return ({"n": n} for n in range(count))


async def floor(engine: Engine, workflow: Workflow, count: int, concurrency: int) -> int:
    """``engine.run`` per input in a task group, at most ``concurrency`` at a time."""
    slots = anyio.Semaphore(concurrency)
    done = 0

    async def one(values: dict[str, int]) -> None:
        nonlocal done
        try:
            result = await engine.run(workflow, values)
            done += result.status == "succeeded"
        finally:
            slots.release()

    async with anyio.create_task_group() as group:
        for values in inputs(count):
            await slots.acquire()
            group.start_soon(one, values)
    return done


async def batch(engine: Engine, workflow: Workflow, count: int, concurrency: int,
                backend: BatchBackend | None = None) -> int:
    done = 0
    async with engine.batch(workflow, inputs(count), concurrency=concurrency, backend=backend) as results:
        async for item in results:
            done += item.ok
    return done


def fake_engine() -> Engine:
    """An engine whose models are the configuration's fake provider: it crosses to Ray's actors as data."""
    return Engine(EngineConfig.model_validate({"providers": {"dry": {"kind": "fake", "latency": LATENCY}},
                                               "default_provider": "dry"}))


RAY_LABEL = "engine.batch, Ray backend, 2x500"


async def throughput(samples: int, with_ray: bool) -> None:
    engine, faked = Engine(models=ThinClient(LATENCY)), fake_engine()
    workflow = load_workflow(DOCUMENT)
    print(f"\n== runs/s, {INPUTS:,} inputs at {LATENCY * 1000:.0f} ms, {CONCURRENCY:,} at a time "
          f"(ideal {CONCURRENCY / LATENCY:,.0f}/s)")

    async def local_fake(_: Engine, workflow: Workflow, count: int, concurrency: int) -> int:
        return await batch(faked, workflow, count, concurrency)

    async def on_ray(_: Engine, workflow: Workflow, count: int, concurrency: int) -> int:
        from engine.batch_ray import RayBackend

        return await batch(faked, workflow, count, concurrency, RayBackend(actors=2, runs_per_actor=500))

    contenders = [("floor: anyio loop over engine.run", floor), ("engine.batch, local backend", batch),
                  ("engine.batch, fake provider", local_fake)]
    if with_ray:
        contenders.append((RAY_LABEL, on_ray))
    rates: dict[str, list[float]] = {label: [] for label, _ in contenders}
    for label, contender in contenders:  # warm-up
        assert await contender(engine, workflow, 2_000, CONCURRENCY) == 2_000, label
    for _ in range(samples):  # alternated, so a noisy minute hits all
        for label, contender in contenders:
            gc.collect()
            start = time.perf_counter()
            done = await contender(engine, workflow, INPUTS, CONCURRENCY)
            rates[label].append(INPUTS / (time.perf_counter() - start))
            assert done == INPUTS, (label, done)
    medians = {label: statistics.median(values) for label, values in rates.items()}
    base = medians["floor: anyio loop over engine.run"]
    for label, values in rates.items():
        print(f"   {label:<36} median {medians[label]:8,.0f} runs/s (min {min(values):8,.0f}, max {max(values):8,.0f})"
              f"  n={len(values)}  {medians[label] / base:5.2f}x the floor")


def memory_mib(field: str) -> float:
    """A line of /proc/self/status: VmRSS (resident now) or VmHWM (the peak since the last reset)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    raise LookupError(field)


def settle() -> float:
    """Free what is garbage, give it back to the system, reset the peak; the resident MiB then."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    Path("/proc/self/clear_refs").write_text("5")  # Linux: VmHWM := VmRSS
    return memory_mib("VmRSS")


async def measure_rss(count: int) -> None:
    """In a fresh process: peak RSS before and after a batch of ``count`` inputs."""
    engine = Engine(models=ThinClient(LATENCY))
    workflow = load_workflow(DOCUMENT)
    engine.compile(workflow)
    assert await batch(engine, workflow, 100, CONCURRENCY) == 100  # every module loaded, every cache made
    before = settle()
    start = time.perf_counter()
    done = await batch(engine, workflow, count, CONCURRENCY)
    took = time.perf_counter() - start
    peak = max(memory_mib("VmHWM"), before)
    whole = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(f"{before:.1f} {peak:.1f} {done} {took:.1f} {whole:.1f}")


def memory(samples: int) -> None:
    print(f"\n== peak RSS of a batch, local backend, {CONCURRENCY:,} at a time, each sample a fresh process")
    for count in (10_000, 100_000):
        befores, afters, seconds, wholes = [], [], [], []
        for _ in range(samples):
            output = subprocess.run([sys.executable, "-m", "tests.bench.bench_batch", "--rss", str(count)],
                                    capture_output=True, text=True, check=True).stdout.split()
            before, after, done, took = float(output[0]), float(output[1]), int(output[2]), float(output[3])
            assert done == count, output
            wholes.append(float(output[4]))
            befores.append(before)
            afters.append(after)
            seconds.append(took)
        grown = [after - before for before, after in zip(befores, afters, strict=True)]
        print(f"   {count:>7,} inputs: the batch's peak {statistics.median(grown):5.1f} MiB over the "
              f"{statistics.median(befores):5.1f} resident before it (min {min(grown):5.1f}, max {max(grown):5.1f}); "
              f"process peak RSS {statistics.median(wholes):5.1f} MiB "
              f"(min {min(wholes):5.1f}, max {max(wholes):5.1f}); {count / statistics.median(seconds):,.0f} runs/s  "
              f"n={samples}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer samples")
    parser.add_argument("--rss", type=int, metavar="N", help="(internal) measure one batch of N in this process")
    args = parser.parse_args()
    if args.rss is not None:
        anyio.run(measure_rss, args.rss)
        return
    samples = 3 if args.quick else 5
    try:
        import ray
    except ImportError:
        print("(no Ray: the Ray backend's row is skipped; pip install 'orchestrion[ray]')")
        anyio.run(throughput, samples, False)
    else:  # a cluster of this machine, started on this thread before the event loop (ray.init blocks)
        ray.init(address="local", num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1",
                 log_to_driver=False)
        try:
            anyio.run(throughput, samples, True)
        finally:
            ray.shutdown()
    memory(2 if args.quick else 3)


if __name__ == "__main__":
    main()
