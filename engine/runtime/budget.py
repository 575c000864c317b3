"""Cost accounting: estimate before a call, reserve, settle on the real usage.

Reservations make concurrent tasks see each other's pending spend, so they
cannot together pass ``limits.max_cost_usd``.
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.errors import BudgetExceededError
from engine.resilience.tokens import MESSAGE_OVERHEAD, estimate_tokens
from engine.runtime.model import ModelRequest, Usage

DEFAULT_OUTPUT_ESTIMATE = 1024  # tokens assumed for a call without max_tokens


@dataclass(frozen=True, slots=True)
class Price:
    """US dollars per million tokens."""

    input: float = 0.0
    output: float = 0.0
    cached_input: float | None = None

    def cost(self, usage: Usage) -> float:
        cached_price = self.input if self.cached_input is None else self.cached_input
        fresh = usage.input_tokens - usage.cached_input_tokens
        return (fresh * self.input + usage.cached_input_tokens * cached_price
                + usage.output_tokens * self.output) / 1_000_000


def estimate_usage(request: ModelRequest) -> Usage:
    """What a call may cost at most: the gates' upper bound on the prompt, and ``max_tokens`` of answer."""
    prompt_tokens = sum(estimate_tokens(message.content) + MESSAGE_OVERHEAD for message in request.messages)
    return Usage(prompt_tokens, request.max_tokens or DEFAULT_OUTPUT_ESTIMATE)


class Budget:
    """Spend of one run against its limit (None: unlimited)."""

    def __init__(self, limit: float | None) -> None:
        self.limit = limit
        self.spent = 0.0
        self.reserved = 0.0

    def reserve(self, amount: float, task_id: str) -> float:
        if self.limit is not None and self.spent + self.reserved + amount > self.limit + 1e-12:
            raise BudgetExceededError(
                f"the call is estimated at ${amount:.6f}, and ${self.spent:.6f} is spent and "
                f"${self.reserved:.6f} reserved of the run's limit of ${self.limit:.6f}", task_id=task_id)
        self.reserved += amount
        return amount

    def settle(self, reserved: float, actual: float) -> None:
        self.reserved -= reserved
        self.spent += actual
