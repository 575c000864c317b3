"""The run store's schema, in SQLAlchemy Core: the tables the migrations create, one per record.

A change here needs a new revision in ``migrations/versions`` (tests/test_store.py compares the
migrated database with these tables, so a forgotten one fails). Values that users shape (inputs,
outputs, documents, cached answers) are JSON columns; times are ``time.time()`` floats; token
counts are 64-bit. Indexes serve the store's queries: ``list_runs`` (newest first, by workflow or
status), ``attempts_since`` (by start, by workflow), ``prune`` (by end) and the cache key;
``load_events`` reads by the events' primary key.
"""

from __future__ import annotations

import sqlalchemy as sa

# Named constraints and indexes, so a later migration can drop or alter them by name on every database.
NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = sa.MetaData(naming_convention=NAMING)

runs = sa.Table(
    "runs", metadata,
    sa.Column("run_id", sa.String(), primary_key=True),
    sa.Column("workflow", sa.String(), nullable=False),
    sa.Column("document", sa.JSON, nullable=False),
    sa.Column("inputs", sa.JSON, nullable=False),
    sa.Column("started_at", sa.Float, nullable=False),
    sa.Column("source", sa.Text),
    sa.Column("source_digest", sa.String()),
    sa.Column("parent_run_id", sa.String()),
    sa.Column("status", sa.String(), nullable=False),
    sa.Column("ended_at", sa.Float),
    sa.Column("outputs", sa.JSON),
    sa.Column("error", sa.Text),
    sa.Column("input_tokens", sa.BigInteger, nullable=False),
    sa.Column("output_tokens", sa.BigInteger, nullable=False),
    sa.Column("cost_usd", sa.Float, nullable=False),
    sa.Column("heartbeat_at", sa.Float),
    sa.Column("owner", sa.String()),
    sa.Index(None, "started_at"),
    sa.Index(None, "workflow", "started_at"),
    sa.Index(None, "status", "started_at"),
    sa.Index(None, "ended_at"),
)

tasks = sa.Table(
    "tasks", metadata,
    sa.Column("run_id", sa.String(), sa.ForeignKey("runs.run_id", ondelete="CASCADE"), primary_key=True),
    sa.Column("task_id", sa.String(), primary_key=True),
    sa.Column("status", sa.String(), nullable=False),
    sa.Column("output", sa.JSON),
    sa.Column("model", sa.String()),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("input_tokens", sa.BigInteger, nullable=False),
    sa.Column("output_tokens", sa.BigInteger, nullable=False),
    sa.Column("cost_usd", sa.Float, nullable=False),
    sa.Column("started_at", sa.Float),
    sa.Column("ended_at", sa.Float),
    sa.Column("error", sa.Text),
    sa.Column("error_kind", sa.String()),
)

# A run's events, numbered from 1, for a late subscriber's replay. The key makes a retried write
# of the same event a no-op (the store inserts with ON CONFLICT DO NOTHING).
events = sa.Table(
    "events", metadata,
    sa.Column("run_id", sa.String(), sa.ForeignKey("runs.run_id", ondelete="CASCADE"), primary_key=True),
    sa.Column("seq", sa.Integer, primary_key=True),
    sa.Column("type", sa.String(), nullable=False),
    sa.Column("at", sa.Float, nullable=False),
    sa.Column("data", sa.JSON, nullable=False),
)

# One row per model call, in the order they were recorded. Not unique on (run, task, item,
# attempt): concurrent items of a for_each and hedged calls may share that key today, and stats
# must count each call; the key's index finds a repeat. No foreign key to runs: attempts are
# stats, written in batches, and a batch must not fail on a call made outside a recorded run.
attempts = sa.Table(
    "attempts", metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("run_id", sa.String(), nullable=False),
    sa.Column("task_id", sa.String(), nullable=False),
    sa.Column("item", sa.Integer),
    sa.Column("attempt", sa.Integer, nullable=False),
    sa.Column("model", sa.String(), nullable=False),
    sa.Column("workflow", sa.String(), nullable=False),
    sa.Column("started_at", sa.Float, nullable=False),
    sa.Column("latency_s", sa.Float, nullable=False),
    sa.Column("outcome", sa.String(), nullable=False),
    sa.Column("input_tokens", sa.BigInteger, nullable=False),
    sa.Column("output_tokens", sa.BigInteger, nullable=False),
    sa.Column("cost_usd", sa.Float, nullable=False),
    sa.Column("cached", sa.Boolean, nullable=False),
    sa.Index(None, "run_id", "task_id", "item", "attempt"),
    sa.Index(None, "started_at"),
    sa.Index(None, "workflow", "started_at"),
)

chat_turns = sa.Table(
    "chat_turns", metadata,
    sa.Column("session_id", sa.String(), primary_key=True),
    sa.Column("seq", sa.Integer, primary_key=True),
    sa.Column("role", sa.String(), nullable=False),
    sa.Column("content", sa.Text, nullable=False),
    sa.Column("at", sa.Float, nullable=False),
)

cache_entries = sa.Table(
    "cache_entries", metadata,
    sa.Column("key", sa.String(), primary_key=True),
    sa.Column("model", sa.String(), nullable=False),
    sa.Column("response", sa.JSON, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("expires_at", sa.Float),
    sa.Column("cost_usd", sa.Float, nullable=False),
)
