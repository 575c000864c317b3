"""A model call as a pipeline of small stages, in the order a request meets them::

    fallback chain ─▶ structured output and repairs ─▶ gate ─▶ (response cache) ─▶ retry
        ─▶ circuit breaker ─▶ budget ─▶ rate limit ─▶ per-alias slots ─▶ timeout ─▶ provider

The fallback chain tries each model in turn: an error that retrying did not
fix, an open breaker, or a context window too small moves to the next model
(``TaskFellBack``), a gate's denial does not. Breaker, budget, rate limit and
timeout act on every attempt, so they sit inside the retry stage.

``build_pipeline`` composes the stages an engine's configuration needs,
leaving out the ones with nothing to do (no gates, no rate limits...), so a
call pays only for what is configured. Each stage is its own module and is
tested alone.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio

from engine.config import RetryConfig
from engine.errors import ModelError
from engine.events import TaskFellBack
from engine.model.client import ModelRequest
from engine.model.prices import Price
from engine.resilience.breaker import Breakers
from engine.resilience.budget import SpendStage
from engine.resilience.call import Call, Handler, Sleep, for_model
from engine.resilience.circuit import BreakerStage
from engine.resilience.gates import Gatekeeper, GateStage
from engine.resilience.provider import Clients, ProviderStage
from engine.resilience.ratelimit import RateLimiter, RateLimitStage
from engine.resilience.repair import answer_with_repairs
from engine.resilience.retry import RetryStage
from engine.resilience.slots import SlotStage
from engine.resilience.timeout import TimeoutStage


@dataclass(frozen=True)
class PipelineParts:
    """What the stages are built from; empty parts leave their stage out."""

    clients: Clients
    prices: Mapping[str, Price] = field(default_factory=dict)
    breakers: Breakers | None = None
    gatekeeper: Gatekeeper | None = None
    tokenizers: Mapping[str, str | None] = field(default_factory=dict)
    rate_limiters: Mapping[str, RateLimiter] = field(default_factory=dict)
    model_concurrency: Mapping[str, int] = field(default_factory=dict)
    retry: RetryConfig = field(default_factory=RetryConfig)
    sleep: Sleep = anyio.sleep


class ModelPipeline:
    def __init__(self, handler: Handler) -> None:
        self.handler = handler  # the gate, or the first stage configured after it

    async def answer(self, request: ModelRequest, call: Call, chain: Sequence[str] | None = None, *,
                     raw: bool = False) -> Any:
        """The value of the first model of ``chain`` (default: the request's model) that answers.

        ``raw``: the answer's text even when the request has an output schema, for a caller that
        checks (and repairs) the answer itself, as the master planner does.
        """
        chain = chain or (request.model,)
        last = len(chain) - 1
        for index, alias in enumerate(chain):
            try:
                routed = request if alias == request.model else for_model(request, alias)
                if raw:
                    return (await self.handler(routed, call)).text
                return await answer_with_repairs(self.handler, routed, call)
            except ModelError as error:
                if index == last or error.kind == "denied":
                    error.task_id, error.attempt = call.task_id, call.attempts
                    raise
                call.run.emit(TaskFellBack, task_id=call.task_id, attempt=call.attempts, from_model=alias,
                              to_model=chain[index + 1], error_kind=error.kind, error=error.message)
        raise AssertionError("the chain is not empty")


def build_pipeline(parts: PipelineParts) -> ModelPipeline:
    handler: Handler = ProviderStage(parts.clients)
    handler = TimeoutStage(handler)
    if parts.model_concurrency:
        handler = SlotStage(handler, parts.model_concurrency)
    if parts.rate_limiters:
        handler = RateLimitStage(handler, parts.rate_limiters, parts.sleep)
    handler = SpendStage(handler, parts.prices)
    if parts.breakers is not None:
        handler = BreakerStage(handler, parts.breakers)
    handler = RetryStage(handler, parts.sleep, parts.retry.attempts, parts.retry.retry_after_max)
    if parts.gatekeeper is not None and parts.gatekeeper.active:
        handler = GateStage(handler, parts.gatekeeper, parts.clients, parts.tokenizers)
    return ModelPipeline(handler)
