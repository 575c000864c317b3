"""Write throughput of the run store: ``save_task`` per second, SQLite and PostgreSQL.

Run: ``python -m tests.bench.bench_store`` (``--quick``: fewer runs). Not part of the test run;
prints the median and min-max of several runs, each on a fresh database, and asserts nothing.

- **sequential**: one run, ``save_task`` after ``save_task`` (each a committed transaction);
- **200 concurrent runs**: anyio tasks each doing ``create_run``, 10 ``save_task`` and
  ``finish_run`` (12 writes), all at once: the SQLite writer queues them, PostgreSQL's pool
  takes them side by side;
- **ticks of 10**: ``save_tasks`` with 10 results a transaction, as the runtime's journal writes
  the nodes that settle in one scheduler tick (counted per task).

SQLite runs with WAL and ``synchronous=NORMAL`` (a commit reaches the OS, not the disk, until a
checkpoint). PostgreSQL is a cluster of this machine started for the benchmark, with its default
durability (``fsync`` on, ``synchronous_commit`` on), unless ``--fast-pg``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio

from engine.store import RunRecord, RunStore, TaskRecord, open_store
from tests.support.postgres import PostgresServer, find_binaries

SEQUENTIAL_WRITES = 2000
CONCURRENT_RUNS, TASKS_PER_RUN = 200, 10
TICKS, TICK_SIZE = 200, 10

Case = Callable[[RunStore], Awaitable[int]]  # writes a fresh store, returns how many writes


def _run(run_id: str, **changes: object) -> RunRecord:
    return RunRecord(run_id, "bench", {"dsl": "orchestrion/v1"}, {"topic": "x"}, time.time(), **changes)  # type: ignore[arg-type]


def _task(run_id: str, number: int) -> TaskRecord:
    return TaskRecord(run_id, f"task-{number}", "succeeded", output={"text": "an answer " * 20, "n": number},
                      model="fast_ai", attempts=1, input_tokens=100, output_tokens=200, cost_usd=0.001,
                      started_at=time.time(), ended_at=time.time())


async def sequential(store: RunStore) -> int:
    await store.create_run(_run("seq"))
    for number in range(SEQUENTIAL_WRITES):
        await store.save_task(_task("seq", number))
    return SEQUENTIAL_WRITES


async def concurrent(store: RunStore) -> int:
    async def one(run_id: str) -> None:
        await store.create_run(_run(run_id))
        for number in range(TASKS_PER_RUN):
            await store.save_task(_task(run_id, number))
        await store.finish_run(_run(run_id, status="succeeded", ended_at=time.time()))

    async with anyio.create_task_group() as group:
        for index in range(CONCURRENT_RUNS):
            group.start_soon(one, f"run-{index}")
    return CONCURRENT_RUNS * (TASKS_PER_RUN + 2)


async def ticks(store: RunStore) -> int:
    await store.create_run(_run("ticks"))
    for tick in range(TICKS):
        await store.save_tasks([_task("ticks", tick * TICK_SIZE + number) for number in range(TICK_SIZE)])
    return TICKS * TICK_SIZE


async def measure(case: Case, fresh_url: Callable[[], str], repeats: int) -> list[float]:
    """Writes per second, one sample per fresh store (opening it is not timed)."""
    samples = []
    for _ in range(repeats):
        store = await open_store(fresh_url())
        try:
            start = time.perf_counter()
            writes = await case(store)
            samples.append(writes / (time.perf_counter() - start))
        finally:
            await store.aclose()
    return samples


def report(label: str, samples: list[float]) -> None:
    print(f"{label:<44} median {statistics.median(samples):8.0f} writes/s  "
          f"(min {min(samples):7.0f}, max {max(samples):7.0f}, {len(samples)} runs)")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="3 runs a case instead of 7")
    parser.add_argument("--fast-pg", action="store_true", help="PostgreSQL without fsync (as the tests run it)")
    options = parser.parse_args()
    repeats = 3 if options.quick else 7
    cases: list[tuple[str, Case]] = [("sequential save_task", sequential),
                                     (f"{CONCURRENT_RUNS} concurrent runs", concurrent),
                                     (f"save_tasks, ticks of {TICK_SIZE}", ticks)]

    with tempfile.TemporaryDirectory() as folder:
        numbers = iter(range(10**6))

        def sqlite_url() -> str:
            return f"sqlite+aiosqlite:///{Path(folder) / f'runs-{next(numbers)}.db'}"

        for label, case in cases:
            report(f"SQLite, {label}", await measure(case, sqlite_url, repeats))

    binaries = find_binaries()
    if binaries is None:
        print("PostgreSQL: not installed, skipped (.ci/run installs it)")
        return
    started = time.perf_counter()
    server = await anyio.to_thread.run_sync(lambda: PostgresServer.start(binaries, durable=not options.fast_pg))
    print(f"PostgreSQL cluster started in {time.perf_counter() - started:.2f} s"
          f"{' (fsync off)' if options.fast_pg else ''}")
    try:
        def postgres_url() -> str:
            name = f"bench_{next(numbers)}"
            server.sql(f"CREATE DATABASE {name}")
            return server.url(name)

        for label, case in cases:
            report(f"PostgreSQL, {label}", await measure(case, postgres_url, repeats))
    finally:
        await anyio.to_thread.run_sync(server.remove)


if __name__ == "__main__":
    anyio.run(main)
