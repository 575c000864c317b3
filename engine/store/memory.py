"""A run store in the process: the contract of ``base.RunStore`` without a database.

For tests, and for embedded users who want stats and the response cache for
the life of the engine. Nothing survives the process, so a resume works only
within it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from engine.errors import StoreError
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


class MemoryStore:
    def __init__(self) -> None:
        self.runs: dict[str, RunRecord] = {}
        self.tasks: dict[str, dict[str, TaskRecord]] = {}
        self.attempts: list[AttemptRecord] = []
        self.cache: dict[str, CacheEntry] = {}
        self.sessions: dict[str, list[ChatTurn]] = {}
        self.events: dict[str, dict[int, EventRecord]] = {}  # by run, then seq

    async def create_run(self, run: RunRecord) -> None:
        self.runs[run.run_id] = run
        self.tasks.setdefault(run.run_id, {})

    async def save_task(self, task: TaskRecord) -> None:
        self.tasks.setdefault(task.run_id, {})[task.task_id] = task

    async def save_tasks(self, tasks: Sequence[TaskRecord]) -> None:
        for task in tasks:
            await self.save_task(task)

    async def finish_run(self, run: RunRecord, *, tasks: Sequence[TaskRecord] = (),
                         attempts: Sequence[AttemptRecord] = ()) -> None:
        self.runs[run.run_id] = run
        if tasks:
            await self.save_tasks(tasks)
        self.attempts.extend(attempts)

    async def heartbeat(self, run_ids: Sequence[str], now: float) -> None:
        for run_id in run_ids:
            if run_id in self.runs:
                self.runs[run_id] = dataclasses.replace(self.runs[run_id], heartbeat_at=now)

    async def mark_interrupted(self, older_than: float) -> list[str]:
        stale = [run.run_id for run in self.runs.values()
                 if run.status == "running" and (run.heartbeat_at or run.started_at) < older_than]
        for run_id in stale:
            self.runs[run_id] = dataclasses.replace(self.runs[run_id], status="interrupted")
        return stale

    async def record_attempts(self, attempts: Sequence[AttemptRecord]) -> None:
        self.attempts.extend(attempts)

    async def record_events(self, events: Sequence[EventRecord]) -> None:
        for event in events:
            self.events.setdefault(event.run_id, {}).setdefault(event.seq, event)  # a repeat keeps the first

    async def load_events(self, run_id: str, after: int = 0, limit: int = 10_000) -> list[EventRecord]:
        kept = self.events.get(run_id, {})
        return [kept[seq] for seq in sorted(seq for seq in kept if seq > after)][:max(limit, 0)]

    async def load_run(self, run_id: str) -> StoredRun | None:
        run = self.runs.get(run_id)
        if run is None:
            return None
        attempts = [attempt for attempt in self.attempts if attempt.run_id == run_id]
        return StoredRun(run, dict(self.tasks.get(run_id, {})), attempts)

    async def list_runs(self, limit: int = 20, workflow: str | None = None,
                        status: StoredRunStatus | None = None) -> list[RunRecord]:
        chosen = [run for run in self.runs.values()
                  if (workflow is None or run.workflow == workflow) and (status is None or run.status == status)]
        return sorted(chosen, key=lambda run: run.started_at, reverse=True)[:limit]

    async def attempts_since(self, since: float, workflow: str | None = None) -> list[AttemptRecord]:
        return [attempt for attempt in self.attempts
                if attempt.started_at >= since and (workflow is None or attempt.workflow == workflow)]

    async def prune(self, older_than: float) -> int:
        old = {run.run_id for run in self.runs.values()
               if run.status != "running" and run.ended_at is not None and run.ended_at < older_than}
        for run_id in old:
            del self.runs[run_id]
            self.tasks.pop(run_id, None)
            self.events.pop(run_id, None)
        self.attempts = [attempt for attempt in self.attempts if attempt.run_id not in old]
        return len(old)

    async def cache_get(self, key: str, now: float) -> CacheEntry | None:
        entry = self.cache.get(key)
        if entry is None or (entry.expires_at is not None and entry.expires_at <= now):
            return None
        return entry

    async def cache_put(self, entry: CacheEntry) -> None:
        self.cache[entry.key] = entry

    async def cache_clear(self) -> int:
        count = len(self.cache)
        self.cache.clear()
        return count

    async def session_turns(self, session_id: str) -> list[ChatTurn]:
        return list(self.sessions.get(session_id, []))

    async def add_turns(self, turns: Sequence[ChatTurn]) -> None:
        for turn in turns:
            kept = self.sessions.setdefault(turn.session_id, [])
            if turn.seq != len(kept):
                raise StoreError(f"chat session {turn.session_id!r} already has a message {turn.seq}: "
                                 "it was answered elsewhere meanwhile")
            kept.append(turn)

    async def flush(self) -> None:
        return None

    async def aclose(self) -> None:
        return None
