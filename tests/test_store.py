"""The run store's contract, checked on every store: MemoryStore, SQLite in a temporary folder, and a
real PostgreSQL started for the session (tests/support/postgres.py).

Then what only a database store promises: attempts batched until a write or a read needs them,
the size limit on values, failures as StoreError (never a driver's traceback, never a password),
no "database is locked" from 200 concurrent runs or from two processes on one SQLite file, and a
schema made by the migrations that matches ``engine/store/tables.py``.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
import re
import shutil
import sqlite3
import sys
import textwrap
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import anyio.lowlevel
import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from anyio.abc import Process
from sqlalchemy.ext.asyncio import create_async_engine

import engine.store as stores
from engine import Engine
from engine.errors import StoreError
from engine.store import (
    AttemptRecord,
    CacheEntry,
    EventRecord,
    MemoryStore,
    RunRecord,
    RunStore,
    StoredRun,
    TaskRecord,
    open_store,
)
from engine.store.connect import StoreOptions
from engine.store.migrate import VERSION_TABLE, alembic_config
from engine.store.rows import MAX_VALUE_BYTES
from engine.store.sql import ATTEMPT_BATCH, SqlStore
from engine.store.tables import metadata
from engine.testing import FakeModel
from tests.support.postgres import PostgresServer, find_binaries

pytestmark = pytest.mark.anyio

PASSWORD = "s3cret-pw"  # in every PostgreSQL URL, so a test can check that no error shows it

# Every JSON shape a task may return, and text that trips encoders.
OUTPUTS = {
    "text": "héllo — 日本語 🎉 \"quoted\" \\ back\nslash",
    "nul": "a\u0000b",
    "integer": 2**53,
    "float": 0.1,
    "negative": -1.5e-300,
    "true": True,
    "false": False,
    "null": None,
    "list": [1, "two", [3.0], {"four": None}, []],
    "object": {"nested": {"deep": [{"x": 1}]}, "empty": {}, "ünï": "cödé"},
}


# -- the stores ----------------------------------------------------------------------------------

@pytest.fixture
def anyio_backend() -> str:
    """asyncio only: aiosqlite and asyncpg (and SQLAlchemy's async engine) do not run on trio."""
    return "asyncio"


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """One PostgreSQL cluster for the session (about 0.6 s to start); each test gets its own database."""
    binaries = find_binaries()
    missing = "PostgreSQL is not installed" if binaries is None else None
    try:
        import asyncpg  # noqa: F401
    except ImportError:
        missing = "asyncpg is not installed (pip install -e '.[postgres]')"
    if missing or binaries is None:
        if os.environ.get("CI"):
            raise AssertionError(f".ci/run installs PostgreSQL and asyncpg; {missing}")
        pytest.skip(f"{missing} (.ci/run installs it)")
    server = PostgresServer.start(binaries)
    try:
        yield server
    finally:
        server.remove()


_database_numbers = itertools.count()


@pytest.fixture
def postgres_url(postgres: PostgresServer) -> str:
    name = f"store_test_{next(_database_numbers)}"
    postgres.sql(f"CREATE DATABASE {name}")
    return postgres.url(name, password=PASSWORD)


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def store_url(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    if kind == "memory":
        return "memory:"
    if kind == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'runs.db'}"
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[RunStore]:
    opened = await open_store(store_url)
    try:
        yield opened
    finally:
        await opened.aclose()


sql_only = pytest.mark.parametrize("kind", ["sqlite", "postgres"])


def a_run(run_id: str = "run-1", **changes: object) -> RunRecord:
    values: dict[str, object] = {"run_id": run_id, "workflow": "flow", "document": {"dsl": "orchestrion/v1"},
                                 "inputs": {}, "started_at": 1000.0}
    return RunRecord(**{**values, **changes})  # type: ignore[arg-type]


def an_event(run_id: str = "run-1", seq: int = 1, **changes: object) -> EventRecord:
    values: dict[str, object] = {"run_id": run_id, "seq": seq, "type": "task_started", "at": 1000.0 + seq,
                                 "data": {"type": "task_started", "run_id": run_id, "time": 1000.0 + seq,
                                          "task_id": f"task-{seq}", "attempt": None}}
    return EventRecord(**{**values, **changes})  # type: ignore[arg-type]


def an_attempt(run_id: str = "run-1", attempt: int = 1, **changes: object) -> AttemptRecord:
    values: dict[str, object] = {"run_id": run_id, "task_id": "draft", "attempt": attempt, "model": "fast_ai",
                                 "workflow": "flow", "started_at": 1000.0 + attempt, "latency_s": 0.25,
                                 "outcome": "ok"}
    return AttemptRecord(**{**values, **changes})  # type: ignore[arg-type]


# -- the contract, on every store ------------------------------------------------------------------

async def test_a_run_and_its_results_round_trip_with_any_json(store: RunStore) -> None:
    document = {"dsl": "orchestrion/v1", "name": "flow", "stages": [{"type": "linear", "tasks": [{"id": "a"}]}],
                "values": OUTPUTS}
    started = a_run(document=document, inputs={"topic": "solar ☀", "n": 3, "flags": [True, None]},
                    started_at=1795000000.123456, source="flows/flow.yaml", source_digest="ab" * 32,
                    parent_run_id="parent", owner="host:42", heartbeat_at=1795000001.5)
    await store.create_run(started)
    saved = {name: TaskRecord("run-1", f"t_{name}", "succeeded", output=value, model="fast_ai", attempts=2,
                              input_tokens=10**10, output_tokens=7, cost_usd=0.000123, started_at=1795000002.25,
                              ended_at=1795000003.75)
             for name, value in OUTPUTS.items()}
    for task in saved.values():
        await store.save_task(task)
    failed = TaskRecord("run-1", "draft@2", "failed", error="boom: 'quoted'", error_kind="rate_limit")
    await store.save_task(failed)
    finished = dataclasses.replace(started, status="succeeded", ended_at=1795000009.0, input_tokens=11,
                                   outputs={"report": OUTPUTS["object"], "n": None}, output_tokens=22, cost_usd=0.5)
    await store.finish_run(finished)

    loaded = await store.load_run("run-1")

    assert loaded == StoredRun(finished, {task.task_id: task for task in [*saved.values(), failed]}, [])
    assert await store.load_run("unknown") is None


async def test_a_later_save_of_a_task_replaces_it_and_save_tasks_writes_a_tick(store: RunStore) -> None:
    await store.create_run(a_run())
    await store.save_task(TaskRecord("run-1", "draft", "failed", error="first try"))
    await store.save_task(TaskRecord("run-1", "draft", "succeeded", output="second try"))
    await store.save_tasks([TaskRecord("run-1", "a", "succeeded", output=1),
                            TaskRecord("run-1", "b", "skipped"), TaskRecord("run-1", "a", "succeeded", output=2)])
    await store.save_tasks([])

    loaded = await store.load_run("run-1")

    assert loaded is not None
    assert loaded.tasks == {"draft": TaskRecord("run-1", "draft", "succeeded", output="second try"),
                            "a": TaskRecord("run-1", "a", "succeeded", output=2),
                            "b": TaskRecord("run-1", "b", "skipped")}


async def test_runs_are_listed_newest_first_and_filtered(store: RunStore) -> None:
    for run_id, workflow, status, started in [("a", "report", "succeeded", 10.0), ("b", "report", "failed", 30.0),
                                              ("c", "chat", "succeeded", 20.0), ("d", "report", "running", 40.0)]:
        await store.create_run(a_run(run_id, workflow=workflow, status=status, started_at=started))

    async def ids(**filters: object) -> list[str]:
        return [run.run_id for run in await store.list_runs(**filters)]  # type: ignore[arg-type]

    assert await ids() == ["d", "b", "c", "a"]
    assert await ids(limit=2) == ["d", "b"]
    assert await ids(workflow="report") == ["d", "b", "a"]
    assert await ids(status="succeeded") == ["c", "a"]
    assert await ids(workflow="report", status="succeeded") == ["a"]
    assert await ids(workflow="nothing") == []


async def test_recorded_attempts_are_seen_by_reads(store: RunStore) -> None:
    await store.create_run(a_run("run-1"))
    await store.create_run(a_run("run-2", workflow="chat"))
    first = an_attempt("run-1", 1, outcome="rate_limit", latency_s=0.5)
    second = an_attempt("run-1", 2, item=3, cached=True, input_tokens=5, output_tokens=6, cost_usd=0.01)
    other = an_attempt("run-2", 1, workflow="chat", model="thinking_ai", started_at=2000.0)
    await store.record_attempts([first, second])
    await store.record_attempts([other])

    loaded = await store.load_run("run-1")

    assert loaded is not None and loaded.attempts == [first, second]
    assert await store.attempts_since(0) == [first, second, other]
    assert await store.attempts_since(1002.0) == [second, other]
    assert await store.attempts_since(0, workflow="chat") == [other]


async def test_prune_deletes_old_finished_runs_with_their_tasks_and_attempts(store: RunStore) -> None:
    for run_id, status, ended in [("old", "succeeded", 100.0), ("old-failed", "failed", 200.0),
                                  ("old-running", "running", None), ("recent", "succeeded", 900.0)]:
        await store.create_run(a_run(run_id, status=status, ended_at=ended, started_at=50.0))
        await store.save_task(TaskRecord(run_id, "draft", "succeeded", output=run_id))
        await store.record_attempts([an_attempt(run_id)])

    assert await store.prune(older_than=500.0) == 2

    assert await store.load_run("old") is None
    assert await store.load_run("old-failed") is None
    assert {run.run_id for run in await store.list_runs()} == {"old-running", "recent"}
    assert sorted(attempt.run_id for attempt in await store.attempts_since(0)) == ["old-running", "recent"]
    kept = await store.load_run("recent")
    assert kept is not None and list(kept.tasks) == ["draft"]
    assert await store.prune(older_than=500.0) == 0


async def test_events_round_trip_in_seq_order(store: RunStore) -> None:
    await store.create_run(a_run())
    first, second = an_event(seq=1, data={"type": "run_started", "inputs": OUTPUTS}), an_event(seq=2)
    third = an_event(seq=3, type="run_finished", data={"type": "run_finished", "status": "succeeded"})
    await store.record_events([third, first])  # in any order: read back by seq
    await store.record_events([second])
    await store.record_events([])

    assert await store.load_events("run-1") == [first, second, third]
    assert await store.load_events("unknown") == []


async def test_events_are_read_after_a_seq_and_up_to_a_limit(store: RunStore) -> None:
    await store.create_run(a_run())
    events = [an_event(seq=seq) for seq in range(1, 11)]
    await store.record_events(events)

    assert await store.load_events("run-1", after=7) == events[7:]
    assert await store.load_events("run-1", limit=3) == events[:3]
    assert await store.load_events("run-1", after=2, limit=4) == events[2:6]
    assert await store.load_events("run-1", after=10) == []
    assert await store.load_events("run-1", limit=0) == []


async def test_an_event_recorded_again_is_ignored(store: RunStore) -> None:
    await store.create_run(a_run())
    first = an_event(seq=1)
    await store.record_events([first, an_event(seq=2)])
    await store.record_events([an_event(seq=2, type="retried", data={"again": True}), an_event(seq=3)])
    await store.record_events([an_event(seq=3), an_event(seq=3)])  # twice in one batch too

    assert await store.load_events("run-1") == [first, an_event(seq=2), an_event(seq=3)]


async def test_events_of_another_run_are_not_returned(store: RunStore) -> None:
    await store.create_run(a_run("run-1"))
    await store.create_run(a_run("run-2"))
    await store.record_events([an_event("run-1", 1), an_event("run-2", 1), an_event("run-2", 2),
                               an_event("run-1", 2)])

    assert await store.load_events("run-1") == [an_event("run-1", 1), an_event("run-1", 2)]
    assert await store.load_events("run-2", after=1) == [an_event("run-2", 2)]


async def test_prune_deletes_the_events_of_pruned_runs(store: RunStore) -> None:
    await store.create_run(a_run("old", status="succeeded", ended_at=100.0))
    await store.create_run(a_run("recent", status="succeeded", ended_at=900.0))
    await store.record_events([an_event("old", 1), an_event("old", 2), an_event("recent", 1)])

    assert await store.prune(older_than=500.0) == 1

    assert await store.load_events("old") == []
    assert await store.load_events("recent") == [an_event("recent", 1)]


async def test_cached_answers_expire_are_replaced_and_cleared(store: RunStore) -> None:
    forever = CacheEntry("key-1", "fast_ai", {"text": "hi ✓", "usage": {"input_tokens": 3}}, created_at=10.0)
    brief = CacheEntry("key-2", "fast_ai", {"text": "soon gone"}, created_at=10.0, expires_at=20.0, cost_usd=0.2)
    await store.cache_put(forever)
    await store.cache_put(brief)

    assert await store.cache_get("key-1", now=10**9) == forever
    assert await store.cache_get("key-2", now=19.9) == brief
    assert await store.cache_get("key-2", now=20.0) is None
    assert await store.cache_get("missing", now=0.0) is None

    newer = CacheEntry("key-1", "thinking_ai", {"text": "better"}, created_at=11.0)
    await store.cache_put(newer)
    assert await store.cache_get("key-1", now=11.0) == newer

    assert await store.cache_clear() == 2
    assert await store.cache_get("key-1", now=11.0) is None
    assert await store.cache_clear() == 0


async def test_runs_whose_heartbeat_stopped_are_marked_interrupted(store: RunStore) -> None:
    await store.create_run(a_run("alive", started_at=100.0, heartbeat_at=100.0))
    await store.create_run(a_run("stale", started_at=100.0, heartbeat_at=150.0))
    await store.create_run(a_run("never-beat", started_at=100.0))
    await store.create_run(a_run("finished", started_at=100.0, status="succeeded", ended_at=120.0))
    await store.heartbeat(["alive", "unknown"], now=990.0)
    await store.heartbeat([], now=995.0)

    assert sorted(await store.mark_interrupted(older_than=900.0)) == ["never-beat", "stale"]

    statuses = {run.run_id: run.status for run in await store.list_runs()}
    assert statuses == {"alive": "running", "stale": "interrupted", "never-beat": "interrupted",
                        "finished": "succeeded"}
    alive = await store.load_run("alive")
    assert alive is not None and alive.run.heartbeat_at == 990.0
    assert await store.mark_interrupted(older_than=900.0) == []


# -- what a database store adds ------------------------------------------------------------------

@sql_only
async def test_attempts_wait_in_memory_until_a_write_or_flush_takes_them(store: RunStore, store_url: str) -> None:
    observer = await SqlStore.open(store_url)  # another process's view: it sees only what is committed
    try:
        await store.create_run(a_run())
        await store.record_attempts([an_attempt(attempt=1)])
        assert await observer.attempts_since(0) == []

        await store.save_task(TaskRecord("run-1", "draft", "succeeded"))  # they go with the next write
        assert [a.attempt for a in await observer.attempts_since(0)] == [1]

        await store.record_attempts([an_attempt(attempt=2)])
        await store.flush()
        assert [a.attempt for a in await observer.attempts_since(0)] == [1, 2]

        await store.record_attempts([an_attempt(attempt=n) for n in range(3, 3 + ATTEMPT_BATCH)])  # a full batch
        assert len(await observer.attempts_since(0)) == 2 + ATTEMPT_BATCH
    finally:
        await observer.aclose()


@sql_only
async def test_an_output_above_the_size_limit_is_refused(store: RunStore) -> None:
    await store.create_run(a_run())
    fits = "x" * (MAX_VALUE_BYTES - 1000)
    await store.save_task(TaskRecord("run-1", "fits", "succeeded", output=fits))

    with pytest.raises(StoreError, match=r"output of task 'huge' of run 'run-1' is 2\.1 MB of JSON, above .* limit"):
        await store.save_task(TaskRecord("run-1", "huge", "succeeded", output=["é" * (MAX_VALUE_BYTES // 2)]))
    with pytest.raises(StoreError, match="outputs of run 'run-1'"):
        await store.finish_run(a_run(status="succeeded", outputs={"all": "y" * MAX_VALUE_BYTES}))

    loaded = await store.load_run("run-1")
    assert loaded is not None and loaded.run.status == "running"
    assert list(loaded.tasks) == ["fits"] and loaded.tasks["fits"].output == fits


@sql_only
async def test_values_that_are_not_json_are_refused(store: RunStore) -> None:
    await store.create_run(a_run())
    with pytest.raises(StoreError, match=r"output of task 'nan' .* is not JSON"):
        await store.save_task(TaskRecord("run-1", "nan", "succeeded", output={"score": math.nan}))
    with pytest.raises(StoreError, match="inputs of run 'run-2' is not JSON"):
        await store.create_run(a_run("run-2", inputs={"tags": {"a", "b"}}))
    with pytest.raises(StoreError, match="is not JSON"):
        await store.save_task(TaskRecord("run-1", "surrogate", "succeeded", output="\ud800"))


@pytest.mark.parametrize("kind", ["postgres"])
async def test_a_database_that_is_gone_is_a_store_error(store: RunStore, postgres: PostgresServer,
                                                        store_url: str) -> None:
    await store.create_run(a_run())
    database = store_url.rsplit("/", 1)[1]
    await anyio.to_thread.run_sync(postgres.sql, f"DROP DATABASE {database} WITH (FORCE)")

    with pytest.raises(StoreError) as raised:
        await store.save_task(TaskRecord("run-1", "draft", "succeeded", output="lost?"))

    message = str(raised.value)
    assert f"run store postgresql+asyncpg://orchestrion:***@127.0.0.1:{postgres.port}/{database}" in message
    assert "save_task of task 'draft' of run 'run-1' failed" in message and "does not exist" in message
    assert PASSWORD not in message and "[SQL:" not in message
    assert raised.value.__cause__ is None and raised.value.__suppress_context__  # no driver traceback under it


async def test_a_stopped_postgres_server_is_a_store_error(postgres: PostgresServer) -> None:
    server = await anyio.to_thread.run_sync(PostgresServer.start, postgres.bin)  # its own, to stop
    try:
        store = await SqlStore.open(server.url(password=PASSWORD))
        await store.create_run(a_run())
        await anyio.to_thread.run_sync(server.stop, "immediate")

        for write in (store.save_task(TaskRecord("run-1", "draft", "succeeded")), store.load_run("run-1")):
            with pytest.raises(StoreError, match="cannot reach the database") as raised:
                await write
            assert PASSWORD not in str(raised.value) and raised.value.__cause__ is None
        await store.aclose()
    finally:
        await anyio.to_thread.run_sync(server.remove)


async def test_a_sqlite_file_deleted_under_the_store_is_a_store_error(tmp_path: Path) -> None:
    """SQLite in WAL mode would go on writing into the deleted file: the store refuses instead."""
    folder = tmp_path / "data"
    store = await SqlStore.open(f"sqlite:///{folder / 'runs.db'}")
    try:
        await store.create_run(a_run())
        await anyio.to_thread.run_sync(shutil.rmtree, folder)  # root ignores a read-only folder: remove it

        with pytest.raises(StoreError, match=r"save_task .* failed: cannot reach the database: the database file "
                                             r".*runs\.db was deleted or replaced while the store had it open"):
            await store.save_task(TaskRecord("run-1", "draft", "succeeded"))
    finally:
        await store.aclose()


async def test_a_sqlite_lock_held_past_busy_timeout_is_a_store_error(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    store = await SqlStore.open(f"sqlite:///{path}", StoreOptions(busy_timeout=0.2))
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        await store.create_run(a_run())
        other.execute("BEGIN EXCLUSIVE")  # another process's writer, holding the lock

        with pytest.raises(StoreError, match=r"held the database file's write lock for more than 0\.2 s"):
            await store.save_task(TaskRecord("run-1", "draft", "succeeded"))

        other.execute("COMMIT")
        await store.save_task(TaskRecord("run-1", "draft", "succeeded"))  # the store is still usable
        loaded = await store.load_run("run-1")
        assert loaded is not None and list(loaded.tasks) == ["draft"]
    finally:
        other.close()
        await store.aclose()


@pytest.mark.parametrize(("url", "message"), [
    ("mysql://user:hunter2@db/runs", r"SQLite or PostgreSQL, not 'mysql' \(mysql://user:\*\*\*@db/runs\)"),
    ("sqlite://", "use the URL 'memory:'"),
    ("sqlite:///:memory:", "use the URL 'memory:'"),
    ("not a url", "is not a store URL"),
    ("postgresql+psycopg2://user@127.0.0.1/db", "not async|driver is not installed"),
])
async def test_urls_that_name_no_usable_store_are_refused(url: str, message: str) -> None:
    with pytest.raises(StoreError, match=message) as raised:
        await open_store(url)
    assert "hunter2" not in str(raised.value)


async def test_a_file_that_is_not_a_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    path.write_bytes(b"not a database, just text " * 200)
    shown = re.escape(f"run store sqlite+aiosqlite:///{path}: ")
    with pytest.raises(StoreError, match=shown + ".*file is not a database"):
        await open_store(f"sqlite:///{path}")


async def test_open_store_defaults_to_sqlite_in_the_user_data_folder(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    for url in (None, ""):
        store = await open_store(url)
        try:
            assert isinstance(store, SqlStore) and store.url == f"sqlite+aiosqlite:///{tmp_path}/data/orchestrion/runs.db"
            await store.create_run(a_run())
        finally:
            await store.aclose()
    assert (tmp_path / "data" / "orchestrion" / "runs.db").is_file()
    assert isinstance(await open_store("memory:"), MemoryStore)


async def test_a_closed_store_refuses_writes(tmp_path: Path) -> None:
    store = await open_store(f"sqlite:///{tmp_path / 'runs.db'}")
    await store.aclose()
    await store.aclose()  # twice is fine
    with pytest.raises(StoreError, match="after the store was closed"):
        await store.create_run(a_run())


async def test_when_a_run_returns_its_results_and_every_model_call_are_committed(store: RunStore,
                                                                                  store_url: str) -> None:
    # Call records are written after the results they belong to, while the results' readers go on:
    # still, none is left in memory when the run returns (another process's view shows them all).
    wide = {"dsl": "orchestrion/v1", "name": "wide", "defaults": {"model": "fast_ai", "retry": None},
            "stages": [{"type": "linear", "tasks": [{"id": f"t{i}", "prompt": f"q{i}"} for i in range(600)]},
                       {"type": "linear", "tasks": [{"id": "last", "prompt": "after {{ t0 }}"}]}]}
    result = await Engine(models=FakeModel(), store=store).run(wide)
    assert result.status == "succeeded"

    observer = store if store_url == "memory:" else await SqlStore.open(store_url)
    try:
        stored = await observer.load_run(result.run_id)
        assert stored is not None and stored.run.status == "succeeded"
        assert len(stored.tasks) == 601 and {task.status for task in stored.tasks.values()} == {"succeeded"}
        assert sorted(attempt.task_id for attempt in stored.attempts) == sorted(stored.tasks)
    finally:
        if observer is not store:
            await observer.aclose()


# -- concurrency: no write lost, no "database is locked" -------------------------------------------

async def _one_run(store: RunStore, run_id: str) -> None:
    await store.create_run(a_run(run_id, started_at=float(len(run_id))))
    for number in range(10):
        await store.save_task(TaskRecord(run_id, f"task-{number}", "succeeded", output={"n": number}))
        await anyio.lowlevel.checkpoint()  # let the other runs interleave, as a scheduler's tasks do
    await store.finish_run(a_run(run_id, status="succeeded", ended_at=2.0, outputs={"done": run_id}))


@sql_only
async def test_200_concurrent_runs_lose_nothing(store: RunStore) -> None:
    with anyio.fail_after(15):
        async with anyio.create_task_group() as group:
            for number in range(200):
                group.start_soon(_one_run, store, f"run-{number}")

    finished = await store.list_runs(limit=1000, status="succeeded")
    assert len(finished) == 200
    for run_id in ("run-0", "run-117", "run-199"):
        loaded = await store.load_run(run_id)
        assert loaded is not None and loaded.run.outputs == {"done": run_id}
        assert [task.output for task in loaded.tasks.values()] == [{"n": n} for n in range(10)]


WRITER_SCRIPT = textwrap.dedent("""
    import sys, time
    import anyio
    from engine.store import RunRecord, TaskRecord, open_store

    async def main(url, name):
        store = await open_store(url)
        print("ready", flush=True)
        sys.stdin.readline()  # start with the others
        async def one(n):
            run_id = f"{name}-{n}"
            await store.create_run(RunRecord(run_id, "flow", {}, {}, time.time()))
            for t in range(10):
                await store.save_task(TaskRecord(run_id, f"t{t}", "succeeded", output=t))
            await store.finish_run(RunRecord(run_id, "flow", {}, {}, time.time(), status="succeeded"))
        async with anyio.create_task_group() as group:
            for n in range(40):
                group.start_soon(one, n)
        await store.aclose()

    anyio.run(main, *sys.argv[1:])
""")


async def _errors_of(process: Process, into: list[bytes]) -> None:
    assert process.stderr is not None
    async for chunk in process.stderr:
        into.append(chunk)


async def test_two_processes_write_one_sqlite_file_at_once(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    store = await open_store(url)  # the schema exists before the writers start
    writers = [await anyio.open_process([sys.executable, "-c", WRITER_SCRIPT, url, name])
               for name in ("first", "second")]
    errors: list[list[bytes]] = [[], []]
    try:
        with anyio.fail_after(18):
            async with anyio.create_task_group() as group:
                for writer, collected in zip(writers, errors, strict=True):
                    group.start_soon(_errors_of, writer, collected)
                for writer in writers:  # each has opened the store...
                    assert writer.stdout is not None and (await writer.stdout.receive()).strip() == b"ready"
                for writer in writers:  # ...then all write at once, this process too
                    assert writer.stdin is not None
                    await writer.stdin.send(b"go\n")
                await _one_run(store, "here")
            for writer, collected in zip(writers, errors, strict=True):
                assert await writer.wait() == 0, b"".join(collected).decode()
                assert b"locked" not in b"".join(collected)
        assert len(await store.list_runs(limit=1000, status="succeeded")) == 81
        loaded = await store.load_run("second-39")
        assert loaded is not None and len(loaded.tasks) == 10
    finally:
        for writer in writers:
            if writer.returncode is None:
                writer.kill()
            await writer.aclose()
        await store.aclose()


# -- the schema: made by the migrations, equal to tables.py ---------------------------------------

@sql_only
async def test_the_migrated_schema_matches_the_tables(store: RunStore, store_url: str) -> None:
    engine = create_async_engine(store_url)
    try:
        async with engine.connect() as connection:
            differences = await connection.run_sync(
                lambda sync: compare_metadata(
                    MigrationContext.configure(sync, opts={"version_table": VERSION_TABLE}), metadata))
            version = (await connection.execute(sa.text(f"SELECT version_num FROM {VERSION_TABLE}"))).scalar()
    finally:
        await engine.dispose()
    assert differences == []
    assert version == "0003"


@sql_only
async def test_an_old_database_is_upgraded_when_opened(store_url: str) -> None:
    store = await open_store(store_url)
    await store.create_run(a_run())
    await store.aclose()
    engine = create_async_engine(store_url)
    try:
        async with engine.begin() as connection:  # back to before the first revision
            await connection.run_sync(lambda sync: command.downgrade(alembic_config(sync), "base"))
            tables = await connection.run_sync(lambda sync: sa.inspect(sync).get_table_names())
        assert "runs" not in tables

        store = await open_store(store_url)
        await store.create_run(a_run("after"))
        assert [run.run_id for run in await store.list_runs()] == ["after"]
        await store.aclose()

        async with engine.begin() as connection:  # a revision from a newer Orchestrion
            await connection.execute(sa.text(f"UPDATE {VERSION_TABLE} SET version_num = '9999'"))
        with pytest.raises(StoreError, match="if a newer Orchestrion upgraded it, upgrade this one too"):
            await open_store(store_url)
    finally:
        await engine.dispose()


async def test_chat_sessions_append_in_order_and_refuse_a_taken_number(store: RunStore) -> None:
    from engine.store import ChatTurn

    assert await store.session_turns("s") == []
    await store.add_turns([ChatTurn("s", 0, "user", "hi", 1.0), ChatTurn("s", 1, "assistant", "hello", 2.0)])
    await store.add_turns([ChatTurn("other", 0, "user", "x", 3.0)])
    assert [(turn.seq, turn.role, turn.content) for turn in await store.session_turns("s")] == [
        (0, "user", "hi"), (1, "assistant", "hello")]
    with pytest.raises(StoreError):
        await store.add_turns([ChatTurn("s", 1, "user", "again", 4.0)])
    assert len(await store.session_turns("s")) == 2


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_runs_that_start_together_open_one_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       anyio_backend: str) -> None:
    """The first runs of an engine arrive together (a server's first requests): they share one store."""
    opened = []
    real_open = stores.open_store

    async def counting_open(url: str | None = None) -> RunStore:
        opened.append(url)
        return await real_open(url)

    monkeypatch.setattr(stores, "open_store", counting_open)
    engine = Engine(models=FakeModel(), store=f"sqlite+aiosqlite:///{tmp_path}/runs.db")
    flow = {"dsl": "orchestrion/v1", "name": "f", "stages": [{"type": "linear", "tasks": [
        {"id": "a", "model": "fast_ai", "prompt": "hi"}]}]}
    try:
        async with anyio.create_task_group() as group:
            for _ in range(20):
                group.start_soon(engine.run, flow)
        assert len(opened) == 1
        store = await engine.run_store()
        assert store is not None and len(await store.list_runs(limit=50)) == 20
    finally:
        await engine.aclose()
