"""The runs this server started: their status, their events in order, cancel, drain.

Each run gets a task in the hub's task group (owned by the app's lifespan), a
cancel scope, and a log of its events numbered from 1 (``seq``), which is the
SSE event id. Events are kept in memory for live subscribers and written to
the run store in batches, so a subscriber that comes later, to another server
process or after a restart, replays them from there. A run this process does
not hold is read from the store; while it runs elsewhere its events are polled.

The events of a run are appended by a listener the engine calls in line, so
none is dropped however slow a subscriber is: subscribers read the log.
"""

from __future__ import annotations

import bisect
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.abc
import structlog

from engine.compiler import Plan
from engine.core import Engine, PreparedRun
from engine.events import Event
from engine.runtime.results import RunResult
from engine.secrets import Scrubber
from engine.store import EventRecord
from engine.store.records import StoredRun

TERMINAL = frozenset({"succeeded", "failed", "cancelled", "interrupted"})
STORE_POLL_SECONDS = 0.25  # how often a run held by another process is polled for new events

_log = structlog.get_logger("orchestrion.server")


class LiveRun:
    """A run started by this server."""

    def __init__(self, run_id: str, workflow: str, caller: str, stored: list[dict[str, Any]]) -> None:
        self.run_id, self.workflow, self.caller = run_id, workflow, caller
        self.status = "pending"
        self.key: str | None = None  # the client's idempotency key
        self.plan: Plan | None = None
        self.created_at = time.time()
        self.events: list[dict[str, Any]] = stored  # a resumed run's earlier events come first
        self.result: RunResult | None = None
        self.error: str | None = None
        self.scope = anyio.CancelScope()
        self.done = anyio.Event()
        self._changed = anyio.Event()

    @property
    def last_seq(self) -> int:
        return self.events[-1]["seq"] if self.events else 0

    def changed(self) -> anyio.Event:
        return self._changed

    def notify(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    def summary(self) -> dict[str, Any]:
        """The run as ``GET /runs`` lists it (totals once it has ended)."""
        totals = self.result.totals if self.result is not None else None
        return {"run_id": self.run_id, "workflow": self.workflow, "status": self.status,
                "started_at": self.created_at, "ended_at": self.result.ended_at if self.result else None,
                "error": self.error, "events": self.last_seq,
                "cost_usd": totals.cost_usd if totals else 0.0,
                "input_tokens": totals.input_tokens if totals else 0,
                "output_tokens": totals.output_tokens if totals else 0}


@dataclass(frozen=True)
class Found:
    """A run by id: held here (``live``) or read from the store (``stored``)."""

    live: LiveRun | None = None
    stored: StoredRun | None = None

    @property
    def status(self) -> str:
        if self.live is not None:
            return self.live.status
        assert self.stored is not None
        return self.stored.run.status


class DrainingError(Exception):
    """The server is shutting down and takes no new runs."""


class RunHub:
    def __init__(self, engine: Engine, scrub: Scrubber, keep_finished: int = 256) -> None:
        self.engine, self.scrub, self.keep_finished = engine, scrub, keep_finished
        self.runs: dict[str, LiveRun] = {}
        self._in_flight: dict[str, int] = {}  # runs not yet done, per caller
        self._keys: dict[tuple[str, str], str] = {}  # (caller, idempotency key) -> run id
        self._finished: OrderedDict[str, None] = OrderedDict()
        self._group: anyio.abc.TaskGroup | None = None
        self._pending: list[EventRecord] = []
        self._wake = anyio.Event()
        self._write_lock = anyio.Lock()
        self.draining = False
        self.drained = anyio.Event()

    # -- lifetime ---------------------------------------------------------------------------------------

    async def serve(self, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Host the runs until cancelled (the app's lifespan runs this)."""
        async with anyio.create_task_group() as group:
            self._group = group
            group.start_soon(self._write_events)
            task_status.started()
            await anyio.sleep_forever()

    def begin_drain(self) -> None:
        """Take no new runs, and end every event stream with a last event (SIGTERM does this first)."""
        self.draining = True
        for live in self.runs.values():
            live.notify()

    async def drain(self, grace: float) -> None:
        """Let running runs finish for ``grace`` seconds, then cancel them (their checkpoints stay:
        ``resume`` goes on), and write every event."""
        self.begin_drain()
        running = [live for live in self.runs.values() if not live.done.is_set()]
        with anyio.move_on_after(grace):
            for live in running:
                await live.done.wait()
        for live in running:
            live.scope.cancel()
        with anyio.move_on_after(max(grace, 5.0)):
            for live in running:
                await live.done.wait()
        await self.write_events()
        self.drained.set()

    # -- starting and stopping runs ---------------------------------------------------------------------

    def in_flight(self, caller: str) -> int:
        return self._in_flight.get(caller, 0)

    def by_key(self, caller: str, key: str) -> LiveRun | None:
        run_id = self._keys.get((caller, key))
        return self.runs.get(run_id) if run_id is not None else None

    async def start(self, prepared: PreparedRun, caller: str, *, resumed: bool = False,
                    key: str | None = None) -> LiveRun:
        """Start a checked run in the background; its id is known at once. ``key``: the client's
        idempotency key, by which ``by_key`` finds the run while it is kept."""
        if self.draining:
            raise DrainingError
        if self._group is None:
            raise RuntimeError("the adapter's lifespan is not running")
        stored: list[dict[str, Any]] = []
        store = self.engine.store
        if resumed and store is not None:  # a resumed run's events go on from where they stopped
            stored = [{**record.data, "seq": record.seq} for record in await store.load_events(prepared.run_id)]
        live = LiveRun(prepared.run_id, prepared.workflow, caller, stored)
        live.plan = prepared.plan  # its graph, with or without a store
        self.runs[live.run_id] = live
        self._finished.pop(live.run_id, None)
        self._in_flight[caller] = self._in_flight.get(caller, 0) + 1
        if key:
            live.key = key
            self._keys[(caller, key)] = live.run_id
        self._group.start_soon(self._drive, live, prepared.start)
        return live

    async def _drive(self, live: LiveRun, start: Callable[..., Awaitable[RunResult]]) -> None:
        try:
            with live.scope:
                live.result = await start(lambda event: self._add(live, event))
                live.error = live.result.error
        except Exception as error:  # a store that failed under the run: the run failed, loudly
            live.status, live.error = "failed", self.scrub.text(f"{type(error).__name__}: {error}")
            _log.error("run failed outside its tasks", run_id=live.run_id, error=live.error)
        finally:
            if live.status not in TERMINAL:  # cancelled before it started, or failed above
                status = "cancelled" if live.status in ("pending", "running") and live.error is None else live.status
                live.status = status
                self._append(live, {"type": "run_finished", "run_id": live.run_id, "time": time.time(),
                                    "status": status, "error": live.error or "the run was cancelled",
                                    "wall_time_s": time.time() - live.created_at, "cost_usd": 0.0,
                                    "input_tokens": 0, "output_tokens": 0})
            with anyio.CancelScope(shield=True):
                await self.write_events()
            live.done.set()
            live.notify()
            self._in_flight[live.caller] -= 1
            self._retire(live)

    def _add(self, live: LiveRun, event: Event) -> None:
        data = event.to_dict()
        if event.run_id == live.run_id:  # a nested run's start and end are not this run's
            if data["type"] == "run_started":
                live.status = "running"
            elif data["type"] == "run_finished":
                live.status = data["status"]
        self._append(live, data)

    def _append(self, live: LiveRun, data: dict[str, Any]) -> None:
        seq = live.last_seq + 1
        data["seq"] = seq
        live.events.append(data)
        if self.engine.store is not None:
            self._pending.append(EventRecord(live.run_id, seq, data["type"], data["time"], data))
            self._wake.set()
        live.notify()

    def _retire(self, live: LiveRun) -> None:
        self._finished[live.run_id] = None
        while len(self._finished) > self.keep_finished:
            old, _ = self._finished.popitem(last=False)
            retired = self.runs.pop(old, None)
            if retired is not None and retired.key is not None:
                self._keys.pop((retired.caller, retired.key), None)

    async def cancel(self, live: LiveRun, *, wait: bool) -> None:
        live.scope.cancel()
        if wait:
            await live.done.wait()

    # -- events -----------------------------------------------------------------------------------------

    async def _write_events(self) -> None:
        while True:
            await self._wake.wait()
            self._wake = anyio.Event()
            await self.write_events()

    async def write_events(self) -> None:
        """Write the events not yet in the store (one batch; a failure is logged, the run goes on)."""
        async with self._write_lock:
            batch, self._pending = self._pending, []
            store = self.engine.store
            if not batch or store is None:
                return
            try:
                await store.record_events(batch)
            except Exception as error:
                _log.warning("events not stored", count=len(batch), error=self.scrub.text(str(error)))

    async def find(self, run_id: str) -> Found | None:
        live = self.runs.get(run_id)
        if live is not None:
            return Found(live=live)
        store = await self.engine.run_store()
        stored = await store.load_run(run_id) if store is not None else None
        return Found(stored=stored) if stored is not None else None

    async def next_events(self, found: Found, after: int, wait: float) -> tuple[list[dict[str, Any]], bool]:
        """The events after seq ``after``, waiting up to ``wait`` seconds for one; and whether the run has
        ended with the last of them (no more will come)."""
        live = found.live
        if live is not None:
            with anyio.move_on_after(wait):
                while live.last_seq <= after and not live.done.is_set() and not self.draining:
                    await live.changed().wait()
            return live.events[bisect.bisect_right(live.events, after, key=_seq):], live.done.is_set()
        store = self.engine.store
        assert store is not None and found.stored is not None
        deadline = anyio.current_time() + wait
        while True:
            records = await store.load_events(found.stored.run.run_id, after)
            run = await store.load_run(found.stored.run.run_id) if not records else None
            ended = run is None or run.run.status in TERMINAL
            if records or ended or anyio.current_time() >= deadline or self.draining:
                events = [{**record.data, "seq": record.seq} for record in records]
                return events, ended and not records
            await anyio.sleep(STORE_POLL_SECONDS)


def _seq(event: dict[str, Any]) -> int:
    seq: int = event["seq"]
    return seq
