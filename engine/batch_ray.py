"""Batches on a Ray cluster: ``RayBackend``, whose runs are hosted by Ray's async actors.

    from engine.batch_ray import RayBackend

    backend = RayBackend("auto", actors=4, runs_per_actor=200)
    backend.connect()                     # ray.init, on this thread (else the batch does it in a worker thread)
    async with engine.batch(workflow, inputs, concurrency=800, backend=backend) as results:
        async for item in results: ...
    backend.shutdown()                    # ray.shutdown, if connect() made the connection

or ``orchestrion batch FLOW --inputs in.jsonl --out out.jsonl --backend ray --address auto``.
Install with ``pip install 'orchestrion[ray]'`` (Ray's core, and gRPC for ``ray://`` addresses).

Addresses: ``"auto"`` joins the cluster running on this machine or named by ``RAY_ADDRESS`` (``ray
start --head``); ``"ray://HOST:10001"`` joins a remote cluster through the Ray Client;
``"local"`` starts a cluster of this machine alone for this process (a test, a laptop), without the
dashboard, its node at 127.0.0.1 (the cluster's traffic stays on the loopback, though Ray's own
servers listen on every interface: firewall them on a shared network); None does what a bare
``ray.init()`` does. Ray already initialised by the caller (``ray.init(...)`` before the batch) is
used as it is, and left running.

How a batch runs: the backend starts ``actors`` async actors (``num_cpus=0``: they wait on model
calls, not on a CPU), each running up to ``runs_per_actor`` runs at once on one Engine, and ends
them when the batch ends. Runs in flight are bounded here, by the batch's ``concurrency`` (and by
``actors x runs_per_actor``): an input is read only when a run can start, and sent to the actor
with the fewest runs in flight. The results come back as ObjectRefs awaited on the caller's event
loop; nothing blocks it (``ray.init``, creating and killing actors run in worker threads). Only
asyncio: Ray's ObjectRefs are asyncio futures, so a batch under trio is refused. Leaving the batch
cancels the remote runs (``ray.cancel``), lets them record their end for a few seconds, closes
each actor's engine and kills the actors.

What crosses to the actors is plain data (``engine.recipe.EngineRecipe``): the engine's
configuration, its registered functions by importable name (``module:qualname``: lambdas, closures
and functions of ``__main__`` are refused before anything starts), the run store's URL; the
workflow as its document (JSON text, with the path of its file); each input as a dict, each result
as ``BatchItem.to_dict``. Model clients given as objects (``Engine(models=...)``) cannot cross:
configure providers instead (kind ``fake`` for a dry run). Listeners added to the engine (events,
tracing) see nothing of the remote runs: read the run store instead. The configured keys travel
inside the configuration, through Ray's object store, to the actors that call the models.

Errors: a run that fails, or raises on its actor, is that input's item with the error as the
local backend words it (``FunctionError``'s message carries the original exception's type and
message; anything else raised is ``"TypeName: message"``, the type of the original exception, not
Ray's wrapper). An actor that dies (a crash, an out-of-memory kill, a lost node) is restarted (up
to ``max_restarts`` times) and the runs it had are sent again (``max_task_retries``); an actor
that cannot come back makes its runs' items errors (``ActorDiedError: ...``) and the batch goes on
with the others; when none is left the batch stops with RayBackendError. An actor that cannot
build its engine (a function not importable there, an invalid configuration) stops the batch
before any run, with the actor's error.

**Runs must be idempotent.** A run whose actor died is run again from the start, on the restarted
actor: its model calls are made (and paid for) again, and a ``call:`` function with side effects
runs twice. Make functions safe to repeat (an upsert, a key derived from the inputs). The run store
keeps both runs: the first stays ``running`` until an engine opening the store finds it stale and
marks it interrupted.

Workers need the package and the user's functions. Either build the cluster's image (or each
node's environment) with ``pip install orchestrion`` and the package that defines the functions,
or ship them with Ray's runtime environment: ``RayBackend(runtime_env={"pip": ["orchestrion",
"mycompany-flows"]})``, or ``{"working_dir": ".", "py_modules": [...]}`` for code that is not
installed. The addon and template folders, and the workflow file's folder (where its relative
``workflow:`` files are found), are read on the workers at the caller's absolute paths: put them at
the same place in the image, or on a filesystem every node mounts there. On a cluster of this
machine alone (``"local"``, or ``"auto"`` after ``ray start``), the actors run this Python with this
``sys.path`` and these files, and need nothing more.

State the runs share lives outside the actors: each actor's engine opens the store the engine
names (give every worker the same PostgreSQL, ``postgresql+asyncpg://...``; a SQLite file works
only for actors of one machine, and ``memory:`` is refused); circuit breakers are shared through
Redis (``breaker: {storage: redis://...}``), and so are the providers' ``rpm``/``tpm`` rate limits
(``rate_limits: {storage: redis://...}``: every actor together stays under them) and the cost cap
across runs (``budget: {max_cost_usd, storage: redis://..., key}``: every actor together spends at
most it, and the caller stops starting runs once it is reached; a cap without ``storage`` is refused,
as each actor would spend up to it). Without ``rate_limits.storage``, ``rpm``/``tpm`` hold for each
actor's engine, so the cluster sends ``actors`` times as much: configure each at the provider's limit
divided by the number of actors. ``model_concurrency`` is always per actor.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import sys
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio

from engine.batch import BatchItem, Deliver, feed, run_one
from engine.recipe import EngineRecipe

if TYPE_CHECKING:
    from engine.core import Engine
    from engine.dsl.models import Workflow

RAY_EXTRA = "pip install 'orchestrion[ray]'"
STOP_GRACE = 5.0  # seconds the cancelled runs and the engines' closing get before the actors are killed
ACTOR_PREFIX = "orchestrion-batch"  # actors are named f"{ACTOR_PREFIX}-{batch id}-{n}"


class RayBackendError(RuntimeError):
    """The Ray backend itself failed: the actors could not start or build their engine, or all died."""


def import_ray() -> Any:
    """The ``ray`` module; ImportError naming the extra to install if it is not there. The first import
    takes about a second: the backend makes it in a worker thread."""
    try:
        import ray
    except ImportError as exc:
        raise ImportError(f"the Ray backend needs Ray, which is not installed: {RAY_EXTRA}") from exc
    return ray


def _ray_installed() -> bool:
    """Whether ``import ray`` would find it, without importing it (a blocked import in sys.modules: no)."""
    if "ray" in sys.modules:
        return sys.modules["ray"] is not None
    return importlib.util.find_spec("ray") is not None


class RayBackend:
    """A BatchBackend on a Ray cluster (see the module's docstring)."""

    def __init__(self, address: str | None = "auto", *, actors: int = 2, runs_per_actor: int = 200,
                 max_restarts: int = 3, max_task_retries: int = 3,
                 runtime_env: Mapping[str, Any] | None = None) -> None:
        for name, value, least in (("actors", actors, 1), ("runs_per_actor", runs_per_actor, 1),
                                   ("max_restarts", max_restarts, -1), ("max_task_retries", max_task_retries, -1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ValueError(f"{name} must be a whole number of at least {least}, not {value!r}")
        if not _ray_installed():  # said here, not once the batch has started
            raise ImportError(f"the Ray backend needs Ray, which is not installed: {RAY_EXTRA}")
        self.address = address
        self.actors = actors
        self.runs_per_actor = runs_per_actor
        self.max_restarts = max_restarts
        self.max_task_retries = max_task_retries
        self.runtime_env = dict(runtime_env) if runtime_env is not None else None
        self._connected = False  # this backend called ray.init: shutdown() undoes it

    def connect(self) -> None:
        """Connect to (or, for ``"local"``, start) the cluster unless Ray is initialised already. Blocking:
        call it before the event loop, or let the batch call it in a worker thread."""
        ray = import_ray()
        if ray.is_initialized():
            return
        options: dict[str, Any] = {"address": self.address}
        if self.address == "local":  # this machine alone, reachable from it alone
            options.update(include_dashboard=False, _node_ip_address="127.0.0.1")
        ray.init(**options)
        self._connected = True

    def shutdown(self) -> None:
        """Disconnect (and stop a ``"local"`` cluster) if ``connect`` connected; blocking."""
        if self._connected:
            import_ray().shutdown()
            self._connected = False

    def __enter__(self) -> RayBackend:
        self.connect()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.shutdown()

    async def run(self, engine: Engine, workflow: Workflow, inputs: AsyncIterator[tuple[int, dict[str, Any]]],
                  concurrency: int, deliver: Deliver) -> None:
        if not _on_asyncio():
            raise RayBackendError("the Ray backend runs on asyncio (Ray's ObjectRefs are asyncio futures): run "
                                  "the batch under asyncio, e.g. anyio.run(main, backend='asyncio')")
        recipe = EngineRecipe.of(engine).to_dict()  # ConfigError for what cannot cross, before anything starts
        document = json.dumps(workflow.model_dump(mode="json", by_alias=True, exclude_unset=True))
        origin = workflow.origin
        file = str(origin.file.resolve()) if origin is not None and origin.file is not None else None
        await anyio.to_thread.run_sync(self.connect)
        hosts = await anyio.to_thread.run_sync(self._start, recipe, document, file)
        flying: dict[Any, int] = {}  # ObjectRef -> index, until its outcome is in
        try:
            await self._ready(hosts)
            await self._feed(hosts, inputs, min(concurrency, len(hosts) * self.runs_per_actor), deliver, flying)
        finally:
            with anyio.CancelScope(shield=True):
                await self._stop(hosts, list(flying))

    def _start(self, recipe: dict[str, Any], document: str, file: str | None) -> list[_Host]:
        """The batch's actors, created (blocking: in a worker thread)."""
        ray = import_ray()
        remote = ray.remote(RunHost)
        batch = uuid.uuid4().hex[:12]
        options: dict[str, Any] = {
            "num_cpus": 0, "max_concurrency": self.runs_per_actor, "max_restarts": self.max_restarts,
            "max_task_retries": self.max_task_retries}
        if self.runtime_env is not None:
            options["runtime_env"] = self.runtime_env
        hosts: list[_Host] = []
        try:
            for number in range(self.actors):
                actor = remote.options(name=f"{ACTOR_PREFIX}-{batch}-{number}", **options)
                hosts.append(_Host(actor.remote(recipe, document, file)))
        except Exception as exc:
            _kill(ray, [host.handle for host in hosts])
            raise RayBackendError(f"the batch's Ray actors could not be created: {_describe(exc)}") from exc
        return hosts

    async def _ready(self, hosts: list[_Host]) -> None:
        """Wait until every actor has built its engine; RayBackendError with the first one's problem."""
        for host in hosts:
            try:
                problem = await host.handle.ready.remote()
            except Exception as exc:
                raise RayBackendError(f"a Ray actor of the batch could not start: {_describe(exc)}") from None
            if problem is not None:
                raise RayBackendError(f"a Ray actor could not build the engine: {problem} (do the workers have "
                                      "the package and the functions? see engine.batch_ray)")

    async def _feed(self, hosts: list[_Host], inputs: AsyncIterator[tuple[int, dict[str, Any]]], bound: int,
                    deliver: Deliver, flying: dict[Any, int]) -> None:
        async def one(index: int, values: dict[str, Any]) -> None:
            live = [host for host in hosts if not host.dead]
            if not live:
                raise RayBackendError(f"every Ray actor of the batch died for good (each restarted up to "
                                      f"{self.max_restarts} times); the items of their runs have the errors")
            host = min(live, key=lambda host: host.load)  # chosen before the first await: loads are current
            host.load += 1
            try:
                ref = host.handle.run.remote(index, values)
            except Exception as exc:  # inputs Ray cannot serialise, an actor handle gone
                item = BatchItem(index, None, _describe(exc))
            else:
                flying[ref] = index
                item = await _outcome(ref, index, host)
                del flying[ref]  # a cancelled run stays listed, for _stop to cancel remotely
            host.load -= 1
            await deliver(item)

        await feed(inputs, bound, one)

    async def _stop(self, hosts: list[_Host], flying: list[Any]) -> None:
        """Cancel the remote runs still going, give them (and the engines' closing) a few seconds, kill the actors."""
        ray = import_ray()
        if flying:
            await anyio.to_thread.run_sync(_cancel, ray, flying)
        with anyio.move_on_after(STOP_GRACE):
            async with anyio.create_task_group() as group:
                for ref in flying:
                    group.start_soon(_settled, ref)
            async with anyio.create_task_group() as group:
                for host in hosts:
                    if not host.dead:
                        group.start_soon(_settled, host.handle.close.remote())
        await anyio.to_thread.run_sync(_kill, ray, [host.handle for host in hosts])


@dataclass
class _Host:
    """One actor of the batch, as the caller sees it."""

    handle: Any  # ray.actor.ActorHandle
    load: int = 0  # runs sent and not come back
    dead: bool = False  # died for good: no more runs go there


class RunHost:
    """The actor's class (``ray.remote(RunHost)``): one Engine, built from the recipe, running one workflow.

    Built again by Ray after a crash, from the same arguments. A problem building the engine is kept
    and reported by ``ready`` (and by each run), rather than raised: Ray does not restart an actor
    whose constructor raised, and the caller says what went wrong."""

    def __init__(self, recipe: dict[str, Any], document: str, file: str | None) -> None:
        """``document``: the workflow as JSON text; ``file``: the file it was read from on the caller's side,
        whose folder its relative ``workflow:`` paths start from."""
        from engine.dsl.loader import parse_workflow

        self.problem: str | None = None
        try:
            self.engine: Engine | None = EngineRecipe.from_dict(recipe).build()
            self.workflow = parse_workflow(document, name=file or "<batch>", file=Path(file) if file else None)
            self.engine.compile(self.workflow)
        except Exception as exc:
            self.engine, self.problem = None, f"{type(exc).__name__}: {exc}"

    async def ready(self) -> str | None:
        return self.problem

    async def run(self, index: int, values: dict[str, Any]) -> dict[str, Any]:
        if self.engine is None:
            return BatchItem(index, None, self.problem).to_dict()
        return (await run_one(self.engine, self.workflow, index, values)).to_dict()

    async def close(self) -> int:
        if self.engine is not None:
            await self.engine.aclose()
        return os.getpid()


async def _outcome(ref: Any, index: int, host: _Host) -> BatchItem:
    """The item a remote run came back with; a failure of Ray's is the item's error, with the original type."""
    from ray.exceptions import ActorDiedError

    try:
        data = await ref
    except ActorDiedError as exc:  # retries used up: the actor is gone for good
        host.dead = True
        return BatchItem(index, None, _describe(exc))
    except Exception as exc:
        return BatchItem(index, None, _describe(exc))
    return BatchItem.from_dict(data)


def _describe(exc: BaseException) -> str:
    """``TypeName: message`` of what went wrong: the original exception for a task that raised
    (Ray wraps it in a RayTaskError), Ray's own error otherwise."""
    from ray.exceptions import RayTaskError

    cause = exc.cause if isinstance(exc, RayTaskError) and exc.cause is not None else exc
    return f"{type(cause).__name__}: {cause}"


async def _settled(ref: Any) -> None:
    try:
        await ref
    except Exception:  # a cancelled run, a dead actor: settled all the same
        return


def _cancel(ray: Any, refs: list[Any]) -> None:
    for ref in refs:
        try:
            ray.cancel(ref)
        except Exception:  # finished meanwhile, or its actor is gone
            continue


def _kill(ray: Any, handles: list[Any]) -> None:
    for handle in handles:
        try:
            ray.kill(handle, no_restart=True)
        except Exception:  # gone already
            continue


def _on_asyncio() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:  # trio (or no loop)
        return False
    return True

