"""Context-token gates: decide, before anything is spent, which model may take a request.

Rules come from the configuration, checked from the top, the first whose
``above`` the count passes wins: ``use`` another alias, or ``deny``. Then the
chosen model's context window must hold the prompt plus ``max_tokens``;
otherwise the call fails with ``context_length`` (the next model of the
fallback chain may have a larger window).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from engine.config import GateRule
from engine.errors import ModelError


@dataclass(frozen=True, slots=True)
class GateDecision:
    alias: str
    tokens: int
    action: Literal["allow", "switch", "deny"]
    reason: str


class Gatekeeper:
    def __init__(self, rules: Sequence[GateRule], windows: Mapping[str, int | None]) -> None:
        self.rules = sorted(rules, key=lambda rule: rule.above, reverse=True)
        self.windows = windows

    @property
    def active(self) -> bool:
        return bool(self.rules) or any(window is not None for window in self.windows.values())

    def decide(self, alias: str, tokens: int, max_tokens: int | None, counted_by: str) -> GateDecision:
        for rule in self.rules:
            if tokens > rule.above:
                if rule.deny:
                    return GateDecision(alias, tokens, "deny", f"{tokens} tokens ({counted_by}) is above the "
                                        f"limit of {rule.above} tokens")
                if rule.use != alias:
                    return self._fits(str(rule.use), tokens, max_tokens, "switch",
                                      f"{tokens} tokens ({counted_by}) is above {rule.above}: {rule.use}")
                break
        return self._fits(alias, tokens, max_tokens, "allow", f"{tokens} tokens ({counted_by})")

    def _fits(self, alias: str, tokens: int, max_tokens: int | None, action: Literal["allow", "switch"],
              reason: str) -> GateDecision:
        window = self.windows.get(alias)
        needed = tokens + (max_tokens or 0)
        if window is not None and needed > window:
            raise ModelError("context_length", f"{needed} tokens ({tokens} in the prompt, {max_tokens or 0} for "
                             f"the answer) do not fit the context window of {alias}: {window} tokens", model=alias)
        return GateDecision(alias, tokens, action, reason)
