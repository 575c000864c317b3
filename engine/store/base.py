"""The run store's interface: what the engine asks of a store, whatever keeps it.

``engine.store.sql`` keeps it in a database through SQLAlchemy (SQLite by
default, PostgreSQL to share it), ``engine.store.memory`` in the process (for
tests, and for embedded users who want a cache and stats but no file).

Ordering and durability are the store's contract: when ``save_task`` returns,
the result is committed (a resume will see it); ``create_run`` commits before
the run's first task starts; ``record_events`` commits too, so a subscriber that
reads a run's events next finds them. Writes that nothing waits for (attempts)
may be batched, and are flushed by ``flush`` and ``aclose``. A failed write
raises ``StoreError``: the run fails loudly, it never drops a result silently.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

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


class RunStore(Protocol):
    async def create_run(self, run: RunRecord) -> None:
        """Record a run before it starts (committed on return)."""

    async def save_task(self, task: TaskRecord) -> None:
        """Record a node's result (committed on return; a later save of the same node replaces it)."""

    async def save_tasks(self, tasks: Sequence[TaskRecord]) -> None:
        """``save_task`` for several, in one transaction (the results of one scheduler tick)."""

    async def finish_run(self, run: RunRecord, *, tasks: Sequence[TaskRecord] = (),
                         attempts: Sequence[AttemptRecord] = ()) -> None:
        """Update a recorded run's row to ``run``: how it ended (status, outputs, error, usage,
        ``ended_at``), or ``running`` again when it is resumed; with the run's last results
        (``save_tasks``) and model calls, in the same transaction (committed on return)."""

    async def heartbeat(self, run_ids: Sequence[str], now: float) -> None:
        """Mark running runs as alive (a sweep marks those whose heartbeat stopped as interrupted)."""

    async def mark_interrupted(self, older_than: float) -> list[str]:
        """Runs still `running` whose heartbeat is older than ``older_than``: marked `interrupted`."""

    async def record_attempts(self, attempts: Sequence[AttemptRecord]) -> None:
        """Model calls, for stats (may be batched)."""

    async def record_events(self, events: Sequence[EventRecord]) -> None:
        """Append events of runs (committed on return); a (run_id, seq) already stored is ignored,
        so a retried write does not duplicate."""

    async def load_events(self, run_id: str, after: int = 0, limit: int = 10_000) -> list[EventRecord]:
        """A run's events with ``seq`` above ``after``, by ``seq``, at most ``limit`` (none for an
        unknown run): what a late subscriber missed."""

    async def load_run(self, run_id: str) -> StoredRun | None:
        """A run with its task results and attempts; None if unknown."""

    async def list_runs(self, limit: int = 20, workflow: str | None = None,
                        status: StoredRunStatus | None = None) -> list[RunRecord]:
        """The most recent runs first."""

    async def attempts_since(self, since: float, workflow: str | None = None) -> list[AttemptRecord]:
        """Model calls started at or after ``since`` (for stats)."""

    async def prune(self, older_than: float) -> int:
        """Delete finished runs that ended before ``older_than``, with their tasks, attempts and events."""

    async def cache_get(self, key: str, now: float) -> CacheEntry | None:
        """A cached answer, if present and not expired."""

    async def cache_put(self, entry: CacheEntry) -> None:
        """Keep an answer (replaces an entry with the same key)."""

    async def cache_clear(self) -> int:
        """Delete every cached answer; how many there were."""

    async def session_turns(self, session_id: str) -> list[ChatTurn]:
        """A chat session's messages, oldest first (none for an unknown session)."""

    async def add_turns(self, turns: Sequence[ChatTurn]) -> None:
        """Append messages to sessions (committed on return; a ``seq`` already taken is a StoreError:
        two processes answered one session at once)."""

    async def flush(self) -> None:
        """Commit what is batched."""

    async def aclose(self) -> None:
        """Flush, and release connections."""
