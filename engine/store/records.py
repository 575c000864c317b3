"""What the run store keeps, as plain values: the rows of runs, task results, attempts, events and cache entries.

The store sits below the runtime (which converts its own results to these) and
below the call pipeline (whose cache stage reads and writes cache entries), so
these records import nothing of either.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

StoredRunStatus = Literal["running", "succeeded", "failed", "cancelled", "interrupted"]


@dataclass(frozen=True, slots=True)
class RunRecord:
    """A run as it starts: recorded before its first task, so an accepted run is never lost.

    ``document`` is the workflow as the compiler read it (JSON-ready), so a resume recompiles
    exactly what ran; ``source`` and ``source_digest`` name the file it came from, if any, and
    its SHA-256 then, so a resume can tell that the file changed since.
    """

    run_id: str
    workflow: str
    document: dict[str, Any]
    inputs: dict[str, Any]
    started_at: float
    source: str | None = None
    source_digest: str | None = None
    parent_run_id: str | None = None  # a nested run's caller
    status: StoredRunStatus = "running"
    ended_at: float | None = None
    outputs: dict[str, Any] | None = None
    error: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    heartbeat_at: float | None = None  # the running process's last sign of life
    owner: str | None = None  # host and process id of the process running it


# The two records a run makes one of per task and per model call are not frozen: a frozen dataclass
# sets each field through object.__setattr__, 0.96 us a record against 0.17 (2,000 records, 1.6 ms, in a
# 1,000-task run). Nothing changes them once built: they are values handed to the store.


@dataclass(slots=True)
class TaskRecord:
    """A node's result, committed before any node that reads it starts (a checkpoint)."""

    run_id: str
    task_id: str  # the plan's node id: `draft@2` for round 2 of a repeated stage
    status: str  # succeeded, failed, skipped, cancelled
    output: Any = None
    model: str | None = None
    attempts: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    started_at: float | None = None
    ended_at: float | None = None
    error: str | None = None
    error_kind: str | None = None


@dataclass(slots=True)
class AttemptRecord:
    """One model call: by run, task, item and attempt, so a repeat is recognised and stats are exact."""

    run_id: str
    task_id: str
    attempt: int
    model: str
    workflow: str
    started_at: float
    latency_s: float
    outcome: str  # "ok", or the error kind
    item: int | None = None  # the for_each item, if any
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    cached: bool = False


@dataclass(frozen=True, slots=True)
class EventRecord:
    """One event of a run, numbered from 1 in the order it was emitted: kept so a late subscriber
    can be replayed what it missed (``data`` is the event as ``Event.to_dict`` gives it)."""

    run_id: str
    seq: int
    type: str  # the event's type, e.g. "task_started"
    at: float
    data: dict[str, Any]


@dataclass(frozen=True, slots=True)
class CacheEntry:
    """A model's answer to one exact request (see ``resilience.cache`` for the key)."""

    key: str
    model: str
    response: dict[str, Any]  # ModelResponse as plain values
    created_at: float
    expires_at: float | None = None
    cost_usd: float = 0.0  # what the call cost: a hit saves it


@dataclass(frozen=True, slots=True)
class ChatTurn:
    """One message of a chat session, numbered from 0: a session is continued from any process."""

    session_id: str
    seq: int
    role: str  # "user" or "assistant"
    content: str
    at: float


@dataclass(frozen=True, slots=True)
class StoredRun:
    """A run and its task results, as read back (for resume and ``runs show``)."""

    run: RunRecord
    tasks: dict[str, TaskRecord] = field(default_factory=dict)
    attempts: list[AttemptRecord] = field(default_factory=list)
