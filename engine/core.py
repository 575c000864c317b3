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
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import anyio

from engine.catalog import DEFAULT_MODEL_ALIASES, Catalog
from engine.compiler import Plan, compile_workflow
from engine.dsl.loader import WorkflowSource, load_workflow
from engine.dsl.models import Workflow
from engine.errors import ConfigError
from engine.events import Event
from engine.model.client import ModelClient
from engine.model.prices import Price
from engine.runtime.bus import EventBus, Listener, Subscription
from engine.runtime.context import Services, Sleep
from engine.runtime.inputs import validate_inputs
from engine.runtime.results import RunResult
from engine.runtime.scheduler import run_plan
from engine.templating import RenderLimits, TemplateRenderer

if TYPE_CHECKING:
    from engine.chat import ChatReply, ChatSession
    from engine.config import EngineConfig
    from engine.model.client import ModelRequest
    from engine.planner import PlanOutcome


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
    ) -> None:
        """``config`` names providers, aliases, gates, retry and breaker rules (``Engine.from_file``
        reads one); ``models`` gives clients directly (one for every alias, or one per alias).
        With neither, every alias runs on the embedded local model (``orchestrion[local]``)."""
        from engine.assembly import build_clients, prices as configured_prices, rate_limiters
        from engine.config import EngineConfig
        from engine.providers.settings import LlamaCppProviderConfig
        from engine.resilience.breaker import Breakers
        from engine.resilience.gates import Gatekeeper

        if config is None:
            config = EngineConfig() if models is not None else EngineConfig(
                providers={"local": LlamaCppProviderConfig(kind="llama_cpp")}, default_provider="local")
        self.config = config
        from engine.routing import BUILTIN_FUNCTIONS

        self.functions: dict[str, Callable[..., Any]] = {**BUILTIN_FUNCTIONS, **(functions or {})}
        aliases = set(DEFAULT_MODEL_ALIASES) | set(config.models)
        if isinstance(models, Mapping):
            clients: dict[str, ModelClient] = {**build_clients(config, aliases), **models}
        else:
            clients = build_clients(config, aliases) if models is None else {}
        self.catalog = Catalog.default(addon_dirs, template_dirs, models=clients, functions=self.functions)
        self.event_buffer = event_buffer
        self._listeners: list[Listener] = []
        self._plans: OrderedDict[int, tuple[Workflow, Plan]] = OrderedDict()
        self._breakers = Breakers(config.breaker)
        self._sessions: dict[str, ChatSession] = {}
        self._services = Services(
            clients=clients, default_client=None if isinstance(models, Mapping) else models,
            functions=self.functions, renderer=TemplateRenderer(render_limits or RenderLimits()),
            catalog=self.catalog, prices={**configured_prices(config), **(prices or {})},
            model_concurrency={**config.model_concurrency, **(model_concurrency or {})},
            compile=self.compile, load_template=self._load_template, sleep=sleep, stream_tokens=stream_tokens,
            breakers=self._breakers,
            gatekeeper=Gatekeeper(config.gates, {alias: m.context_window for alias, m in config.models.items()}),
            tokenizers={alias: m.tokenizer for alias, m in config.models.items()},
            rate_limiters=rate_limiters(config), retry=config.retry,
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
        from engine.planner import Planner

        alias = model or self._services.planner_model
        client = self._services.client(alias)

        async def ask(message: ModelRequest) -> str:
            return (await client.complete(message)).text

        planner = Planner(ask, self.catalog, self.compile, model=alias, limits=self._services.planner_limits,
                          prices=self._services.prices)
        return await planner.plan(request)

    async def chat(self, message: str, *, session_id: str = "default", template: str = "chat") -> ChatReply:
        """One turn of a conversation: the ``chat`` template with the session's history."""
        from engine.chat import ChatSession, reply_from

        session = self._sessions.setdefault(session_id, ChatSession(session_id))
        result = await self.run(self._load_template(template, None),
                                {"message": message, "history": session.history()})
        reply = reply_from(result, session)
        if reply.ok:
            session.add("user", message)
            session.add("assistant", reply.answer)
        return reply

    def session(self, session_id: str) -> ChatSession | None:
        return self._sessions.get(session_id)

    def health(self) -> dict[str, Any]:
        """The circuit breakers' states, per model alias that has been called."""
        return {"breakers": self._breakers.health()}

    async def aclose(self) -> None:
        """Close the providers' HTTP connections."""
        for client in {id(c): c for c in self._services.clients.values()}.values():
            close = getattr(client, "aclose", None)
            if close is not None:
                await close()

    def add_listener(self, listener: Listener) -> None:
        """Call ``listener(event)`` for every event of every run (it must not block)."""
        self._listeners.append(listener)

    def remove_listener(self, listener: Listener) -> None:
        self._listeners.remove(listener)

    def load(self, workflow: WorkflowSource) -> Workflow:
        return load_workflow(workflow)

    def compile(self, workflow: WorkflowSource) -> Plan:
        """Validate a workflow against this engine and compile it (cached per Workflow object)."""
        loaded = load_workflow(workflow)
        cached = self._plans.get(id(loaded))
        if cached is not None and cached[0] is loaded:
            return cached[1]
        plan = compile_workflow(loaded, self.catalog)
        self._plans[id(loaded)] = (loaded, plan)
        if len(self._plans) > 256:
            self._plans.popitem(last=False)
        return plan

    async def run(self, workflow: WorkflowSource, inputs: Mapping[str, Any] | None = None,
                  *, run_id: str | None = None) -> RunResult:
        """Run a workflow to the end. Invalid workflows and inputs raise before anything runs;
        a failed run is a RunResult with ``status == "failed"`` (``raise_for_status()`` raises)."""
        loaded, plan, values = self._prepare(workflow, inputs)
        return await run_plan(self._services, plan, loaded, values, bus=EventBus(self._listeners), run_id=run_id)

    @asynccontextmanager
    async def stream(self, workflow: WorkflowSource, inputs: Mapping[str, Any] | None = None,
                     *, buffer: int | None = None) -> AsyncIterator[RunEvents]:
        """Run a workflow in the background and iterate over its events as they happen.

        Leaving the block before the run ends cancels it. After the last event
        (``run_finished``), ``events.result`` holds the RunResult.
        """
        loaded, plan, values = self._prepare(workflow, inputs)
        bus = EventBus(self._listeners)
        subscription = bus.subscribe(buffer or self.event_buffer)
        events = RunEvents(subscription)

        async def drive() -> None:
            try:
                events.result = await run_plan(self._services, plan, loaded, values, bus=bus)
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

    def _prepare(self, workflow: WorkflowSource, inputs: Mapping[str, Any] | None
                 ) -> tuple[Workflow, Plan, dict[str, Any]]:
        loaded = load_workflow(workflow)
        plan = self.compile(loaded)
        return loaded, plan, validate_inputs(plan.inputs, inputs)

    def _load_template(self, reference: str, parent: Workflow | None) -> Workflow:
        if "/" in reference or reference.endswith((".yaml", ".yml", ".json")):
            origin = parent.origin if parent is not None else None
            base = origin.file.parent if origin is not None and origin.file is not None else Path.cwd()
            return load_workflow(base / reference)
        if reference not in self.catalog.templates:
            raise ConfigError(f"unknown template {reference!r}")
        return load_workflow(self.catalog.templates[reference])


class RunEvents:
    """The events of one streamed run; ``result`` is set once the run has ended."""

    def __init__(self, subscription: Subscription) -> None:
        self._subscription = subscription
        self.result: RunResult | None = None

    def __aiter__(self) -> AsyncIterator[Event]:
        return self._subscription
