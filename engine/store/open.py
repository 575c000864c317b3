"""``open_store(url)``: the run store a URL names, ready to use (connected, schema migrated).

- ``None`` or ``""``: SQLite in the user's data folder (``default_path``), made if missing;
- ``memory:``: ``MemoryStore``, nothing kept after the process;
- anything else: a database URL for ``SqlStore`` (SQLite or PostgreSQL).
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path

import anyio

from engine.store.base import RunStore
from engine.store.memory import MemoryStore

MEMORY_URL = "memory:"


def default_path() -> Path:
    """``$XDG_DATA_HOME/orchestrion/runs.db``, or ``~/.local/share/orchestrion/runs.db``."""
    data_home = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data_home) / "orchestrion" / "runs.db"


def default_url() -> str:
    return f"sqlite+aiosqlite:///{default_path()}"


async def open_store(url: str | None = None) -> RunStore:
    """The store at ``url`` (see the module's docstring); raises ``StoreError`` if it cannot be opened."""
    if url == MEMORY_URL:
        return MemoryStore()
    # SQLAlchemy and Alembic take a while to import: not on the event loop, and only when needed.
    await anyio.to_thread.run_sync(importlib.import_module, "engine.store.sql")
    from engine.store.sql import SqlStore

    return await SqlStore.open(url or default_url())
