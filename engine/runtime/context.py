"""What one run needs from the engine, and the state it builds up.

``Services`` is the engine's side (clients, functions, renderer, prices...),
shared by nested runs; ``RunState`` holds one run's values and results.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import anyio

from engine.catalog import Catalog
from engine.compiler.plan import Binding, Node, NodeId, Plan
from engine.config import RetryConfig
from engine.dsl.models import Workflow
from engine.errors import ConfigError
from engine.events import Event
from engine.model.client import ModelClient
from engine.model.prices import Price
from engine.planner import PlannerLimits
from engine.resilience.breaker import Breakers
from engine.resilience.budget import Budget
from engine.resilience.gates import Gatekeeper
from engine.resilience.ratelimit import RateLimiter
from engine.runtime.bus import EventBus
from engine.runtime.results import TaskResult
from engine.templating import TemplateRenderer

Sleep = Callable[[float], Awaitable[None]]


@dataclass(frozen=True)
class Services:
    """The engine's parts a run uses."""

    clients: Mapping[str, ModelClient]
    default_client: ModelClient | None
    functions: Mapping[str, Callable[..., Any]]
    renderer: TemplateRenderer
    catalog: Catalog
    prices: Mapping[str, Price]
    model_concurrency: Mapping[str, int]
    compile: Callable[[Workflow], Plan]
    load_template: Callable[[str, Workflow | None], Workflow]
    sleep: Sleep = anyio.sleep
    stream_tokens: bool = True
    max_depth: int = 8
    breakers: Breakers | None = None
    gatekeeper: Gatekeeper | None = None
    tokenizers: Mapping[str, str | None] = field(default_factory=dict)
    rate_limiters: Mapping[str, RateLimiter] = field(default_factory=dict)
    retry: RetryConfig = field(default_factory=RetryConfig)
    planner_model: str = "thinking_ai"
    planner_limits: PlannerLimits = field(default_factory=PlannerLimits)

    def client(self, alias: str) -> ModelClient:
        client = self.clients.get(alias, self.default_client)
        if client is None:
            raise ConfigError(f"no model client for the alias {alias!r}: configure it under `models:` "
                              "or give Engine(models=...)")
        return client


@dataclass
class RunState:
    """One run: its plan, inputs, values and results."""

    run_id: str
    plan: Plan
    workflow: Workflow | None
    inputs: dict[str, Any]
    bus: EventBus
    budget: Budget
    depth: int = 0
    values: dict[NodeId, Any] = field(default_factory=dict)
    results: dict[NodeId, TaskResult] = field(default_factory=dict)
    stopped_rounds: dict[str, int] = field(default_factory=dict)  # repeat group -> last round to run
    model_limiters: dict[str, anyio.CapacityLimiter] = field(default_factory=dict)
    system_messages: dict[NodeId, str | None] = field(default_factory=dict)  # per node, when not templated

    def emit(self, factory: Callable[..., Event], **fields: Any) -> None:
        """Build and send an event, only if anybody listens."""
        if self.bus.active:
            self.bus.emit(factory(run_id=self.run_id, time=time.time(), **fields))

    def value_of(self, binding: Binding, name: str, round_: int | None, extra: Mapping[str, Any]) -> Any:
        if binding.kind == "input":
            return self.inputs[name]
        if binding.kind == "task":
            ran = [n for n in binding.nodes if self.results[n].status not in ("skipped", "pending")]
            return self.values.get(ran[-1]) if ran else None
        if binding.kind == "loop":
            return {"round": round_}
        if binding.kind == "item":
            return extra[name]
        return None

    def variables(self, node: Node, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
        if not node.bindings:
            return {}
        extra = extra or {}
        return {name: self.value_of(binding, name, node.round, extra) for name, binding in node.bindings.items()
                if binding.kind != "item" or name in extra}  # items are bound per item, by for_each
