"""The run store in a database, through SQLAlchemy's asyncio engine: SQLite by default, PostgreSQL to share.

``await SqlStore.open(url)`` connects and migrates the schema. Then:

- **Writes are committed when they return** (``create_run``, ``save_task``, ``finish_run``...),
  each an upsert or update (events: an insert that skips a stored ``(run_id, seq)``), so a write
  whose connection dropped is tried once more (uncommitted, it left nothing; committed but
  unacknowledged, its repeat changes nothing but the attempts).
  A write in flight finishes even if its caller is cancelled: a result is never half-written.
- **SQLite has one writer**: writes queue on an ``anyio.Lock`` for the writer engine's only
  connection, so this process never competes with itself for the file's lock; other processes
  wait on ``busy_timeout``, and reads go to other connections (WAL lets them run during a write).
  Each write transaction runs whole in a worker thread on a sync connection (one thread hop, where
  aiosqlite made eight). PostgreSQL takes concurrent writes from its pool, with no lock of ours.
- **A write is a sync function of a connection** (``Write``), whatever the database: run in the
  writer's thread on SQLite, through ``AsyncConnection.run_sync`` on PostgreSQL.
- **Attempts are batched**: ``record_attempts`` keeps them in memory, and they are written in the
  same transaction as the next write (a task's result, usually), by ``flush`` and ``aclose``, when
  ``ATTEMPT_BATCH`` are waiting, and before any read that returns attempts.
- **A run's own rows go straight to the driver**: its results, model calls and run row are tuples
  (``rows.task_values``...) given to the driver's ``executemany`` with a statement compiled once,
  their JSON encoded once; SQLAlchemy's per-row work on a list of dicts was half of what a
  1,000-task run spent in the store. ``finish_run`` updates only what changes after the start.
- **Failures are ``StoreError``**, one line naming the store (without its password), the operation
  and the driver's reason; the SQLAlchemy exception is not chained, since it carries the statement
  and its parameters (a run's inputs, outputs).
"""

from __future__ import annotations

import functools
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, nullcontext
from typing import Any, TypeVar

import anyio
import sqlalchemy as sa
from alembic.util.exc import CommandError
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Dialect, Engine
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from engine.errors import StoreError
from engine.store import migrate, rows, tables
from engine.store.connect import StoreOptions, Target, build_engines, describe_failure, parse_url
from engine.store.records import (
    AttemptRecord,
    CacheEntry,
    ChatTurn,
    EventRecord,
    RunRecord,
    StoredRun,
    StoredRunStatus,
    TaskRecord,
)

T = TypeVar("T")
Work = Callable[[AsyncConnection], Awaitable[T]]  # a read
Write = Callable[[Connection], T]  # a write's statements, inside its transaction

# Columns, by table.
RUN, TASK, ATTEMPT, EVENT, CACHED = (tables.runs.c, tables.tasks.c, tables.attempts.c, tables.events.c,
                                     tables.cache_entries.c)

DOCUMENTS_KEPT = 16  # encoded workflow documents kept, by the identity of the dict
ATTEMPT_BATCH = 500  # attempts kept in memory before they are written on their own
FAILURES = (SQLAlchemyError, OSError)  # OSError: a connection refused before SQLAlchemy wraps it


class SqlStore:
    """A ``RunStore`` in SQLite or PostgreSQL. Open with ``await SqlStore.open(url)``; close with ``aclose``."""

    def __init__(self, target: Target, writer: Engine | AsyncEngine, reader: AsyncEngine,
                 options: StoreOptions) -> None:
        self._target, self._options = target, options
        self._writer, self._reader = writer, reader
        self._write_lock: AbstractAsyncContextManager[Any] = (
            anyio.Lock() if target.dialect == "sqlite" else nullcontext())
        self._thread = anyio.CapacityLimiter(1)  # the sync writer's: one transaction at a time
        self._statements = _Statements(writer.dialect)
        self._pending: list[tuple[Any, ...]] = []  # attempts not yet written
        # Workflow documents as JSON, by the dict's identity: the engine gives every run of one workflow
        # the same document (28 KB for 1,000 tasks: 0.3 ms to encode), which is never changed.
        self._documents: OrderedDict[int, tuple[dict[str, Any], str]] = OrderedDict()
        self._closed = False

    @classmethod
    async def open(cls, url: str, options: StoreOptions | None = None) -> SqlStore:
        """Connect to the database at ``url`` and bring its schema up to date."""
        options = options or StoreOptions()
        target = parse_url(url)
        # Engine creation imports the driver and, for SQLite, makes the folder: off the event loop.
        writer, reader = await anyio.to_thread.run_sync(build_engines, target, options)
        store = cls(target, writer, reader, options)
        try:
            await store._write("bringing the schema up to date", migrate.upgrade)
        except CommandError as exc:  # a revision this version does not know: a newer Orchestrion migrated it
            await store._dispose()
            raise StoreError(f"run store {store.url}: cannot bring its schema up to date ({exc}); "
                             "if a newer Orchestrion upgraded it, upgrade this one too") from None
        except BaseException:
            await store._dispose()
            raise
        return store

    @property
    def url(self) -> str:
        """The store's URL, without its password."""
        return self._target.shown

    # -- runs and their results ------------------------------------------------------------------

    async def create_run(self, run: RunRecord) -> None:
        values = rows.run_values(run, self._document(run))
        await self._write(f"create_run of run {run.run_id!r}", _driver(self._statements.save_run, [values]))

    async def save_task(self, task: TaskRecord) -> None:
        values = rows.task_values(task)
        await self._write(f"save_task of task {task.task_id!r} of run {task.run_id!r}",
                          _driver(self._statements.save_tasks, [values]))

    async def save_tasks(self, tasks: Sequence[TaskRecord]) -> None:
        if tasks:
            values = [rows.task_values(task) for task in tasks]
            await self._write(f"save_tasks of {len(values)} tasks of run {tasks[0].run_id!r}",
                              _driver(self._statements.save_tasks, values))

    async def finish_run(self, run: RunRecord, *, tasks: Sequence[TaskRecord] = (),
                         attempts: Sequence[AttemptRecord] = ()) -> None:
        statements, values = self._statements, rows.run_end_values(run)
        results = [rows.task_values(task) for task in tasks]

        def work(connection: Connection) -> None:
            if connection.exec_driver_sql(statements.end_run, values).rowcount == 0:
                connection.exec_driver_sql(statements.save_run, rows.run_values(run, document))  # never created
            if results:  # after the run's row: they refer to it
                connection.exec_driver_sql(statements.save_tasks, results)

        document = self._document(run)
        self._check_open("finish_run")
        self._pending.extend(map(rows.attempt_values, attempts))  # written by this transaction, or kept
        await self._write(f"finish_run of run {run.run_id!r}", work)

    def _document(self, run: RunRecord) -> str:
        """``run.document`` as JSON, encoded once per document object (the last few kept)."""
        cached = self._documents.get(id(run.document))
        if cached is not None and cached[0] is run.document:
            return cached[1]
        text = rows.encoded(run.document, lambda: f"the workflow document of run {run.run_id!r}")
        self._documents[id(run.document)] = (run.document, text)
        if len(self._documents) > DOCUMENTS_KEPT:
            self._documents.popitem(last=False)
        return text

    async def heartbeat(self, run_ids: Sequence[str], now: float) -> None:
        if run_ids:
            statement = sa.update(tables.runs).where(RUN.run_id.in_(list(run_ids))).values(heartbeat_at=now)
            await self._write("heartbeat", _execute(statement))

    async def mark_interrupted(self, older_than: float) -> list[str]:
        last_sign = sa.func.coalesce(RUN.heartbeat_at, RUN.started_at)
        statement = (sa.update(tables.runs).where(RUN.status == "running", last_sign < older_than)
                     .values(status="interrupted").returning(RUN.run_id))

        def work(connection: Connection) -> list[str]:
            return list(connection.execute(statement).scalars())

        return await self._write("mark_interrupted", work)

    async def prune(self, older_than: float) -> int:
        old = sa.select(RUN.run_id).where(RUN.status != "running", RUN.ended_at < older_than)

        def work(connection: Connection) -> int:
            connection.execute(sa.delete(tables.attempts).where(ATTEMPT.run_id.in_(old)))
            connection.execute(sa.delete(tables.events).where(EVENT.run_id.in_(old)))
            connection.execute(sa.delete(tables.tasks).where(TASK.run_id.in_(old)))
            return connection.execute(sa.delete(tables.runs).where(RUN.run_id.in_(old))).rowcount

        return await self._write("prune", work)

    # -- events -------------------------------------------------------------------------------------

    async def record_events(self, events: Sequence[EventRecord]) -> None:
        if events:
            values = [rows.event_row(event) for event in events]
            runs = {event.run_id for event in events}
            whose = f"run {events[0].run_id!r}" if len(runs) == 1 else f"{len(runs)} runs"
            await self._write(f"record_events of {len(values)} events of {whose}",
                              _execute(self._statements.insert_events, values))

    async def load_events(self, run_id: str, after: int = 0, limit: int = 10_000) -> list[EventRecord]:
        statement = (sa.select(tables.events).where(EVENT.run_id == run_id, EVENT.seq > after)
                     .order_by(EVENT.seq).limit(max(limit, 0)))

        async def work(connection: AsyncConnection) -> list[EventRecord]:
            return [rows.event_from(row) for row in await connection.execute(statement)]

        return await self._read(f"load_events of run {run_id!r}", work)

    # -- attempts ----------------------------------------------------------------------------------

    async def record_attempts(self, attempts: Sequence[AttemptRecord]) -> None:
        self._check_open("record_attempts")
        self._pending.extend(map(rows.attempt_values, attempts))
        if len(self._pending) >= ATTEMPT_BATCH:
            await self.flush()

    async def flush(self) -> None:
        if self._pending:
            await self._write(f"writing {len(self._pending)} attempts", _nothing)

    # -- reads -------------------------------------------------------------------------------------

    async def load_run(self, run_id: str) -> StoredRun | None:
        await self.flush()

        async def work(connection: AsyncConnection) -> StoredRun | None:
            run = (await connection.execute(sa.select(tables.runs).where(RUN.run_id == run_id))).first()
            if run is None:
                return None
            task_rows = await connection.execute(
                sa.select(tables.tasks).where(TASK.run_id == run_id).order_by(TASK.started_at, TASK.task_id))
            attempt_rows = await connection.execute(
                sa.select(tables.attempts).where(ATTEMPT.run_id == run_id).order_by(ATTEMPT.id))
            found = [rows.task_from(row) for row in task_rows]
            return StoredRun(rows.run_from(run), {task.task_id: task for task in found},
                             [rows.attempt_from(row) for row in attempt_rows])

        return await self._read(f"load_run of run {run_id!r}", work)

    async def list_runs(self, limit: int = 20, workflow: str | None = None,
                        status: StoredRunStatus | None = None) -> list[RunRecord]:
        statement = sa.select(tables.runs).order_by(RUN.started_at.desc(), RUN.run_id.desc()).limit(max(limit, 0))
        if workflow is not None:
            statement = statement.where(RUN.workflow == workflow)
        if status is not None:
            statement = statement.where(RUN.status == status)

        async def work(connection: AsyncConnection) -> list[RunRecord]:
            return [rows.run_from(row) for row in await connection.execute(statement)]

        return await self._read("list_runs", work)

    async def attempts_since(self, since: float, workflow: str | None = None) -> list[AttemptRecord]:
        await self.flush()
        statement = (sa.select(tables.attempts).where(ATTEMPT.started_at >= since)
                     .order_by(ATTEMPT.started_at, ATTEMPT.id))
        if workflow is not None:
            statement = statement.where(ATTEMPT.workflow == workflow)

        async def work(connection: AsyncConnection) -> list[AttemptRecord]:
            return [rows.attempt_from(row) for row in await connection.execute(statement)]

        return await self._read("attempts_since", work)

    # -- the response cache ------------------------------------------------------------------------

    async def cache_get(self, key: str, now: float) -> CacheEntry | None:
        statement = sa.select(tables.cache_entries).where(
            CACHED.key == key,
            sa.or_(CACHED.expires_at.is_(None), CACHED.expires_at > now))

        async def work(connection: AsyncConnection) -> CacheEntry | None:
            row = (await connection.execute(statement)).first()
            return None if row is None else rows.cache_from(row)

        return await self._read("cache_get", work)

    async def cache_put(self, entry: CacheEntry) -> None:
        await self._write("cache_put", _execute(self._statements.upsert_cache, rows.cache_row(entry)))

    async def cache_clear(self) -> int:
        def work(connection: Connection) -> int:
            return connection.execute(sa.delete(tables.cache_entries)).rowcount

        return await self._write("cache_clear", work)

    # -- chat sessions -----------------------------------------------------------------------------

    async def session_turns(self, session_id: str) -> list[ChatTurn]:
        turns = tables.chat_turns.c
        statement = sa.select(tables.chat_turns).where(turns.session_id == session_id).order_by(turns.seq)

        async def work(connection: AsyncConnection) -> list[ChatTurn]:
            return [rows.turn_from(row) for row in await connection.execute(statement)]

        return await self._read("session_turns", work)

    async def add_turns(self, turns: Sequence[ChatTurn]) -> None:
        # A plain insert: a message number taken already means another process answered the session
        # meanwhile, which must not be overwritten.
        if turns:
            await self._write("add_turns", _execute(sa.insert(tables.chat_turns), [rows.turn_row(t) for t in turns]))

    # -- life --------------------------------------------------------------------------------------

    async def aclose(self) -> None:
        if self._closed:
            return
        try:
            await self.flush()
        finally:
            self._closed = True
            await self._dispose()

    async def _dispose(self) -> None:
        with anyio.CancelScope(shield=True):
            if isinstance(self._writer, Engine):
                await anyio.to_thread.run_sync(self._writer.dispose, limiter=self._thread)
            else:
                await self._writer.dispose()
            if self._reader is not self._writer:
                await self._reader.dispose()

    # -- how every statement runs ------------------------------------------------------------------

    async def _write(self, what: str, work: Write[T]) -> T:
        """Run ``work`` in a write transaction that also writes the waiting attempts; commit."""
        self._check_open(what)
        async with self._write_lock:
            batch, self._pending = self._pending, []
            try:
                with anyio.CancelScope(shield=True):  # begun, a write ends committed or rolled back
                    done = await self._transaction(what, functools.partial(
                        self._in_write, _with_attempts(self._statements, batch, work)))
            except BaseException:
                self._pending[:0] = batch  # nothing recorded is dropped: the next write tries them again
                raise
        return done

    async def _in_write(self, work: Write[T]) -> T:
        writer = self._writer
        if isinstance(writer, Engine):  # SQLite: the whole transaction in the writer's thread
            return await anyio.to_thread.run_sync(_sync_transaction, writer, work, limiter=self._thread)
        return await _in_transaction(writer, lambda connection: connection.run_sync(work))

    async def _read(self, what: str, work: Work[T]) -> T:
        self._check_open(what)
        return await self._transaction(what, functools.partial(_in_transaction, self._reader, work))

    def _check_open(self, what: str) -> None:
        if self._closed:
            raise StoreError(f"run store {self.url}: {what} after the store was closed")

    async def _transaction(self, what: str, attempt: Callable[[], Awaitable[T]]) -> T:
        """``attempt()``, a whole transaction; once more if its connection died."""
        try:
            try:
                return await attempt()
            except DBAPIError as exc:
                if not exc.connection_invalidated:
                    raise
            # The connection died under us (a restarted server): once more on a fresh one.
            return await attempt()
        except FAILURES as exc:
            raise describe_failure(self._target, what, exc, self._options) from None


async def _in_transaction(engine: AsyncEngine, work: Work[T]) -> T:
    async with engine.begin() as connection:
        result = await work(connection)
    return result


def _sync_transaction(engine: Engine, work: Write[T]) -> T:
    with engine.begin() as connection:
        return work(connection)


class _Statements:
    """The writes of rows, built once per dialect (each spells an upsert's ``ON CONFLICT`` its own way);
    a run's own as the driver's SQL, for rows in ``rows.*_COLUMNS`` order."""

    def __init__(self, dialect: Dialect) -> None:
        name = dialect.name
        self.insert_events = _insert_new(name, tables.events)
        self.upsert_cache = _upsert(name, tables.cache_entries)
        self.save_run = _driver_sql(_upsert(name, tables.runs), dialect, rows.RUN_COLUMNS)
        self.save_tasks = _driver_sql(_upsert(name, tables.tasks), dialect, rows.TASK_COLUMNS)
        self.add_attempts = _driver_sql(sa.insert(tables.attempts), dialect, rows.ATTEMPT_COLUMNS)
        end = sa.update(tables.runs).where(RUN.run_id == sa.bindparam("key"))
        self.end_run = _driver_sql(end.values({name: sa.bindparam(name) for name in rows.RUN_END_COLUMNS}),
                                   dialect, (*rows.RUN_END_COLUMNS, "key"))


def _driver_sql(statement: sa.Insert | sa.Update, dialect: Dialect, columns: Sequence[str]) -> str:
    """``statement`` as the driver's SQL, taking its parameters positionally in the order of ``columns``."""
    compiled = statement.compile(dialect=dialect, column_keys=list(columns))
    if list(compiled.positiontup or ()) != list(columns):  # a column added to a table and not to rows.py
        raise AssertionError(f"{compiled.positiontup} are not {columns}: change engine/store/rows.py")
    return compiled.string


def _upsert(dialect: str, table: sa.Table) -> sa.Insert:
    insert = sqlite.insert(table) if dialect == "sqlite" else postgresql.insert(table)
    keys = [column.name for column in table.primary_key.columns]
    changes = {column.name: insert.excluded[column.name] for column in table.columns if column.name not in keys}
    return insert.on_conflict_do_update(index_elements=keys, set_=changes)


def _insert_new(dialect: str, table: sa.Table) -> sa.Insert:
    """An insert that skips rows whose key is stored already (a retried write repeats nothing)."""
    insert = sqlite.insert(table) if dialect == "sqlite" else postgresql.insert(table)
    return insert.on_conflict_do_nothing(index_elements=[column.name for column in table.primary_key.columns])


def _driver(sql: str, values: list[tuple[Any, ...]]) -> Write[None]:
    def work(connection: Connection) -> None:
        connection.exec_driver_sql(sql, values)

    return work


def _execute(statement: sa.Executable, values: dict[str, Any] | list[dict[str, Any]] | None = None) -> Write[None]:
    def work(connection: Connection) -> None:
        connection.execute(statement, values)

    return work


def _with_attempts(statements: _Statements, batch: list[tuple[Any, ...]], work: Write[T]) -> Write[T]:
    if not batch:
        return work

    def both(connection: Connection) -> T:
        connection.exec_driver_sql(statements.add_attempts, batch)
        return work(connection)

    return both


def _nothing(_connection: Connection) -> None:
    return None

