"""A top-level run's journal in the run store: recorded before it starts, checkpointed as it goes.

The scheduler awaits ``checkpoint`` after a node settles and before it releases
the nodes that read it, so a result is committed before anything that depends
on it starts: a resume can trust every stored result (SERVICE.md: "a result,
then what depends on it"). The results of one scheduler tick share one
transaction: the first node to arrive writes, after one checkpoint of the event
loop, for every node that joined it meanwhile. A write that fails raises
StoreError in every node that waited for it: the run fails loudly. The tick's
model calls are handed to the store once its results are committed and their
readers released (nothing but the run's end waits for a call record; ``finish``
commits the last). A tick that no node reads, once no node is left to settle
(``ending``), is committed with the run's end and its last calls, in one
transaction: the rest of the run is rendering its outputs. Writes are shielded
from cancellation, so a cancelled run leaves whole rows behind.
"""

from __future__ import annotations

import dataclasses
import operator
import os
import socket
import time
from collections.abc import Callable, Mapping
from typing import Any

import anyio
import anyio.lowlevel

from engine.errors import OrchestrionError, StoreError
from engine.model.client import ModelResponse
from engine.resilience.call import Call
from engine.runtime.results import RunResult, TaskResult
from engine.store import AttemptRecord, RunRecord, RunStore, TaskRecord

ITEM_STATUS = "item"  # the status of a stored `for_each` item's output, beside the nodes' own results
HEARTBEAT_SECONDS = 15.0  # a run whose heartbeat is 4 beats old is taken for dead (``STALE_SECONDS``)
STALE_SECONDS = 4 * HEARTBEAT_SECONDS


class _Batch:
    __slots__ = ("done", "error", "read", "records", "writing")

    def __init__(self) -> None:
        self.records: list[TaskRecord] = []
        self.read = False  # a node waits for the commit: one of these results is read
        self.writing = False
        self.done = anyio.Event()
        self.error: BaseException | None = None


class Journal:
    """What one top-level run writes to the store."""

    def __init__(self, store: RunStore, record: RunRecord) -> None:
        self.store = store
        self.record = record
        self._batch = _Batch()
        self._attempts: list[AttemptRecord] = []  # model calls not yet written: they go with the next batch
        self._last: list[TaskRecord] = []  # results no node reads, left for the run's end
        self.ending: Callable[[], bool] = _never  # the scheduler's: no node is left to settle

    def attempt(self, call: Call, model: str, outcome: str, response: ModelResponse | None, cost: float, *,
                cached: bool = False) -> None:
        """A model call of this run (nested runs included) ended: kept for stats (``AttemptSink``)."""
        usage = response.usage if response is not None and not cached else None  # a hit used no tokens
        record = self.record  # positional, in the record's field order: a quarter cheaper than keywords
        self._attempts.append(AttemptRecord(
            record.run_id, call.task_id, call.tally.attempts, model, record.workflow, call.attempt_started,
            time.time() - call.attempt_started, outcome, None, usage.input_tokens if usage else 0,
            usage.output_tokens if usage else 0, cost, cached))

    async def _write_attempts(self) -> None:
        if self._attempts:
            attempts, self._attempts = self._attempts, []
            await _written(self.store.record_attempts(attempts), "record model calls")

    @property
    def run_id(self) -> str:
        return self.record.run_id

    async def start(self, *, resumed: bool = False) -> None:
        """Record the run (or mark a resumed one running again) before its first task."""
        record = dataclasses.replace(self.record, status="running", heartbeat_at=time.time(), owner=_owner(),
                                     ended_at=None, error=None)
        with anyio.CancelScope(shield=True):
            await _written(self.store.finish_run(record) if resumed else self.store.create_run(record),
                           "record the run")
        self.record = record

    async def checkpoint(self, result: TaskResult, *, read: bool = True) -> None:
        """Commit a settled node's result; returns once it is committed (with its tick's others).
        A result no node reads (``read=False``) may return before, when another node writes its
        tick: the run ends only once that node has, and its failure fails the run."""
        await self._commit(task_record(self.run_id, result), wait=read)

    async def checkpoint_item(self, key: str, output: Any) -> None:
        """Commit the output of one item of a ``for_each`` (``RunState.item_key``), as it finishes."""
        await self._commit(TaskRecord(self.run_id, key, ITEM_STATUS, output))

    async def _commit(self, record: TaskRecord, *, wait: bool = True) -> None:
        batch = self._batch
        batch.records.append(record)
        batch.read = batch.read or wait
        if batch.writing:
            if not wait:
                return
            await batch.done.wait()
        else:
            batch.writing = True
            waiting = 0
            while waiting != len(batch.records):  # the nodes settling meanwhile join, until a tick adds none
                waiting = len(batch.records)
                await anyio.lowlevel.cancel_shielded_checkpoint()
            self._batch = _Batch()
            if not batch.read and self.ending():  # nothing reads them, nothing runs after: written by `finish`
                self._last.extend(batch.records)
                batch.done.set()
                return
            with anyio.CancelScope(shield=True):
                try:
                    await _written(self.store.save_tasks(batch.records), "save task results")
                except StoreError as error:
                    batch.error = error
                    raise
                finally:
                    batch.done.set()
                # Then the model calls, while the results' readers go on: nothing waits for a call record
                # but the run's end (``finish``), and a failure here still fails the run.
                await self._write_attempts()
        if batch.error is not None:
            raise StoreError(str(batch.error))

    async def heartbeat(self) -> None:
        """Beat until cancelled, so a sweep can tell this run from one whose process died."""
        while True:
            await anyio.sleep(HEARTBEAT_SECONDS)
            await _written(self.store.heartbeat([self.run_id], time.time()), "beat the run's heartbeat")

    async def finish(self, result: RunResult) -> None:
        totals = result.totals
        record = dataclasses.replace(
            self.record, status=result.status, ended_at=result.ended_at, outputs=result.outputs,
            error=result.error, input_tokens=totals.input_tokens, output_tokens=totals.output_tokens,
            cost_usd=totals.cost_usd)
        self.ending = _never  # the scheduler's, which holds this journal: no cycle left to the collector
        last, self._last = self._last, []
        attempts, self._attempts = self._attempts, []
        with anyio.CancelScope(shield=True):
            await _written(self.store.finish_run(record, tasks=last, attempts=attempts), "record the run's end")
            await _written(self.store.flush(), "flush the run's records")
        self.record = record


# What a stored result keeps of a TaskResult: the record's own fields, but the run's id.
_KEPT = tuple(field.name for field in dataclasses.fields(TaskRecord) if field.name != "run_id")
_kept = operator.attrgetter(*_KEPT)  # positional: a third of the cost of keywords from a dict, per task


def task_record(run_id: str, result: TaskResult) -> TaskRecord:
    return TaskRecord(run_id, *_kept(result))


def restore(result: TaskResult, record: TaskRecord) -> None:
    """A node's result as a run before the resume left it."""
    for name in _KEPT:
        setattr(result, name, getattr(record, name))


def run_record(run_id: str, workflow: str, document: dict[str, Any], inputs: Mapping[str, Any],
               *, source: str | None = None, digest: str | None = None) -> RunRecord:
    # The document is not copied: the runs of one Workflow object share it (the store encodes it once).
    return RunRecord(run_id, workflow, document, dict(inputs), time.time(), source, digest)


async def _written(write: Any, what: str) -> None:
    try:
        await write
    except OrchestrionError:
        raise
    except Exception as error:  # the store's own errors are StoreError; anything else is one too
        raise StoreError(f"the run store could not {what}: {type(error).__name__}: {error}") from error


def _never() -> bool:
    return False


def _owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"
