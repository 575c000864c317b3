"""The context a model call carries through the pipeline, and the shape of a stage.

Every attempt passes the pipeline's stages in order: each stage's ``enter``
runs before the provider is called (it may refuse by raising, or return an
awaitable to wait on: a rate limit, a free slot), and after the provider's
answer or error, each entered stage's ``exit`` runs, innermost first. The
time limit wraps the provider's call as a context manager. All of it runs
in one coroutine per attempt, so a call in flight holds one frame for the
whole pipeline, not one per stage.

The ``Call`` is one task's: its policies (timeout, retry, cache), its tallies
(attempts, tokens, cost, the model that answered), what its stages note for
their exit, and the ``RunContext`` it shares with every call of the run
(events, budget, deadlines, per-alias slots).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

import anyio

from engine.compiler.plan import CacheSpec, RetrySpec
from engine.events import SILENT, Emitter
from engine.model.client import ModelRequest, ModelResponse
from engine.resilience.budget import Budget
from engine.resilience.cap import Reservation
from engine.resilience.timeout import Deadlines

Sleep = Callable[[float], Awaitable[None]]


@dataclass(slots=True)
class RunContext:
    """What every model call of one run shares."""

    emit: Emitter = SILENT
    budget: Budget = field(default_factory=lambda: Budget(None))
    deadlines: Deadlines | None = None  # None: each call keeps its own timer
    stream_tokens: bool = True
    model_slots: dict[str, anyio.CapacityLimiter] = field(default_factory=dict)
    breaker_opened: dict[str, anyio.Event] = field(default_factory=dict)  # alias -> set when its breaker opens
    on_attempt: AttemptSink | None = None  # told of every model call (the run store's journal), if anyone asks


class Tally(Protocol):
    """Where a task's calls add up (the runtime's TaskResult is one)."""

    attempts: int
    input_tokens: int
    output_tokens: int
    cost_usd: float
    model: str | None  # the alias that answered last


@dataclass(slots=True)
class Call:
    """One task's model calls: its policies, where they add up, and its run."""

    task_id: str
    run: RunContext
    tally: Tally
    timeout: float | None = None
    retry: RetrySpec | None = None
    hedge_after: float | None = None  # seconds before the next model of the chain is asked as well
    cache: CacheSpec | None = None  # the response cache's policy; None: the call is neither looked up nor kept
    fallback: bool = False  # is there a next model in the chain after the current one
    hedged_away: bool = False  # cancelled because the next model, asked later, answered first
    admission: str = "call"  # the breaker's word on the current attempt
    reserved: float = 0.0  # the budget reserved for the current attempt
    cap_reservation: Reservation | None = None  # what the cost cap across runs holds for it, if any
    attempt_started: float = 0.0  # wall-clock time the current attempt was sent
    answered: ModelResponse | None = None  # the last attempt that answered: its response, and what it
    answered_cost: float = 0.0  # cost (for the response cache, above the retry, to keep)


class AttemptSink(Protocol):
    def __call__(self, call: Call, model: str, outcome: str, response: ModelResponse | None, cost: float, *,
                 cached: bool = False) -> None:
        """One model call ended (or was answered from the cache): ``outcome`` is "ok", "cancelled" or the
        error's kind. Must not block."""


Handler = Callable[[ModelRequest, Call], Awaitable[ModelResponse]]
TextHandler = Callable[[ModelRequest, Call], Awaitable[str]]
Pending = Awaitable[object] | None  # what a stage's enter or exit asks the pipeline to wait for, if anything
Bound = Callable[[ModelRequest, Call], ModelRequest]  # the request an attempt sends, bounded (``SpendStage.bound``)


class Stage(Protocol):
    def enter(self, request: ModelRequest, call: Call) -> Pending:
        """Before the attempt: raise to refuse it, or return an awaitable to wait on."""

    def exit(self, request: ModelRequest, call: Call, response: ModelResponse | None,
             error: BaseException | None) -> Pending:
        """After the attempt (only if ``enter`` completed): its response, or its error."""


def for_model(request: ModelRequest, alias: str) -> ModelRequest:
    """The same request, sent to another alias."""
    return ModelRequest(alias, request.messages, request.temperature, request.max_tokens, request.output_schema)
