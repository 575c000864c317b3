"""From a store URL to SQLAlchemy engines set up for the run store, and failures to words.

SQLite gets two engines on one file: a writer with one connection, whose transactions begin
``IMMEDIATE`` (they take the write lock at once, so a transaction never fails half-way on a lock
another process took after it began), and readers on others. WAL lets them read while it writes;
``busy_timeout`` makes another process's writer wait, not fail. The writer is a sync engine
(pysqlite): the store runs each of its transactions whole in a worker thread, one hop there and
back, where the aiosqlite adapter hopped once per cursor, statement, close, commit and reset (eight
hops: a one-row write took 0.9 ms, now 0.2). The readers are async (aiosqlite). PostgreSQL gets one
pooled async engine that checks a connection before it lends it (``pool_pre_ping``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, event
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, InvalidRequestError, NoSuchModuleError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from engine.errors import StoreError
from engine.store.rows import dumps

EXAMPLES = "sqlite+aiosqlite:///path/to/runs.db, postgresql+asyncpg://user@host:5432/db or memory:"

# A URL without a driver gets the async one (the store only speaks asyncio).
ASYNC_DRIVERS = {"sqlite": "sqlite+aiosqlite", "postgresql": "postgresql+asyncpg", "postgres": "postgresql+asyncpg"}

SQLITE_READERS = 4  # connections for reads beside the one writer


@dataclass(frozen=True, slots=True)
class StoreOptions:
    """How long SQLite waits on another process's write lock; PostgreSQL's pool and timeouts.

    The pool holds up to ``pool_size + max_overflow`` connections per process (15): with
    PostgreSQL's default ``max_connections`` of 100, six busy processes share one server.
    """

    busy_timeout: float = 30.0
    pool_size: int = 10
    max_overflow: int = 5
    connect_timeout: float = 10.0
    command_timeout: float = 120.0  # a statement's limit (a large prune is the slowest)


@dataclass(frozen=True, slots=True)
class Target:
    """A parsed store URL, with the async driver filled in."""

    url: URL

    @property
    def dialect(self) -> str:
        return self.url.get_backend_name()

    @property
    def shown(self) -> str:
        """The URL as errors show it: never with its password."""
        return self.url.render_as_string(hide_password=True)


def parse_url(text: str) -> Target:
    try:
        url = make_url(text)
    except ArgumentError:
        raise StoreError(f"{_hide_password(text)!r} is not a store URL; examples: {EXAMPLES}") from None
    url = url.set(drivername=ASYNC_DRIVERS.get(url.drivername, url.drivername))
    backend = url.get_backend_name()
    if backend not in ("sqlite", "postgresql"):
        raise StoreError(f"the run store keeps runs in SQLite or PostgreSQL, not {backend!r} ({_hide_password(text)})")
    if backend == "sqlite":
        if url.database in (None, "", ":memory:") or url.query.get("mode") == "memory":
            raise StoreError("an in-memory SQLite store would be one database per connection: use the URL 'memory:'")
        url = url.set(database=str(Path(url.database or "").expanduser().absolute()))
    return Target(url)


def build_engines(target: Target, options: StoreOptions) -> tuple[Engine | AsyncEngine, AsyncEngine]:
    """The writer and the reader engines: for SQLite a sync writer (its transactions run in a thread)
    and async readers, for PostgreSQL one async engine. Blocking: call in a thread."""
    try:
        if target.dialect == "sqlite":
            return _sqlite_engines(target, options)
        engine = _postgres_engine(target, options)
        return engine, engine
    except ImportError as exc:
        extra = " (pip install 'orchestrion[postgres]')" if target.dialect == "postgresql" else ""
        raise StoreError(f"run store {target.shown}: its driver is not installed{extra}: {exc}") from None
    except (NoSuchModuleError, InvalidRequestError) as exc:
        raise StoreError(f"run store {target.shown}: {exc}; examples: {EXAMPLES}") from None
    except OSError as exc:
        raise StoreError(f"run store {target.shown}: cannot create its folder: {exc}") from None




def _postgres_engine(target: Target, options: StoreOptions) -> AsyncEngine:
    return create_async_engine(
        target.url, pool_pre_ping=True, pool_size=options.pool_size, max_overflow=options.max_overflow,
        pool_recycle=1800, json_serializer=dumps,
        connect_args={"timeout": options.connect_timeout, "command_timeout": options.command_timeout,
                      "server_settings": {"application_name": "orchestrion"}})


def _sqlite_engines(target: Target, options: StoreOptions) -> tuple[Engine, AsyncEngine]:
    Path(target.url.database or "").parent.mkdir(parents=True, exist_ok=True)
    connect_args = {"timeout": options.busy_timeout}
    # Its one connection serves whichever worker thread runs the transaction: the store's write lock
    # lends it to one at a time, hence no same-thread check.
    writer = create_engine(target.url.set(drivername="sqlite+pysqlite"), pool_size=1, max_overflow=0,
                           connect_args={**connect_args, "check_same_thread": False}, json_serializer=dumps)
    reader = create_async_engine(target.url, pool_size=SQLITE_READERS, max_overflow=0, connect_args=connect_args,
                                 json_serializer=dumps)
    _watch_file(writer, Path(target.url.database or ""))  # first: its check runs before BEGIN takes the lock
    _sqlite_setup(writer, options.busy_timeout, begin="BEGIN IMMEDIATE")
    _sqlite_setup(reader.sync_engine, options.busy_timeout, begin="BEGIN")
    return writer, reader


def _sqlite_setup(engine: Engine, busy_timeout: float, begin: str) -> None:
    """Every connection: wait on locks, WAL, fsync at checkpoints only, foreign keys; our own BEGIN
    (the sqlite3 module's implicit transactions would not cover DDL, nor take the lock early)."""
    pragmas = (f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}", "PRAGMA journal_mode = WAL",
               "PRAGMA synchronous = NORMAL", "PRAGMA foreign_keys = ON")

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        for pragma in pragmas:
            cursor.execute(pragma)
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        connection.exec_driver_sql(begin)


class DatabaseFileGoneError(OSError):
    """The SQLite file the writer has open was deleted or replaced."""


def _watch_file(engine: Engine, path: Path) -> None:
    """Refuse to write once the file is gone: in WAL mode SQLite goes on writing into a deleted
    file, and every result written after that would vanish when the store closes."""

    @event.listens_for(engine, "connect")
    def _on_connect(_dbapi_connection: Any, record: Any) -> None:
        record.info["file"] = _file_identity(path)

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        if _file_identity(path) != connection.info.get("file"):
            raise DatabaseFileGoneError(f"the database file {path} was deleted or replaced while the store had it open")


def _file_identity(path: Path) -> tuple[int, int] | None:
    try:
        found = path.stat()
    except FileNotFoundError:
        return None
    return found.st_dev, found.st_ino


def describe_failure(target: Target, what: str, exc: BaseException, options: StoreOptions) -> StoreError:
    """A database failure as one line: which store (no password), what failed, the driver's reason."""
    cause = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
    reason = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
    if isinstance(cause, OSError):
        reason = f"cannot reach the database: {reason}"
    if target.url.password:
        reason = reason.replace(str(target.url.password), "***")
    if "database is locked" in reason:
        reason = (f"another connection held the database file's write lock for more than "
                  f"{options.busy_timeout:g} s (busy_timeout)")
    return StoreError(f"run store {target.shown}: {what} failed: {reason[:500]}")


def _hide_password(text: str) -> str:
    return re.sub(r"(//[^/:@]*:)[^/@]*@", r"\1***@", text)
