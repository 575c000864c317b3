"""Records to table rows and back, and the JSON rule for the values users shape.

Columns are named as the records' fields, so a row is a record's fields (attempts add their
``id``, the order they were recorded in).
Every JSON value is checked before it is written: strict JSON (no NaN or Infinity, which
PostgreSQL refuses and SQLite would keep), and at most ``MAX_VALUE_BYTES`` encoded, so a runaway
output fails its task loudly instead of bloating every later read of the run.
"""

from __future__ import annotations

import dataclasses
import json
from typing import TYPE_CHECKING, Any

from engine.errors import StoreError
from engine.store.records import AttemptRecord, CacheEntry, ChatTurn, EventRecord, RunRecord, TaskRecord

if TYPE_CHECKING:  # the JSON check needs no SQLAlchemy: a store without a database may use it
    from sqlalchemy.engine import Row

# The largest JSON value the store writes (a task's output, a run's inputs, outputs or document,
# an event, a cached answer), UTF-8 encoded. Temporal refuses payloads at 2 MB too; larger results belong
# in a file whose path the task returns.
MAX_VALUE_BYTES = 2 * 1024 * 1024


def dumps(value: Any) -> str:
    """The store's JSON encoding (also the engines' ``json_serializer``): compact, strict, UTF-8."""
    return json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def checked(value: Any, what: str) -> Any:
    """``value`` itself, once it is known to be JSON within ``MAX_VALUE_BYTES``."""
    try:
        size = len(dumps(value).encode("utf-8"))
    except (TypeError, ValueError, RecursionError) as exc:
        raise StoreError(f"{what} is not JSON, so it cannot be stored: {exc}") from None
    if size > MAX_VALUE_BYTES:
        raise StoreError(f"{what} is {size / 1e6:.1f} MB of JSON, above the store's limit of "
                         f"{MAX_VALUE_BYTES / 1e6:.1f} MB (engine.store.rows.MAX_VALUE_BYTES): "
                         "keep large results in a file and return its path")
    return value


def _fields(record: Any) -> dict[str, Any]:
    names = _NAMES.get(type(record))
    if names is None:  # dataclasses.fields() costs tens of microseconds a call: once per type, not per row
        names = _NAMES[type(record)] = tuple(field.name for field in dataclasses.fields(record))
    return {name: getattr(record, name) for name in names}


_NAMES: dict[type, tuple[str, ...]] = {}


def run_row(run: RunRecord) -> dict[str, Any]:
    row = _fields(run)
    where = f"run {run.run_id!r}"
    row["document"] = checked(run.document, f"the workflow document of {where}")
    row["inputs"] = checked(run.inputs, f"the inputs of {where}")
    row["outputs"] = checked(run.outputs, f"the outputs of {where}")
    return row


def task_row(task: TaskRecord) -> dict[str, Any]:
    row = _fields(task)
    row["output"] = checked(task.output, f"the output of task {task.task_id!r} of run {task.run_id!r}")
    return row


def attempt_row(attempt: AttemptRecord) -> dict[str, Any]:
    return _fields(attempt)


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
