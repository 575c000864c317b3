"""What a run stores so it can be resumed, and what a resume reads back.

A run records the workflow as the compiler read it (JSON), its inputs, and
the file it came from with that file's SHA-256. A resume recompiles the same
workflow: from the file while it is unchanged (so its relative ``workflow:``
references still resolve), from the stored document if the file is gone, and
refuses a changed file unless forced. The nodes that finished are restored,
not run again: succeeded ones, failed ones that were not critical (their null
was the run's answer), and the items of a ``for_each`` that finished. A
critical failure runs again: that is what a resume after fixing its cause is
for. A model call that was in flight when the process died is made again: its
answer was never stored.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio

from engine.compiler.plan import Plan
from engine.dsl.loader import load_workflow, parse_workflow
from engine.dsl.models import Workflow
from engine.errors import StoreError
from engine.runtime.journal import ITEM_STATUS, STALE_SECONDS, Journal, run_record
from engine.store import RunStore, StoredRun, TaskRecord


@dataclass(frozen=True)
class Resumable:
    """A stored run, ready to go on: its workflow, inputs, and the results it keeps."""

    run_id: str
    workflow: Workflow
    inputs: dict[str, Any]
    stored: StoredRun


def workflow_document(workflow: Workflow) -> dict[str, Any]:
    """The workflow as the compiler read it, JSON-ready: what a run records so a resume recompiles it."""
    return workflow.model_dump(mode="json", by_alias=True, exclude_unset=True)


async def new_journal(store: RunStore, workflow: Workflow, plan: Plan, inputs: Mapping[str, Any],
                      run_id: str | None, *, document: dict[str, Any]) -> Journal:
    """The journal of a run about to start: the workflow as read (``document``, shared by the runs of
    one Workflow object and never changed), and where it came from."""
    source = workflow.origin.file if workflow.origin is not None else None
    digest = await anyio.to_thread.run_sync(file_digest, source) if source is not None else None
    record = run_record(run_id or uuid.uuid4().hex, plan.name, document, inputs,
                        source=str(source) if source is not None else None, digest=digest)
    return Journal(store, record)


async def load_resumable(store: RunStore, run_id: str, *, force: bool = False) -> Resumable:
    """The stored run ``run_id`` if it may be resumed; StoreError saying why not otherwise."""
    stored = await store.load_run(run_id)
    if stored is None:
        raise StoreError(f"no run {run_id!r} in the run store (`orchestrion runs` lists them)")
    run = stored.run
    if run.status == "succeeded":
        raise StoreError(f"run {run_id} of {run.workflow!r} already succeeded: there is nothing to resume")
    beat = run.heartbeat_at or run.started_at
    alive = time.time() - beat < STALE_SECONDS and not _gone_from_this_host(run.owner)
    if run.status == "running" and alive and not force:
        raise StoreError(f"run {run_id} is still running in {run.owner or 'another process'} (its heartbeat "
                         f"is {time.time() - beat:.0f} s old); --force resumes it anyway")
    workflow = await anyio.to_thread.run_sync(_workflow_of, stored, force)
    return Resumable(run_id, workflow, dict(run.inputs), stored)


def restorable(stored: StoredRun, plan: Plan) -> dict[str, TaskRecord]:
    """The stored results a resume keeps: nodes of this plan that succeeded, or failed while not critical."""
    kept = {}
    for task_id, record in stored.tasks.items():
        if record.status == ITEM_STATUS:  # a `for_each` item's output: kept while its node is in the plan
            if task_id.rpartition("[")[0] in plan.nodes:
                kept[task_id] = record
            continue
        node = plan.nodes.get(task_id)  # type: ignore[call-overload]
        if node is None:
            continue  # a node of a changed workflow (--force) that is no longer there
        critical = node.policies is None or node.policies.critical
        if record.status == "succeeded" or (record.status == "failed" and not critical):
            kept[task_id] = record
    return kept


def _gone_from_this_host(owner: str | None) -> bool:
    """Whether the process that ran it (``host:pid``) is known to be dead: it ran here and is gone."""
    host, _, pid = (owner or "").rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False  # another machine's: only its heartbeat can tell
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, someone else's
        return False
    return False


def _workflow_of(stored: StoredRun, force: bool) -> Workflow:
    run = stored.run
    source = Path(run.source) if run.source is not None else None
    if source is not None and source.is_file():
        if file_digest(source) != run.source_digest and not force:
            raise StoreError(f"{source} changed since run {run.run_id} started: resuming would mix two versions "
                             "of the workflow; --force resumes with the file as it is now, keeping the results of "
                             "tasks whose ids are unchanged")
        return load_workflow(source)
    # The file is gone (or the run did not come from one): the workflow as it was read then.
    name = str(source) if source is not None else f"<run {run.run_id}>"
    return parse_workflow(json.dumps(run.document), name=name, file=source)


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
