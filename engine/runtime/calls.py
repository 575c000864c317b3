"""Model calls: gates, breakers, rate limits, retries, fallbacks, timeouts, structured output, cost.

For each model of the task's fallback chain:

1. the token gate decides (count the rendered request; switch alias, deny, or
   refuse a request that does not fit the context window) before anything is
   spent;
2. attempts, retried while the error is transient with exponential backoff and
   full jitter, ``Retry-After`` honoured but clamped, attempts capped per error
   class, and a total retry time budget (tenacity, sleeping through the engine's
   ``sleep``); each attempt asks the endpoint's circuit breaker first (an open
   one sends the call to the next model at once), waits for the provider's rate
   limits, reserves its estimated cost, and settles it on the real usage;
3. a persistent error, an open breaker, or retries exhausted move to the next
   model. An invalid structured answer is asked again with the error fed back.

Every gate decision, retry, fallback and breaker change is an event.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
from tenacity import AsyncRetrying, retry_if_exception

from engine.compiler.plan import Node, NodePolicies, RetrySpec
from engine.errors import InvalidOutputError, ModelError, TaskError
from engine.events import BreakerStateChanged, GateApplied, TaskFellBack, TaskRetrying, TokenDelta
from engine.model.client import ModelRequest, ModelResponse, TextDelta
from engine.model.output import parse_output, repair_request
from engine.model.prices import Price, estimate_usage
from engine.model.tokens import count_request
from engine.resilience.breaker import Admission, EndpointBreaker
from engine.resilience.retry import ModelStop, ModelWait
from engine.runtime.context import RunState, Services
from engine.runtime.results import TaskResult

REPAIR_ATTEMPTS = 2
_FREE = Price()


class ModelCaller:
    """The model calls of one node; usage and cost add up into its TaskResult."""

    def __init__(self, services: Services, state: RunState, node: Node, result: TaskResult) -> None:
        assert node.policies is not None
        self.services, self.state, self.node, self.result = services, state, node, result
        self.policies: NodePolicies = node.policies

    async def call(self, request: ModelRequest, chain: tuple[str, ...] | None = None) -> Any:
        """Answer with the first model of the fallback chain that succeeds; return the value."""
        chain = chain or self.policies.models
        for index, alias in enumerate(chain):
            try:
                routed = await self._gate(request if alias == request.model else _for_model(request, alias))
                return await self._with_retries(routed)
            except ModelError as error:
                if index == len(chain) - 1 or error.kind == "denied":
                    error.task_id, error.attempt = self.node.id, self.result.attempts
                    raise
                self.state.emit(TaskFellBack, task_id=self.node.id, attempt=self.result.attempts, from_model=alias,
                                to_model=chain[index + 1], error_kind=error.kind, error=error.message)
        raise AssertionError("the compiler guarantees a model")

    async def _gate(self, request: ModelRequest) -> ModelRequest:
        gatekeeper = self.services.gatekeeper
        if gatekeeper is None or not gatekeeper.active:
            return request
        client = self.services.client(request.model)
        tokens, counted_by = count_request(request, self.services.tokenizers.get(request.model), client)
        try:
            decision = gatekeeper.decide(request.model, tokens, request.max_tokens, counted_by)
        except ModelError as error:
            self._emit_gate(request.model, tokens, "deny", error.message)
            raise
        self._emit_gate(decision.alias, tokens, decision.action, decision.reason)
        if decision.action == "deny":
            raise ModelError("denied", f"the request was denied by a gate: {decision.reason}", model=request.model)
        return request if decision.alias == request.model else _for_model(request, decision.alias)

    def _emit_gate(self, alias: str, tokens: int, action: str, reason: str) -> None:
        self.state.emit(GateApplied, task_id=self.node.id, attempt=self.result.attempts + 1, model=alias,
                        tokens=tokens, action=action, reason=reason)

    async def _with_retries(self, request: ModelRequest) -> Any:
        # The first attempt runs bare: tenacity's machinery costs about as much as the rest of a
        # task, and most calls succeed at once. Its failure is replayed into tenacity, so attempt
        # numbers, waits and the stop rules are exactly tenacity's.
        try:
            return await self._answer(request)
        except ModelError as error:
            spec = self.policies.retry
            if not error.transient or spec is None or spec.max_attempts <= 1:
                raise
            first_failure: list[ModelError] = [error]
        retrying = self._retrying(spec, request.model)
        async for attempt in retrying:
            with attempt:
                if first_failure:
                    raise first_failure.pop()
                return await self._answer(request)
        raise AssertionError("tenacity returns or re-raises")

    def _retrying(self, spec: RetrySpec, model: str) -> AsyncRetrying:
        def before_sleep(retry_state: Any) -> None:
            error = retry_state.outcome.exception() if retry_state.outcome else None
            if isinstance(error, ModelError):
                self.state.emit(TaskRetrying, task_id=self.node.id, attempt=self.result.attempts, model=model,
                                error_kind=error.kind, error=error.message, delay_s=retry_state.next_action.sleep)

        return AsyncRetrying(
            stop=ModelStop(spec, self.services.retry.attempts), sleep=self.services.sleep, reraise=True,
            wait=ModelWait(spec, self.services.retry.retry_after_max), before_sleep=before_sleep,
            retry=retry_if_exception(lambda error: isinstance(error, ModelError) and error.transient),
        )

    async def _answer(self, request: ModelRequest) -> Any:
        """One attempt, plus repairs of an invalid structured answer."""
        for repair in range(REPAIR_ATTEMPTS + 1):
            response = await self._guarded_call(request)
            if request.output_schema is None:
                return response.text
            try:
                return parse_output(response.text, request.output_schema, response.model or request.model)
            except InvalidOutputError as error:
                if repair == REPAIR_ATTEMPTS:
                    raise
                self.state.emit(TaskRetrying, task_id=self.node.id, attempt=self.result.attempts,
                                model=request.model, error_kind="invalid_output", error=error.message, delay_s=0.0)
                request = repair_request(request, response.text, error.message)
        raise AssertionError("unreachable")

    async def _guarded_call(self, request: ModelRequest) -> ModelResponse:
        """One call through the endpoint's circuit breaker, if the engine has breakers."""
        breakers = self.services.breakers
        if breakers is None:
            return await self._one_call(request)
        breaker = breakers.get(request.model)
        admission: Admission = await self._breaker_io(breakers.blocking, breaker.admit)
        self._emit_transitions(breaker)
        if admission == "reject":
            raise breaker.rejection()
        try:
            response = await self._one_call(request)
        except anyio.get_cancelled_exc_class():
            breaker.release(admission)  # a cancelled call says nothing about the endpoint
            raise
        except BaseException as error:
            await self._record(breaker, admission, error, blocking=breakers.blocking)
            raise
        await self._record(breaker, admission, None, blocking=breakers.blocking)
        return response

    async def _record(self, breaker: EndpointBreaker, admission: Admission, error: BaseException | None,
                      *, blocking: bool) -> None:
        with anyio.CancelScope(shield=True):  # the outcome is recorded even if the run is being cancelled
            await self._breaker_io(blocking, breaker.record, admission, error)
        self._emit_transitions(breaker)

    @staticmethod
    async def _breaker_io(blocking: bool, function: Any, *args: Any) -> Any:
        if blocking:  # pybreaker's Redis storage blocks: keep it off the event loop
            return await anyio.to_thread.run_sync(function, *args)
        return function(*args)

    def _emit_transitions(self, breaker: EndpointBreaker) -> None:
        for old, new in breaker.drain_transitions():
            self.state.emit(BreakerStateChanged, task_id=self.node.id, model=breaker.name, old_state=old,
                            new_state=new)

    async def _one_call(self, request: ModelRequest) -> ModelResponse:
        price = self.services.prices.get(request.model, _FREE)
        limiter = self.services.rate_limiters.get(request.model)
        usage_estimate = estimate_usage(request) if (self.state.budget.limit is not None or limiter) else None
        estimate = price.cost(usage_estimate) if usage_estimate and self.state.budget.limit is not None else 0.0
        reserved = self.state.budget.reserve(estimate, self.node.id)  # before waiting: nothing spent if refused
        self.result.attempts += 1
        response: ModelResponse | None = None
        limit = self.services.model_concurrency.get(request.model)
        try:
            if limiter is not None and usage_estimate is not None:
                await limiter.acquire(usage_estimate.input_tokens + usage_estimate.output_tokens, self.services.sleep)
            if limit is None and self.policies.timeout is None:  # the common case, without machinery
                response = await self._request(request)
            else:
                async with self._model_slot(request.model, limit):
                    with anyio.fail_after(self.policies.timeout):
                        response = await self._request(request)
        except TimeoutError:
            raise ModelError("timeout", f"no answer within {self.policies.timeout} s", model=request.model) from None
        finally:
            cost = price.cost(response.usage) if response is not None else 0.0
            self.state.budget.settle(reserved, cost)
            if response is not None:
                self.result.input_tokens += response.usage.input_tokens
                self.result.output_tokens += response.usage.output_tokens
                self.result.cost_usd += cost
        self.result.model = request.model
        return response

    @asynccontextmanager
    async def _model_slot(self, alias: str, limit: int | None) -> AsyncIterator[None]:
        """Per-alias concurrency cap, if the engine sets one."""
        if limit is None:
            yield
            return
        limiter = self.state.model_limiters.setdefault(alias, anyio.CapacityLimiter(limit))
        async with limiter:
            yield

    async def _request(self, request: ModelRequest) -> ModelResponse:
        client = self.services.client(request.model)
        if not (self.services.stream_tokens and self.state.bus.active):
            return await client.complete(request)
        final: ModelResponse | None = None
        pieces = client.stream(request)
        try:
            async for piece in pieces:
                if isinstance(piece, TextDelta):
                    self.state.emit(TokenDelta, task_id=self.node.id, attempt=self.result.attempts, text=piece.text)
                else:
                    final = piece
        finally:
            close = getattr(pieces, "aclose", None)  # an async generator left early is closed now, not by GC
            if close is not None:
                with anyio.CancelScope(shield=True):
                    await close()
        if final is None:
            raise TaskError("the model's stream ended without a final response", task_id=self.node.id)
        return final


def _for_model(request: ModelRequest, alias: str) -> ModelRequest:
    return ModelRequest(alias, request.messages, request.temperature, request.max_tokens, request.output_schema)
