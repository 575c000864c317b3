"""A model call as a pipeline of small stages, in the order a request meets them::

    fallback chain ─▶ structured output and repairs ─▶ gate ─▶ (response cache) ─▶ retry
        ─▶ budget ─▶ slots ─▶ rate limit ─▶ circuit breaker ─▶ time limit ─▶ provider

The fallback chain tries each model in turn: an error that retrying did not
fix, an open breaker, or a context window too small moves to the next model
(``TaskFellBack``); a gate's denial does not. The breaker is asked last, after
any wait for a slot or a rate limit, so a call that waited behind a dead
endpoint is refused as soon as its breaker has opened. Which transient errors are
retried on the same model first, and which move on at once, is the task's
``retry.on`` policy (``retry.worth_retrying``): by default an unreachable, hanging or
failing provider is left at once for the next model, and retried with backoff
only when there is none. Breaker, budget, rate limit,
slots and the time limit act on every attempt, so they sit inside the retry.

Under a cost limit, a request without ``max_tokens`` is given one before each
attempt's stages (``SpendStage.bound``): what the unreserved budget can pay, which
the spend stage then reserves, so a provider that keeps to it costs no more than was reserved.

Each stage is its own module and is tested alone. ``build_pipeline`` keeps only
the stages an engine's configuration needs (no gates, no rate limits: no such
stage), and one coroutine runs an attempt through all of them (``Stage`` in
``call.py``; the time limit is a context manager, ``timeout.py``): a call in
flight holds two frames of the pipeline's, not one per stage, which is what
lets ten thousand of them run at once for little more than the calls cost.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio

from engine.config import RetryConfig
from engine.errors import ModelError
from engine.events import TaskFellBack
from engine.model.client import ModelRequest, ModelResponse
from engine.model.prices import Price
from engine.resilience.breaker import Breakers
from engine.resilience.budget import SpendStage
from engine.resilience.call import Bound, Call, Handler, Sleep, Stage, for_model
from engine.resilience.circuit import BreakerStage
from engine.resilience.gates import Gatekeeper, GateStage
from engine.resilience.hedge import HedgeFailed, race
from engine.resilience.provider import Clients, ProviderStage
from engine.resilience.ratelimit import RateLimiter, RateLimitStage
from engine.resilience.repair import answer_with_repairs
from engine.resilience.retry import Retrier, stays_on_model, worth_retrying
from engine.resilience.slots import Slot, SlotStage
from engine.resilience.timeout import time_limit


@dataclass(frozen=True)
class PipelineParts:
    """What the stages are built from; empty parts leave their stage out."""

    clients: Clients
    prices: Mapping[str, Price] = field(default_factory=dict)
    breakers: Breakers | None = None
    gatekeeper: Gatekeeper | None = None
    tokenizers: Mapping[str, str | None] = field(default_factory=dict)
    rate_limiters: Mapping[str, RateLimiter] = field(default_factory=dict)
    slots: Mapping[str, Sequence[Slot]] = field(default_factory=dict)  # alias -> its concurrency slots
    retry: RetryConfig = field(default_factory=RetryConfig)
    sleep: Sleep = anyio.sleep


class ModelPipeline:
    def __init__(self, stages: Sequence[Stage], send: Handler, retrier: Retrier, gate: GateStage | None = None,
                 bound: Bound | None = None) -> None:
        self.stages = tuple(stages)  # every attempt's, in order
        self.send = send  # the provider's answer
        self.retrier = retrier
        self.gate = gate
        self.bound = bound  # the request's answer bounded to what the first stage will reserve

    def answer(self, request: ModelRequest, call: Call, chain: Sequence[str] | None = None, *,
               raw: bool = False) -> Awaitable[Any]:
        """The value of the first model of ``chain`` (default: the request's model) that answers: its
        text, or its JSON value if the request has an output schema (unless ``raw``: a caller that checks
        and repairs the answer itself, as the master planner does). A single model asked for text, the
        common case, is answered without a coroutine of this method's own."""
        chain = chain or (request.model,)
        if len(chain) == 1 and chain[0] == request.model and (raw or request.output_schema is None):
            return self.respond(request, call)
        return self._first_answer(request, call, chain, raw)

    async def _first_answer(self, request: ModelRequest, call: Call, chain: Sequence[str], raw: bool) -> Any:
        """Each model of the chain in turn, until one answers (two at once once a hedge is due)."""
        index, last = 0, len(chain) - 1
        while True:  # an index, not an iterator: nothing more stays alive while the call is in flight
            alias = chain[index]
            routed = request if alias == request.model else for_model(request, alias)
            call.fallback = index < last
            step = 1
            try:
                if call.hedge_after is None or index == last:
                    return await self._value(routed, call, raw=raw)
                hedge = for_model(request, chain[index + 1])
                ask = functools.partial(self._value, raw=raw)
                try:
                    value, step = await race(ask, routed, hedge, call, more_after=index + 1 < last)
                except HedgeFailed as failed:
                    step = failed.asked
                    raise failed.error from None
                return value
            except ModelError as error:
                if index + step > last or error.kind == "denied" or stays_on_model(error, call):
                    error.task_id, error.attempt = call.task_id, call.tally.attempts
                    raise
                call.run.emit(TaskFellBack, task_id=call.task_id, attempt=call.tally.attempts, from_model=alias,
                              to_model=chain[index + step], error_kind=error.kind, error=error.message)
            index += step

    async def _value(self, request: ModelRequest, call: Call, *, raw: bool) -> Any:
        if raw or request.output_schema is None:
            return await self.respond(request, call)
        return await answer_with_repairs(self.respond, request, call)

    async def respond(self, request: ModelRequest, call: Call, *, first: bool = True) -> str:
        """One model's answer. The first attempt is gated, and retried if it fails; each attempt runs
        every stage's enter in order, the provider under the time limit, every entered exit in reverse."""
        if first and self.gate is not None:
            try:
                request = await self.gate.route(request, call)
            except ModelError as denied:
                denied.task_id, denied.attempt = call.task_id, call.tally.attempts
                raise
        # Bounded per attempt, from the budget left now; a retry starts again from the unbounded request.
        sent = request if self.bound is None else self.bound(request, call)
        stages, entered = self.stages, 0
        try:
            for stage in stages:
                pending = stage.enter(sent, call)
                if pending is not None:
                    await pending
                entered += 1
            with time_limit(sent, call):
                response = await self.send(sent, call)
        except BaseException as error:
            await self._exit(stages[:entered], sent, call, None, error)
            if isinstance(error, ModelError):
                call.run.emit.scrub.error(error)  # a provider may echo the key in its error body
                error.task_id, error.attempt = call.task_id, call.tally.attempts
                if first and worth_retrying(error, call):
                    return await self._retry(error, request, call)
            raise
        await self._exit(stages, sent, call, response, None)
        return response.text

    def _retry(self, failure: ModelError, request: ModelRequest, call: Call) -> Awaitable[str]:
        # Its own function: a closure in `respond` would cost every call its cells, failed or not.
        return self.retrier.again(failure, lambda: self.respond(request, call, first=False), call, request.model)

    @staticmethod
    async def _exit(stages: Sequence[Stage], request: ModelRequest, call: Call, response: ModelResponse | None,
                    error: BaseException | None) -> None:
        for stage in reversed(stages):
            pending = stage.exit(request, call, response, error)
            if pending is not None:
                await pending


def build_pipeline(parts: PipelineParts) -> ModelPipeline:
    provider = ProviderStage(parts.clients, parts.prices)
    spend = SpendStage(parts.prices)
    stages: list[Stage] = [spend]  # first: it reserves what `bound` computed, with no wait in between
    if parts.slots:
        stages.append(SlotStage(parts.slots))
    if parts.rate_limiters:
        stages.append(RateLimitStage(parts.rate_limiters, parts.sleep))
    if parts.breakers is not None:
        stages.append(BreakerStage(parts.breakers))
    stages.append(provider)
    gate = None
    if parts.gatekeeper is not None and parts.gatekeeper.active:
        gate = GateStage(parts.gatekeeper, parts.clients, parts.tokenizers)
    breakers = parts.breakers
    # An open breaker ends a call's retries on that model; read only where reading does not block.
    is_open = breakers.is_open if breakers is not None and not breakers.blocking else None
    retrier = Retrier(parts.sleep, parts.retry.attempts, parts.retry.retry_after_max, is_open)
    return ModelPipeline(stages, provider.send, retrier, gate, spend.bound)
