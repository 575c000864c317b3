"""Bring a database's schema to this version's, with Alembic, when a store opens.

The revisions live in ``migrations/versions`` (shipped in the package). ``upgrade`` runs inside
the store's own write transaction, on its sync connection (in SQLite's writer thread, or through
``AsyncConnection.run_sync`` on PostgreSQL): on SQLite that transaction holds the write lock
(``BEGIN IMMEDIATE``), on PostgreSQL an advisory lock, so processes opening one new database at
once migrate it once. The version is kept in its
own table, apart from any Alembic history of an application sharing the database.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy.engine import Connection

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
VERSION_TABLE = "orchestrion_schema_version"
_PG_LOCK_KEY = 0x6F726368  # "orch": one advisory lock for every Orchestrion migration


def alembic_config(connection: Connection) -> Config:
    """Alembic's configuration without an ini file: the shipped scripts, the given connection."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS).replace("%", "%%"))
    config.attributes["connection"] = connection
    return config


def upgrade(connection: Connection) -> None:
    """Apply every revision the database lacks (none, most of the time)."""
    if connection.dialect.name == "postgresql":
        connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_PG_LOCK_KEY})")
    command.upgrade(alembic_config(connection), "head")
