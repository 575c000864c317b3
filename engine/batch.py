"""Batch runs: one workflow over many inputs, as many runs in flight as the machine can take.

    async with engine.batch("flows/summarize.yaml", inputs, concurrency=64) as results:
        async for item in results:  # as the runs finish, not in input order
            print(item.index, item.error or item.result.outputs)

``inputs`` (an iterable or async iterable of input mappings) is read lazily: an input is taken
only when a run can start, so at most ``concurrency`` runs plus ``BUFFER`` finished items are
held, whatever the number of inputs. The workflow is loaded and compiled (and the run store
opened) once, when the block is entered: an invalid workflow raises there, before any run. Each
input is one ``engine.run`` (store, events and cost accounting apply). An input that is not
valid (InputError), or a run that raises or fails, is an item with its ``error``: one failed
input never stops the batch. Leaving the block cancels the runs still in flight.

The backend seam: ``BatchBackend.run(engine, workflow, inputs, concurrency, deliver)`` runs the
numbered inputs and hands each BatchItem to ``deliver``. ``LocalBackend`` (one anyio task group)
is the default. It pushes items rather than yielding them: a backend keeps its tasks in its own
task group, which an async generator cannot do safely across its ``yield``. A backend must:

1. deliver exactly one item per ``(index, inputs)`` it takes, with that index, unless cancelled;
2. take the next input only when a run can start: at most ``concurrency`` taken and not yet
   delivered (``deliver`` may wait for the caller: that is the back-pressure, so await it);
3. turn every failure of one input (invalid inputs, a failed run, an exception) into that item's
   ``error``; raise only for its own failure or that of the input source;
4. when cancelled, stop every run it started before it returns: nothing goes on in the background
   (a remote backend cancels its remote tasks);
5. run each input as ``engine.run`` would: in this process through ``engine.run``; elsewhere on an
   Engine built from ``engine.config``. ``run_one(engine, workflow, index, inputs)`` is that run,
   every failure made the item's error, for a backend (or its workers) to call.

Under a cost cap across runs (``budget: {max_cost_usd: ...}``, ``Engine.cost_cap``), the batch stops
starting runs once the cap is reached (a call was refused under it, or everything is spent, or a
cap kept in Redis cannot be checked): no more input is read, the runs in flight finish (their
calls refused if over the cap, which makes them failed items), and once their items are
delivered, iterating ends and leaving the block raises BudgetExceededError saying why. The inputs
not started have no item: a later batch over the same inputs, under a higher cap or a new key,
goes on with them (``orchestrion batch --resume``). The check is made before each input is
started, on the caller's engine, so it holds for every backend (with Redis, it asks Redis once
per input).

Everything crossing the seam is plain data, for a backend that runs elsewhere (Ray, Dask): the
workflow is a validated ``Workflow`` (pydantic: ``workflow.model_dump(mode="json", by_alias=True,
exclude_unset=True)`` is its document, which ``load_workflow`` reads back; it also pickles), the
inputs are dicts, and an item round-trips through ``BatchItem.to_dict`` / ``BatchItem.from_dict``
(``RunResult.to_dict`` inside).
"""

from __future__ import annotations

import os
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import anyio

from engine.dsl.loader import load_workflow
from engine.errors import BudgetExceededError, OrchestrionError
from engine.runtime.results import RunResult

if TYPE_CHECKING:
    from anyio.streams.memory import MemoryObjectReceiveStream

    from engine.core import Engine
    from engine.dsl.loader import WorkflowSource
    from engine.dsl.models import Workflow
    from engine.resilience.cap import CostCap

BUFFER = 32  # finished items that may wait for the caller before runs wait for it
Inputs = Iterable[Mapping[str, Any]] | AsyncIterable[Mapping[str, Any]]
Deliver = Callable[["BatchItem"], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class BatchItem:
    """One input's outcome: ``result`` if it ran (succeeded or failed), ``error`` unless it succeeded."""

    index: int  # the input's position in ``inputs``, from 0
    result: RunResult | None
    error: str | None

    @property
    def ok(self) -> bool:
        return self.error is None and self.result is not None and self.result.status == "succeeded"

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "result": None if self.result is None else self.result.to_dict(),
                "error": self.error}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BatchItem:
        result = data.get("result")
        return cls(int(data["index"]), None if result is None else RunResult.from_dict(result), data.get("error"))


class BatchBackend(Protocol):
    """Runs a batch's inputs: see the module's docstring for what an implementation must guarantee."""

    async def run(self, engine: Engine, workflow: Workflow, inputs: AsyncIterator[tuple[int, dict[str, Any]]],
                  concurrency: int, deliver: Deliver) -> None:
        """Run every input of ``inputs`` (numbered), at most ``concurrency`` at a time, and
        ``await deliver(item)`` for each as it finishes; return when every item is delivered."""
        ...


class LocalBackend:
    """Runs the batch in this process: one task per run in an anyio task group, ``concurrency`` at most."""

    async def run(self, engine: Engine, workflow: Workflow, inputs: AsyncIterator[tuple[int, dict[str, Any]]],
                  concurrency: int, deliver: Deliver) -> None:
        async def one(index: int, values: dict[str, Any]) -> None:
            await deliver(await run_one(engine, workflow, index, values))

        await feed(inputs, concurrency, one)


async def feed(inputs: AsyncIterator[tuple[int, dict[str, Any]]], concurrency: int,
               run_item: Callable[[int, dict[str, Any]], Awaitable[None]]) -> None:
    """Each input in its own task, at most ``concurrency`` at once: an input is read only when a slot is
    free, and the slot is given back once ``run_item`` returns (its item delivered). Every backend feeds so."""
    slots = anyio.Semaphore(concurrency)

    async def one(index: int, values: dict[str, Any]) -> None:
        try:
            await run_item(index, values)
        finally:
            slots.release()

    async with anyio.create_task_group() as group:
        while True:
            await slots.acquire()
            try:
                index, values = await anext(inputs)
            except StopAsyncIteration:
                break
            group.start_soon(one, index, values)


async def run_one(engine: Engine, workflow: Workflow, index: int, values: Mapping[str, Any]) -> BatchItem:
    """One input through ``engine.run``, every failure made the item's error (cancellation passes)."""
    try:
        result = await engine.run(workflow, values)
    except OrchestrionError as exc:  # invalid inputs, a store that cannot record the run
        return BatchItem(index, None, str(exc))
    except Exception as exc:  # a bug shows in the item, it does not stop the other runs
        return BatchItem(index, None, f"{type(exc).__name__}: {exc}")
    if result.status == "succeeded":
        return BatchItem(index, result, None)
    return BatchItem(index, result, result.error or f"run {result.status}")


@asynccontextmanager
async def open_batch(engine: Engine, workflow: WorkflowSource, inputs: Inputs, *, concurrency: int = 16,
                     backend: BatchBackend | None = None) -> AsyncIterator[AsyncIterator[BatchItem]]:
    """``Engine.batch``: the items, as the runs finish; leaving the block cancels what still runs."""
    if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
        raise ValueError(f"concurrency must be a whole number of at least 1, not {concurrency!r}")
    if isinstance(workflow, str | os.PathLike):  # reading and parsing a file stays off the event loop
        loaded = await anyio.to_thread.run_sync(load_workflow, Path(workflow))
    else:
        loaded = load_workflow(workflow)
    engine.compile(loaded)  # an invalid workflow raises here; every run reuses the plan (cached per Workflow)
    await engine.run_store()  # a store that cannot be opened raises here, not once per input
    send, receive = anyio.create_memory_object_stream[BatchItem](BUFFER)
    stopped: list[str] = []  # why the batch stopped starting runs, if it did (the cost cap)

    async def deliver(item: BatchItem) -> None:
        try:
            send.send_nowait(item)  # room in the buffer: no trip through the event loop
        except anyio.WouldBlock:
            await send.send(item)  # the caller is behind: wait for it

    async def drive() -> None:
        numbered = _numbered(inputs, deliver, engine.cost_cap, stopped)
        async with send:
            try:
                await (backend or LocalBackend()).run(engine, loaded, numbered, concurrency, deliver)
            finally:
                with anyio.CancelScope(shield=True):
                    await numbered.aclose()

    with receive:
        async with anyio.create_task_group() as group:
            group.start_soon(drive)
            try:
                yield _Results(receive)
            finally:
                group.cancel_scope.cancel()  # the caller is done: stop the runs still going
    if stopped:  # raised here, out of the task group: the caller gets the error itself, not a group of one
        raise BudgetExceededError(f"{stopped[0]}; the batch stopped starting runs (the inputs not started have no "
                                  "result)")


class _Results:
    """The items as they come. Those already waiting are taken without a trip through the event loop
    (a checkpoint per item made the caller fall behind runs that finish together, and each run then
    waited for it), with a checkpoint at least every ``BUFFER`` items so the caller stays cancellable."""

    def __init__(self, receive: MemoryObjectReceiveStream[BatchItem]) -> None:
        self._receive = receive
        self._streak = 0

    def __aiter__(self) -> _Results:
        return self

    async def __anext__(self) -> BatchItem:
        try:
            if self._streak < BUFFER:
                self._streak += 1
                return self._receive.receive_nowait()
        except anyio.WouldBlock:
            pass
        except anyio.EndOfStream:
            raise StopAsyncIteration from None
        self._streak = 0
        try:
            return await self._receive.receive()
        except anyio.EndOfStream:
            raise StopAsyncIteration from None


async def _numbered(inputs: Inputs, deliver: Deliver, cap: CostCap | None = None, stopped: list[str] | None = None
                    ) -> AsyncGenerator[tuple[int, dict[str, Any]], None]:
    """``(index, inputs)`` for each input mapping; anything else is delivered as its index's error.
    Under a cost ``cap``, it ends once the cap is reached, the reason added to ``stopped``.

    A plain iterable is read on the event loop: it must not block (read files with an async one)."""
    source = aiter(inputs) if isinstance(inputs, AsyncIterable) else _as_async(inputs)
    try:
        index = 0
        async for values in source:
            if cap is not None and await _reached(cap, stopped):
                return
            if isinstance(values, Mapping):
                yield index, dict(values)
            else:
                await deliver(_not_a_mapping(index, values))
            index += 1
    finally:
        close = getattr(source, "aclose", None)
        if close is not None:
            await close()


async def _as_async(values: Iterable[Any]) -> AsyncGenerator[Any, None]:
    for value in values:
        yield value


async def _reached(cap: CostCap, stopped: list[str] | None) -> bool:
    reason = await cap.reached()
    if reason is not None and stopped is not None:
        stopped.append(reason)
    return reason is not None


def _not_a_mapping(index: int, value: object) -> BatchItem:
    return BatchItem(index, None, f"input {index} is a {type(value).__name__}, not a mapping of input names to values")
