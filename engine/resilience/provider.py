"""The last stage: the provider's client answers, whole or streamed as ``TokenDelta`` events.

It counts the attempt, tallies the tokens and the cost at the alias's price,
names the alias that answered, and notes the answer and its cost on the call
(for the response cache, which keeps what the attempts below it fetched). A
streamed answer is streamed, and each attempt announced (``ModelCalled``: its
model, outcome, latency, tokens and cost, for traces), only when somebody
listens to the run's events.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Mapping

import anyio

from engine.errors import ConfigError, ModelError
from engine.events import ModelCalled, TokenDelta
from engine.model.client import ModelClient, ModelRequest, ModelResponse, TextDelta
from engine.model.prices import FREE, Price
from engine.resilience.call import Call, Pending


class Clients:
    """The client of each alias (or one for every alias), and the model each answers with."""

    def __init__(self, by_alias: Mapping[str, ModelClient], default: ModelClient | None = None,
                 targets: Mapping[str, str] | None = None) -> None:
        self.by_alias = dict(by_alias)
        self.default = default
        self.targets = dict(targets or {})  # alias -> its configured model (``cache.model_target``)

    def target(self, alias: str) -> str:
        """What answers ``alias``: its configured model, or for a client given directly (which may answer
        each alias differently), the client's class and the alias."""
        target = self.targets.get(alias)
        if target is None:
            kind = type(self(alias))
            target = f"{kind.__module__}.{kind.__qualname__} alias:{alias}"
        return target

    def __call__(self, alias: str) -> ModelClient:
        client = self.by_alias.get(alias, self.default)
        if client is None:
            raise ConfigError(f"no model client for the alias {alias!r}: configure it under `models:` "
                              "or give Engine(models=...)")
        return client

    def all(self) -> list[ModelClient]:
        """Each distinct client once."""
        every = [*self.by_alias.values(), *([self.default] if self.default is not None else [])]
        return list({id(client): client for client in every}.values())


class ProviderStage:
    """The last stage: ``send`` gives the request to the alias's client; ``exit`` tallies the answer."""

    def __init__(self, clients: Clients, prices: Mapping[str, Price]) -> None:
        self.clients = clients
        self.prices = prices

    def enter(self, request: ModelRequest, call: Call) -> Pending:
        call.tally.attempts += 1
        if call.run.on_attempt is not None or call.run.emit.active:
            call.attempt_started = time.time()
        return None

    def send(self, request: ModelRequest, call: Call) -> Awaitable[ModelResponse]:
        client = self.clients(request.model)
        if call.run.stream_tokens and call.run.emit.active and hasattr(client, "stream") and request.generate is None:
            return _streamed(client, request, call)  # a client with only `complete` answers in one piece
        return client.complete(request)

    def exit(self, request: ModelRequest, call: Call, response: ModelResponse | None,
             error: BaseException | None) -> Pending:
        cost = 0.0
        if response is not None:
            usage = response.usage
            cost = self.prices.get(request.model, FREE).cost(usage)
            call.tally.model = request.model
            call.tally.input_tokens += usage.input_tokens
            call.tally.output_tokens += usage.output_tokens
            call.tally.cost_usd += cost
            call.answered, call.answered_cost = response, cost
        if call.run.on_attempt is not None:
            call.run.on_attempt(call, request.model, _outcome(response, error), response, cost)
        if call.run.emit.active:  # nothing built when nobody listens
            _announce(request, call, response, error, cost)
        return None


def _announce(request: ModelRequest, call: Call, response: ModelResponse | None, error: BaseException | None,
              cost: float) -> None:
    usage = response.usage if response is not None else None
    call.run.emit(ModelCalled, task_id=call.task_id, attempt=call.tally.attempts, model=request.model,
                  provider_model=(response.model or None) if response is not None else None,
                  outcome=_outcome(response, error), started_at=call.attempt_started,
                  latency_s=time.time() - call.attempt_started,
                  input_tokens=usage.input_tokens if usage is not None else 0,
                  output_tokens=usage.output_tokens if usage is not None else 0, cost_usd=cost,
                  finish_reason=response.finish_reason if response is not None else None)


def _outcome(response: ModelResponse | None, error: BaseException | None) -> str:
    if response is not None:
        return "ok"
    if isinstance(error, ModelError):
        return error.kind
    return "cancelled" if isinstance(error, anyio.get_cancelled_exc_class()) else "unknown"


async def _streamed(client: ModelClient, request: ModelRequest, call: Call) -> ModelResponse:
    final: ModelResponse | None = None
    pieces = client.stream(request)
    try:
        async for piece in pieces:
            if isinstance(piece, TextDelta):
                call.run.emit(TokenDelta, task_id=call.task_id, attempt=call.tally.attempts, text=piece.text)
            else:
                final = piece
    finally:
        close = getattr(pieces, "aclose", None)  # an async generator left early is closed now, not by GC
        if close is not None:
            with anyio.CancelScope(shield=True):
                await close()
    if final is None:
        raise ModelError("server_error", "the model's stream ended without a final response", model=request.model)
    return final
