"""The context a model call carries through the pipeline, and the shape of a stage.

A stage is a ``Handler``: it takes the request and the ``Call`` and returns the
provider's ModelResponse, usually by awaiting the next stage. The ``Call`` is
one task's: its policies (timeout, retry), its tallies (attempts, tokens, cost,
the model that answered), and the ``RunContext`` it shares with every call of
the run (events, budget, deadlines, per-alias slots).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import anyio

from engine.compiler.plan import RetrySpec
from engine.events import SILENT, Emitter
from engine.model.client import ModelRequest, ModelResponse
from engine.resilience.budget import Budget
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


@dataclass(slots=True)
class Call:
    """One task's model calls: its policies, its tallies, and its run."""

    task_id: str
    run: RunContext
    timeout: float | None = None
    retry: RetrySpec | None = None
    attempts: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    model: str | None = None  # the alias that answered last


Handler = Callable[[ModelRequest, Call], Awaitable[ModelResponse]]


def for_model(request: ModelRequest, alias: str) -> ModelRequest:
    """The same request, sent to another alias."""
    return ModelRequest(alias, request.messages, request.temperature, request.max_tokens, request.output_schema)
