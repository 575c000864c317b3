"""The Engine: what a workflow runs against (models, functions, addons, templates).

    engine = Engine(models=FakeModel())          # or Engine.from_file("orchestrion.yaml")
    result = await engine.run("flows/report.yaml", {"topic": "solar"})
    async with engine.stream(workflow, inputs) as events:
        async for event in events: ...
    engine.run_sync(workflow, inputs)

No globals, nothing configured at import; an Engine may run many workflows
concurrently. Workflows are validated against what the engine knows before
anything runs.
"""

from __future__ import annotations

import functools
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import anyio

from engine.catalog import Catalog
from engine.compiler import Plan, compile_workflow
from engine.compiler.policies import ENGINE_RETRY, ENGINE_TIMEOUT
from engine.dsl.loader import WorkflowSource, load_workflow
from engine.dsl.models import DEFAULT_MAX_DEPTH, DEFAULT_MAX_TASKS, Workflow, is_image_input
from engine.errors import StoreError
from engine.events import Emitter, Event
from engine.model.client import ModelClient, ModelRequest
from engine.model.prices import Price
from engine.resilience.call import Call, RunContext, Sleep
from engine.runtime.bus import EventBus, Listener, Subscription
from engine.runtime.context import Ask, PlannedWorkflow, Services
from engine.runtime.images import load_image_inputs, plain_inputs
from engine.runtime.inputs import validate_inputs
from engine.runtime.journal import STALE_SECONDS, Journal
from engine.runtime.results import RunResult, TaskResult
from engine.runtime.resume import load_resumable, new_journal, restorable, workflow_document
from engine.runtime.scheduler import run_plan
from engine.secrets import Scrubber
from engine.store import ChatTurn, RunStore, TaskRecord
from engine.store.open import default_path
from engine.store.stats import Stats, summarize
from engine.templating import RenderLimits, TemplateRenderer

if TYPE_CHECKING:
    from contextlib import AbstractAsyncContextManager

    from engine.batch import BatchBackend, BatchItem, Inputs as BatchInputs
    from engine.chat import ChatReply, ChatSession
    from engine.config import EngineConfig
    from engine.planner import Planner, PlannerLimits, PlanOutcome


class Engine:
    """Runs workflows. ``models`` is one client for every alias, or a client per alias."""

    def __init__(
        self,
        config: EngineConfig | None = None,
        *,
        models: ModelClient | Mapping[str, ModelClient] | None = None,
        functions: Mapping[str, Callable[..., Any]] | None = None,
        prices: Mapping[str, Price] | None = None,
        model_concurrency: Mapping[str, int] | None = None,
        addon_dirs: Iterable[Path] = (),
        template_dirs: Iterable[Path] = (),
        render_limits: RenderLimits | None = None,
        sleep: Sleep = anyio.sleep,
        stream_tokens: bool = True,
        event_buffer: int = 1024,
        planner_limits: PlannerLimits | None = None,
        max_tasks: int = DEFAULT_MAX_TASKS,
        max_depth: int = DEFAULT_MAX_DEPTH,
        store: RunStore | str | None = None,
        artifacts: str | Path | None = None,
    ) -> None:
        """``config`` names providers, aliases, gates, retry and breaker rules (``Engine.from_file``
        reads one); ``models`` gives clients directly (one for every alias, or one per alias).
        With neither, every alias runs on the embedded local model (``orchestrion[local]``).
        ``max_tasks`` and ``max_depth`` bound a whole run, nested runs included, when the
        workflow's ``limits:`` does not. ``store`` keeps runs, their results and model calls
        (``engine.store``): a RunStore, or a URL opened on first use (``sqlite+aiosqlite:///runs.db``,
        ``postgresql+asyncpg://...``, ``""`` for the default file); a run is checkpointed as it goes
        and can be resumed (``resume``). ``artifacts`` is the folder generated media and image inputs
        given as bytes or URLs are written to, one folder per run (default: the configuration's
        ``artifacts``, else ``artifacts`` beside the default run store, in the user's data folder)."""
        from engine.assembly import (
            Links,
            abilities,
            clients_for,
            cost_cap,
            pipeline_for,
            prices as configured_prices,
            secrets,
        )
        from engine.config import EngineConfig, embedded_config
        from engine.planner import PlannerLimits
        from engine.resilience.breaker import Breakers
        from engine.routing import BUILTIN_FUNCTIONS

        if config is None:
            config = EngineConfig() if models is not None else embedded_config()
        self.config = config
        self.functions: dict[str, Callable[..., Any]] = {**BUILTIN_FUNCTIONS, **(functions or {})}
        self._clients = clients_for(config, models)
        self._models_given = models is not None  # clients that are objects here, not configuration
        self.addon_dirs, self.template_dirs = tuple(addon_dirs), tuple(template_dirs)  # the folders given
        vision, makers = abilities(config, self._clients)
        self.catalog = Catalog.default(self.addon_dirs, self.template_dirs, models=self._clients.by_alias,
                                       functions=self.functions, vision=vision, generators=makers)
        self.prices = {**configured_prices(config), **(prices or {})}
        self.planner_limits = planner_limits or PlannerLimits()
        self.event_buffer = event_buffer
        self.store: RunStore | None = store if not isinstance(store, str) else None
        self._store_url = store if isinstance(store, str) else None  # opened on first use, closed by aclose
        self._owns_store = False
        self._opening: anyio.Lock | None = None
        self._listeners: list[Listener] = []
        self._plans: OrderedDict[int, _Compiled] = OrderedDict()
        self._breakers = Breakers(config.breaker)
        self._sessions: dict[str, ChatSession] = {}
        self._links: Links = {}  # Redis servers of the shared rate limits and cost cap, by URL
        self.cost_cap = cost_cap(config, self._links)  # `budget:` (None: no cap across runs)
        self._pipeline = pipeline_for(config, self._clients, self._breakers, prices=self.prices,
                                      model_concurrency={**config.model_concurrency, **(model_concurrency or {})},
                                      sleep=sleep, store=self.store, links=self._links, cap=self.cost_cap)
        self._services = Services(
            pipeline=self._pipeline, functions=self.functions,
            renderer=TemplateRenderer(render_limits or RenderLimits()), catalog=self.catalog,
            compile=self.compile, plan_workflow=self._plan_workflow, stream_tokens=stream_tokens,
            scrub=secrets(config), max_depth=max_depth, max_tasks=max_tasks,
            artifacts=Path(artifacts or config.artifacts or default_artifacts()).expanduser(),
        )

    @classmethod
    def from_file(cls, path: str | Path, **options: Any) -> Engine:
        """An engine built from an ``orchestrion.yaml`` configuration file."""
        from engine.config import load_config

        return cls(load_config(path), **options)

    async def plan(self, request: str, *, model: str | None = None) -> Workflow:
        """A workflow written by the master planner for ``request``, checked like a file.

        Raises PlanningError with every attempt's problems if no valid workflow came within the
        repair limit. ``plan_outcome`` gives the attempts as well.
        """
        from engine.errors import PlanningError

        outcome = await self.plan_outcome(request, model=model)
        if outcome.workflow is None:
            raise PlanningError([attempt.problems for attempt in outcome.attempts])
        return outcome.workflow

    async def plan_outcome(self, request: str, *, model: str | None = None) -> PlanOutcome:
        """Every attempt of the master planner (first try and repairs) and the workflow, if any.
        The planner's calls go through the model pipeline like a ``plan:`` task's: gates, breakers,
        retries, timeouts and events (``task_id`` "plan")."""
        alias = model or self._services.planner_model
        bus = EventBus(self._listeners)
        emit = Emitter(f"plan-{uuid.uuid4().hex}", bus.emit if bus.active else None, self._services.scrub)
        call = Call("plan", RunContext(emit),
                    TaskResult("plan"), timeout=ENGINE_TIMEOUT, retry=ENGINE_RETRY)

        async def ask(message: ModelRequest) -> Any:
            return await self._pipeline.answer(message, call, raw=True)  # the planner checks it

        return await self._planner(ask, alias).plan(request)

    def _planner(self, ask: Ask, alias: str) -> Planner:
        from engine.planner import Planner

        return Planner(ask, self.catalog, self.compile, model=alias, limits=self.planner_limits, prices=self.prices,
                       mode=self._planner_mode(alias), choose_with_model=self.config.planner.choose_with_model)

    def _planner_mode(self, alias: str) -> Literal["guided", "free"]:
        """The configured mode; ``auto`` is guided for a model run in process (a small local one), else free."""
        from engine.assembly import provider_routes

        mode = self.config.planner.mode
        if mode != "auto":
            return mode
        route = provider_routes(self.config, {alias}).get(alias)
        return "guided" if route is not None and self.config.providers[route[0]].kind == "llama_cpp" else "free"

    async def _plan_workflow(self, request: str, ask: Ask, alias: str, task_id: str) -> PlannedWorkflow:
        """A ``plan:`` task's planner: the checked workflow, or a TaskError with the last problems."""
        from engine.planner import plan_failed

        outcome = await self._planner(ask, alias).plan(request)
        if outcome.workflow is None or outcome.document is None:
            raise plan_failed(outcome, task_id)
        return PlannedWorkflow(outcome.workflow, outcome.document, len(outcome.attempts))

    async def chat(self, message: str, *, session_id: str = "default", template: str = "chat",
                   image: Any = None) -> ChatReply:
        """One turn of a conversation: the ``chat`` template with the session's history. ``image`` (an
        ``Image``, bytes, a path or a data: URL) goes with the message: the chat template sends it to
        ``image_analysis_ai``, which must read images."""
        from engine.chat import ChatSession, reply_from

        store = await self._opened_store()
        session = self._sessions.setdefault(session_id, ChatSession(session_id))
        if store is not None:  # another process may have gone on with it: the store's history is the one
            session = self._sessions[session_id] = ChatSession(session_id)
            for turn in await store.session_turns(session_id):
                session.add(turn.role, turn.content)
        inputs: dict[str, Any] = {"message": message, "history": session.history()}
        if image is not None:
            inputs["image"] = image
        result = await self.run(self.catalog.load_workflow(template), inputs)
        reply = reply_from(result, session)
        if reply.ok:
            seq, now = len(session.messages), time.time()
            session.add("user", message)
            session.add("assistant", reply.answer)
            if store is not None:
                await store.add_turns([ChatTurn(session_id, seq, "user", message, now),
                                       ChatTurn(session_id, seq + 1, "assistant", reply.answer, now)])
        return reply

    @property
    def scrubber(self) -> Scrubber:
        """What takes the configuration's secrets out of any text or value before it leaves the engine."""
        return self._services.scrub

    def session(self, session_id: str) -> ChatSession | None:
        return self._sessions.get(session_id)

    def health(self) -> dict[str, Any]:
        """The circuit breakers' states, per model alias that has been called."""
        return {"breakers": self._breakers.health()}

    async def aclose(self) -> None:
        """Close the providers' HTTP connections, this loop's Redis connections, and the run store if the
        engine opened it."""
        for client in self._clients.all():
            close = getattr(client, "aclose", None)
            if close is not None:
                await close()
        for link in self._links.values():
            await link.aclose()
        if self.store is not None and self._owns_store:
            await self.store.aclose()
            self.store = None

    def add_listener(self, listener: Listener) -> None:
        """Call ``listener(event)`` for every event of every run (it must not block)."""
        self._listeners.append(listener)

    def remove_listener(self, listener: Listener) -> None:
        self._listeners.remove(listener)

    def load(self, workflow: WorkflowSource) -> Workflow:
        return load_workflow(workflow)

    def compile(self, workflow: WorkflowSource) -> Plan:
        """Validate a workflow against this engine and compile it (cached per Workflow object)."""
        return self._compiled(load_workflow(workflow)).plan

    def _compiled(self, loaded: Workflow) -> _Compiled:
        cached = self._plans.get(id(loaded))
        if cached is not None and cached.workflow is loaded:
            return cached
        compiled = self._plans[id(loaded)] = _Compiled(loaded, compile_workflow(loaded, self.catalog))
        if len(self._plans) > 256:
            self._plans.popitem(last=False)
        return compiled

    async def run(self, workflow: WorkflowSource, inputs: Mapping[str, Any] | None = None,
                  *, run_id: str | None = None, on_event: Listener | None = None) -> RunResult:
        """Run a workflow to the end. Invalid workflows and inputs raise before anything runs;
        a failed run is a RunResult with ``status == "failed"`` (``raise_for_status()`` raises).
        With a store, StoreError if the run cannot be recorded (before anything runs) or a result
        cannot be saved (the run fails). ``on_event`` is called with each of this run's events
        (nested runs' included), in order, besides the engine's listeners; it must not block."""
        prepared = await self.prepare(workflow, inputs, run_id=run_id)
        return await prepared.start(on_event)

    async def prepare(self, workflow: WorkflowSource, inputs: Mapping[str, Any] | None = None,
                      *, run_id: str | None = None) -> PreparedRun:
        """``run`` in two steps: the workflow and inputs are checked (and, with a store, the run is
        recorded) now; ``await prepared.start()`` runs it. A server answers "accepted, here is the
        run id" between the two."""
        return await self._prepare(workflow, inputs, run_id)

    async def resume(self, run_id: str, *, force: bool = False, on_event: Listener | None = None) -> RunResult:
        """Go on with a stored run whose process died or that was cancelled or failed: the tasks
        that finished keep their results and are not run again (a model call in flight when it
        stopped is made again). StoreError if there is no such run, it succeeded, it still runs
        elsewhere, or its workflow file changed since (``force`` resumes with the file as it is)."""
        prepared = await self.prepare_resume(run_id, force=force)
        return await prepared.start(on_event)

    async def prepare_resume(self, run_id: str, *, force: bool = False) -> PreparedRun:
        """``resume`` in two steps, as ``prepare`` is to ``run``."""
        return await self._prepare_resume(run_id, force)

    def batch(self, workflow: WorkflowSource, inputs: BatchInputs, *, concurrency: int = 16,
              backend: BatchBackend | None = None) -> AbstractAsyncContextManager[AsyncIterator[BatchItem]]:
        """Run a workflow once per input, ``concurrency`` runs at a time, and iterate over the
        BatchItems as the runs finish (not in input order)::

            async with engine.batch(workflow, inputs, concurrency=64) as results:
                async for item in results: ...

        ``inputs`` (mappings, from an iterable or an async iterable) is read lazily, as runs can
        start. An invalid workflow raises on entering the block, before any run; an invalid input
        or a failed run is an item with its ``error``, the batch goes on. Leaving the block cancels
        the runs in flight. ``backend`` runs the inputs (``LocalBackend``, this process, by default)."""
        from engine.batch import open_batch

        return open_batch(self, workflow, inputs, concurrency=concurrency, backend=backend)

    @asynccontextmanager
    async def stream(self, workflow: WorkflowSource, inputs: Mapping[str, Any] | None = None,
                     *, buffer: int | None = None) -> AsyncIterator[RunEvents]:
        """Run a workflow in the background and iterate over its events as they happen.

        Leaving the block before the run ends cancels it. After the last event
        (``run_finished``), ``events.result`` holds the RunResult.
        """
        async with self._stream((await self._prepare(workflow, inputs)).run_on, buffer) as events:
            yield events

    @asynccontextmanager
    async def stream_resume(self, run_id: str, *, force: bool = False,
                            buffer: int | None = None) -> AsyncIterator[RunEvents]:
        """``resume``, with the events of the resumed run as ``stream`` gives them."""
        async with self._stream((await self._prepare_resume(run_id, force)).run_on, buffer) as events:
            yield events

    @asynccontextmanager
    async def _stream(self, start: Callable[[EventBus], Awaitable[RunResult]],
                      buffer: int | None) -> AsyncIterator[RunEvents]:
        bus = EventBus(self._listeners)
        subscription = bus.subscribe(buffer or self.event_buffer)
        events = RunEvents(subscription)

        async def drive() -> None:
            try:
                events.result = await start(bus)
            finally:
                subscription.close()

        with subscription.receive:  # closed when the block is left, read or not
            async with anyio.create_task_group() as group:
                group.start_soon(drive)
                try:
                    yield events
                finally:
                    if events.result is None:
                        group.cancel_scope.cancel()

    def run_sync(self, workflow: WorkflowSource, inputs: Mapping[str, Any] | None = None,
                 *, backend: Literal["asyncio", "trio"] = "asyncio") -> RunResult:
        """``run`` for code without an event loop."""
        return anyio.run(functools.partial(self.run, workflow, inputs), backend=backend)

    async def _prepare(self, workflow: WorkflowSource, inputs: Mapping[str, Any] | None,
                       run_id: str | None = None) -> PreparedRun:
        """A run, checked and ready to start on a bus: invalid workflows and inputs raise here."""
        if isinstance(workflow, str | Path):  # reading and parsing a file stays off the event loop
            workflow = await anyio.to_thread.run_sync(load_workflow, workflow)
        loaded = load_workflow(workflow)
        compiled = self._compiled(loaded)
        plan = compiled.plan
        values = validate_inputs(plan.inputs, inputs)
        store = await self._opened_store()
        run_id = run_id or uuid.uuid4().hex
        values = await self._images(plan, values, run_id)
        journal = (await new_journal(store, loaded, plan, plain_inputs(values), run_id, document=compiled.document())
                   if store is not None else None)
        return PreparedRun(self._services, self._listeners, plan, values, run_id, journal)

    async def _images(self, plan: Plan, values: dict[str, Any], run_id: str) -> dict[str, Any]:
        """Image inputs read (and kept in the run's artefact folder when they have no file of their own)."""
        if not any(is_image_input(schema) for schema in plan.inputs.values()):
            return values
        folder = self._services.artifacts
        return await load_image_inputs(plan.inputs, values, folder / run_id if folder is not None else None)

    async def stats(self, *, since: float = 0.0, workflow: str | None = None) -> Stats:
        """Model calls since ``since`` (a time.time()), per model and per workflow: calls, failures by
        kind, retries, cache hits, tokens, cost, latency percentiles. StoreError without a store."""
        store = await self._required_store("keeps no model calls")
        return summarize(await store.attempts_since(since, workflow), since)

    async def run_store(self) -> RunStore | None:
        """The run store, opened (and swept for runs whose process died) on first use; None without one."""
        return await self._opened_store()

    async def _required_store(self, why: str) -> RunStore:
        store = await self._opened_store()
        if store is None:
            raise StoreError(f"this engine has no run store, so it {why}: give Engine(store=...)")
        return store

    async def _opened_store(self) -> RunStore | None:
        """The store, opened (and swept for runs whose process died) the first time it is needed."""
        if self.store is None and self._store_url is not None:
            if self._opening is None:  # made here: an anyio lock belongs to the running loop
                self._opening = anyio.Lock()
            async with self._opening:  # the first runs arrive together: one store, not one each
                if self.store is None:
                    from engine.store import open_store

                    store = await open_store(self._store_url or None)
                    await store.mark_interrupted(time.time() - STALE_SECONDS)
                    self.store, self._owns_store = store, True
                    self._pipeline.cache.store = store  # cached answers go where the runs go
        return self.store

    async def _prepare_resume(self, run_id: str, force: bool) -> PreparedRun:
        store = await self._required_store("keeps no runs to resume")
        resumable = await load_resumable(store, run_id, force=force)
        plan = self.compile(resumable.workflow)
        values = await self._images(plan, validate_inputs(plan.inputs, resumable.inputs), run_id)
        journal = Journal(store, resumable.stored.run)
        return PreparedRun(self._services, self._listeners, plan, values, run_id, journal,
                           restorable(resumable.stored, plan))


@dataclass
class _Compiled:
    """A Workflow object's plan, and its document as the run store records it (dumped on first use,
    then given to every run of that object: it is never changed)."""

    workflow: Workflow
    plan: Plan
    _document: dict[str, Any] | None = None

    def document(self) -> dict[str, Any]:
        if self._document is None:
            self._document = workflow_document(self.workflow)
        return self._document


@dataclass(frozen=True)
class PreparedRun:
    """A checked run (``Engine.prepare``), recorded in the store if there is one: ``start`` runs it."""

    services: Services
    listeners: list[Listener]  # the engine's, as they are when the run starts
    plan: Plan
    inputs: dict[str, Any]  # checked, defaults filled in
    run_id: str
    journal: Journal | None
    restored: Mapping[str, TaskRecord] | None = None

    @property
    def workflow(self) -> str:
        return self.plan.name

    async def start(self, on_event: Listener | None = None) -> RunResult:
        """Run it to the end; ``on_event`` as for ``Engine.run``."""
        return await self.run_on(EventBus(self.listeners if on_event is None else [*self.listeners, on_event]))

    async def run_on(self, bus: EventBus) -> RunResult:
        return await run_plan(self.services, self.plan, self.inputs, bus=bus, run_id=self.run_id,
                              journal=self.journal, restored=self.restored)


class RunEvents:
    """The events of one streamed run; ``result`` is set once the run has ended."""

    def __init__(self, subscription: Subscription) -> None:
        self._subscription = subscription
        self.result: RunResult | None = None

    def __aiter__(self) -> AsyncIterator[Event]:
        return self._subscription


def default_artifacts() -> Path:
    """``artifacts`` beside the default run store: ``~/.local/share/orchestrion/artifacts``."""
    return default_path().parent / "artifacts"
