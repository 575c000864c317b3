"""The run store: runs, task results, attempts, events and cached answers, kept where a URL says.

``open_store(url)``: ``sqlite+aiosqlite:///path`` (the default file is under the
user's data directory), ``postgresql+asyncpg://...``, or ``memory:``.
"""

from engine.errors import StoreError
from engine.store.base import RunStore
from engine.store.memory import MemoryStore
from engine.store.open import default_path, open_store
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

__all__ = ["AttemptRecord", "CacheEntry", "ChatTurn", "EventRecord", "MemoryStore", "RunRecord", "RunStore",
           "StoreError", "StoredRun", "StoredRunStatus", "TaskRecord", "default_path", "open_store"]
