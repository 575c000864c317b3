"""Alembic's entry point: run the revisions on the connection that ``engine.store.migrate`` passes.

A new revision: change ``engine/store/tables.py``, then write ``versions/NNNN_what.py`` by hand or
generate it from a database at the previous head::

    from alembic import command
    command.revision(alembic_config(connection), message="what", autogenerate=True, rev_id="0002")

tests/test_store.py fails while the migrated schema and tables.py differ.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

from engine.store.migrate import VERSION_TABLE
from engine.store.tables import metadata


def run() -> None:
    connection = context.config.attributes.get("connection")
    if not isinstance(connection, Connection):
        raise RuntimeError("the run store's migrations run from engine.store.migrate, on a connection it gives")
    # Batch mode lets a later revision alter SQLite tables (it copies them, as SQLite has no ALTER COLUMN).
    context.configure(connection=connection, target_metadata=metadata, version_table=VERSION_TABLE,
                      render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


run()
