"""A model call as a pipeline of small stages, in the order a request meets them::

    fallback chain ─▶ structured output and repairs ─▶ gate ─▶ retry
        ─▶ budget ─▶ slots ─▶ rate limit ─▶ circuit breaker ─▶ time limit ─▶ provider

and, for a task with ``cache:``, ``gate ─▶ response cache ─▶ structured output and
repairs ─▶ retry ─▶ ...``: the request as first asked is gated, then looked up;
only on a miss is it asked (and repaired, each repair gated), and the valid
answer is kept under it (``cache.py``). A hit spends no attempt, budget, slot,
rate limit or breaker trial.

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
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio

from engine.config import RetryConfig
from engine.errors import ModelError
from engine.events import TaskFellBack
from engine.model.client import ModelRequest, ModelResponse
from engine.model.output import parse_output
from engine.model.prices import Price
from engine.resilience.breaker import Breakers
from engine.resilience.budget import SpendStage
from engine.resilience.cache import Clock, ResponseCache
from engine.resilience.call import Bound, Call, Handler, Sleep, Stage, for_model
from engine.resilience.cap import CostCap
from engine.resilience.circuit import BreakerStage
from engine.resilience.gates import Gatekeeper, GateStage
from engine.resilience.hedge import HedgeFailed, race
from engine.resilience.provider import Clients, ProviderStage
from engine.resilience.ratelimit import Limiter, RateLimitStage
from engine.resilience.repair import answer_with_repairs
from engine.resilience.retry import Retrier, stays_on_model, worth_retrying
from engine.resilience.slots import Slot, SlotStage
from engine.resilience.timeout import time_limit
from engine.store.base import RunStore
from engine.store.memory import MemoryStore


@dataclass(frozen=True)
class PipelineParts:
    """What the stages are built from; empty parts leave their stage out."""

    clients: Clients
    prices: Mapping[str, Price] = field(default_factory=dict)
    breakers: Breakers | None = None
    gatekeeper: Gatekeeper | None = None
    tokenizers: Mapping[str, str | None] = field(default_factory=dict)
    rate_limiters: Mapping[str, Limiter] = field(default_factory=dict)
    slots: Mapping[str, Sequence[Slot]] = field(default_factory=dict)  # alias -> its concurrency slots
    retry: RetryConfig = field(default_factory=RetryConfig)
    sleep: Sleep = anyio.sleep
    store: RunStore | None = None  # where cached answers live; None: a MemoryStore of the pipeline's own
    clock: Clock = time.time  # the response cache's, for its entries' expiry
    cap: CostCap | None = None  # the cost cap across runs (``budget:``), if any


class ModelPipeline:
    def __init__(self, stages: Sequence[Stage], send: Handler, retrier: Retrier, cache: ResponseCache, *,
                 gate: GateStage | None = None, bound: Bound | None = None) -> None:
        self.stages = tuple(stages)  # every attempt's, in order
        self.send = send  # the provider's answer
        self.retrier = retrier
        self.cache = cache  # asked only by calls whose task has `cache:`
        self.gate = gate
        self.bound = bound  # the request's answer bounded to what the first stage will reserve

    def answer(self, request: ModelRequest, call: Call, chain: Sequence[str] | None = None, *,
               raw: bool = False) -> Awaitable[Any]:
        """The value of the first model of ``chain`` (default: the request's model) that answers: its
        text, or its JSON value if the request has an output schema (unless ``raw``: a caller that checks
        and repairs the answer itself, as the master planner does). A single model asked for text, the
        common case, is answered without a coroutine of this method's own."""
        chain = chain or (request.model,)
        if (len(chain) == 1 and chain[0] == request.model and (raw or request.output_schema is None)
                and call.cache is None):
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
        if call.cache is not None and not raw:  # a raw answer is checked by its caller: not kept unchecked
            return await self._cached(request, call)
        if raw or request.output_schema is None:
            return await self.respond(request, call)
        return await answer_with_repairs(self.respond, request, call)

    async def _cached(self, request: ModelRequest, call: Call) -> Any:
        """Gated, then answered from the cache; or asked (and repaired), and its valid answer kept under
        the request as first asked."""
        routed = await self._route(request, call)
        cache, schema = self.cache, routed.output_schema
        key = cache.key(routed)
        text = await cache.lookup(key, routed, call)
        if text is not None:
            return text if schema is None else parse_output(text, schema, routed.model)
        rounds = _Rounds(self.respond)
        value = await (rounds(routed, call) if schema is None else answer_with_repairs(rounds, routed, call))
        assert rounds.answer is not None
        await cache.keep(key, routed, call, rounds.answer, rounds.cost_usd)
        return value

    async def _route(self, request: ModelRequest, call: Call) -> ModelRequest:
        """The request as the gate sends it on: to the same alias, or another one, or denied."""
        if self.gate is None:
            return request
        try:
            return await self.gate.route(request, call)
        except ModelError as denied:
            denied.task_id, denied.attempt = call.task_id, call.tally.attempts
            raise

    async def respond(self, request: ModelRequest, call: Call, *, first: bool = True, gated: bool = False) -> str:
        """One model's answer. The first attempt is gated (unless ``gated`` already), and retried if it fails;
        each attempt runs every stage's enter in order, the provider under the time limit, every entered exit
        in reverse."""
        if first and not gated and self.gate is not None:
            request = await self._route(request, call)
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
    spend = SpendStage(parts.prices, parts.cap)
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
    cache = ResponseCache(parts.store if parts.store is not None else MemoryStore(), parts.clients, parts.clock)
    return ModelPipeline(stages, provider.send, retrier, cache, gate=gate, bound=spend.bound)


class _Rounds:
    """A cached call's rounds, as ``respond``: its request (gated already), then any repairs (each gated).
    Notes the last answer and adds up what every round cost: the cache keeps both."""

    __slots__ = ("answer", "cost_usd", "respond")

    def __init__(self, respond: Callable[..., Awaitable[str]]) -> None:
        self.respond = respond
        self.answer: ModelResponse | None = None
        self.cost_usd = 0.0

    async def __call__(self, request: ModelRequest, call: Call) -> str:
        text = await self.respond(request, call, gated=self.answer is None)
        self.answer = call.answered
        self.cost_usd += call.answered_cost
        return text
