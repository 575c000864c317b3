"""Records to table rows and back, and the JSON rule for the values users shape.

Columns are named as the records' fields, so a row is a record's fields (attempts add their
``id``, the order they were recorded in). The rows a run writes by the thousand (its results,
its model calls, its own row) are tuples for the driver's ``executemany``, in the order of the
``*_COLUMNS`` names, with their JSON encoded here once; the others are dicts for SQLAlchemy.
Every JSON value is checked before it is written: strict JSON (no NaN or Infinity, which
PostgreSQL refuses and SQLite would keep), and at most ``MAX_VALUE_BYTES`` encoded, so a runaway
output fails its task loudly instead of bloating every later read of the run.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from engine.errors import StoreError
from engine.store.records import AttemptRecord, CacheEntry, ChatTurn, EventRecord, RunRecord, TaskRecord

if TYPE_CHECKING:  # the JSON check needs no SQLAlchemy: a store without a database may use it
    from sqlalchemy.engine import Row

# The largest JSON value the store writes (a task's output, a run's inputs, outputs or document,
# an event, a cached answer), UTF-8 encoded. Temporal refuses payloads at 2 MB too; larger results belong
# in a file whose path the task returns.
MAX_VALUE_BYTES = 2 * 1024 * 1024


# The store's JSON encoding (also the engines' ``json_serializer``): compact, strict, UTF-8. One encoder
# for every value: json.dumps with options builds a new one each call (9x slower for a short value).
dumps: Callable[[Any], str] = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode


def encoded(value: Any, what: Callable[[], str]) -> str:
    """``value`` as JSON text, once it is known to be JSON within ``MAX_VALUE_BYTES``; ``what``
    names it in the error."""
    try:
        text = dumps(value)
        size = len(text.encode("utf-8"))  # a lone surrogate fails here (UnicodeEncodeError is a ValueError)
    except (TypeError, ValueError, RecursionError) as exc:
        raise StoreError(f"{what()} is not JSON, so it cannot be stored: {exc}") from None
    if size > MAX_VALUE_BYTES:
        raise StoreError(f"{what()} is {size / 1e6:.1f} MB of JSON, above the store's limit of "
                         f"{MAX_VALUE_BYTES / 1e6:.1f} MB (engine.store.rows.MAX_VALUE_BYTES): "
                         "keep large results in a file and return its path")
    return text


def checked(value: Any, what: str) -> Any:
    """``value`` itself, once it is known to be JSON within ``MAX_VALUE_BYTES``."""
    encoded(value, lambda: what)
    return value


def _fields(record: Any) -> dict[str, Any]:
    names = _NAMES.get(type(record))
    if names is None:  # dataclasses.fields() costs tens of microseconds a call: once per type, not per row
        names = _NAMES[type(record)] = tuple(field.name for field in dataclasses.fields(record))
    return {name: getattr(record, name) for name in names}


_NAMES: dict[type, tuple[str, ...]] = {}


# -- the rows a run writes, for the driver (tables.py's column order; sql.py checks it) ----------

RUN_COLUMNS = ("run_id", "workflow", "document", "inputs", "started_at", "source", "source_digest",
               "parent_run_id", "status", "ended_at", "outputs", "error", "input_tokens", "output_tokens",
               "cost_usd", "heartbeat_at", "owner")
# What a run's row changes after it is created: how it ended, or running again once resumed.
RUN_END_COLUMNS = ("status", "ended_at", "outputs", "error", "input_tokens", "output_tokens", "cost_usd",
                   "heartbeat_at", "owner")
TASK_COLUMNS = ("run_id", "task_id", "status", "output", "model", "attempts", "input_tokens", "output_tokens",
                "cost_usd", "started_at", "ended_at", "error", "error_kind")
ATTEMPT_COLUMNS = ("run_id", "task_id", "item", "attempt", "model", "workflow", "started_at", "latency_s",
                   "outcome", "input_tokens", "output_tokens", "cost_usd", "cached")


def run_values(run: RunRecord, document: str | None = None) -> tuple[Any, ...]:
    """``run``'s row in ``RUN_COLUMNS`` order; ``document``: its document, encoded already."""
    where = f"run {run.run_id!r}"
    if document is None:
        document = encoded(run.document, lambda: f"the workflow document of {where}")
    return (run.run_id, run.workflow, document, encoded(run.inputs, lambda: f"the inputs of {where}"),
            run.started_at, run.source, run.source_digest, run.parent_run_id, *run_end_values(run)[:-1])


def run_end_values(run: RunRecord) -> tuple[Any, ...]:
    """``run``'s ``RUN_END_COLUMNS``, then its id (the update's key)."""
    outputs = encoded(run.outputs, lambda: f"the outputs of run {run.run_id!r}")
    return (run.status, run.ended_at, outputs, run.error, run.input_tokens, run.output_tokens, run.cost_usd,
            run.heartbeat_at, run.owner, run.run_id)


def task_values(task: TaskRecord) -> tuple[Any, ...]:
    """``task``'s row in ``TASK_COLUMNS`` order."""
    output = encoded(task.output, lambda: f"the output of task {task.task_id!r} of run {task.run_id!r}")
    return (task.run_id, task.task_id, task.status, output, task.model, task.attempts, task.input_tokens,
            task.output_tokens, task.cost_usd, task.started_at, task.ended_at, task.error, task.error_kind)


def attempt_values(attempt: AttemptRecord) -> tuple[Any, ...]:
    """``attempt``'s row in ``ATTEMPT_COLUMNS`` order."""
    return (attempt.run_id, attempt.task_id, attempt.item, attempt.attempt, attempt.model, attempt.workflow,
            attempt.started_at, attempt.latency_s, attempt.outcome, attempt.input_tokens, attempt.output_tokens,
            attempt.cost_usd, attempt.cached)


# -- the other rows, for SQLAlchemy ---------------------------------------------------------------


def event_row(event: EventRecord) -> dict[str, Any]:
    row = _fields(event)
    row["data"] = checked(event.data, f"event {event.seq} ({event.type}) of run {event.run_id!r}")
    return row


def cache_row(entry: CacheEntry) -> dict[str, Any]:
    row = _fields(entry)
    row["response"] = checked(entry.response, f"the cached answer {entry.key!r}")
    return row


def turn_row(turn: ChatTurn) -> dict[str, Any]:
    row = _fields(turn)
    checked(turn.content, f"message {turn.seq} of chat session {turn.session_id!r}")
    return row


def turn_from(row: Row[Any]) -> ChatTurn:
    return ChatTurn(**row._mapping)


def run_from(row: Row[Any]) -> RunRecord:
    return RunRecord(**row._mapping)


def task_from(row: Row[Any]) -> TaskRecord:
    return TaskRecord(**row._mapping)


def attempt_from(row: Row[Any]) -> AttemptRecord:
    values = dict(row._mapping)
    del values["id"]
    return AttemptRecord(**values)


def event_from(row: Row[Any]) -> EventRecord:
    return EventRecord(**row._mapping)


def cache_from(row: Row[Any]) -> CacheEntry:
    return CacheEntry(**row._mapping)
