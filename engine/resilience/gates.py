"""The gate stage: decide, before anything is spent, which model may take a request.

The rendered request's tokens are counted (the model's own tokenizer where its
client has one, a vocabulary, or an upper-bound estimate; never on the event
loop when slow), and the decision is announced (``GateApplied``).

Rules come from the configuration, checked from the top, the first whose
``above`` the count passes wins: ``use`` another alias, or ``deny``. Then the
chosen model's context window must hold the prompt plus ``max_tokens``;
otherwise the call fails with ``context_length`` (the next model of the
fallback chain may have a larger window).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from engine.config import GateRule
from engine.errors import ModelError
from engine.events import GateApplied
from engine.model.client import ModelClient, ModelRequest
from engine.model.tokens import count_request
from engine.resilience.call import for_model

if TYPE_CHECKING:
    from engine.resilience.call import Call


@dataclass(frozen=True, slots=True)
class GateDecision:
    alias: str
    tokens: int
    action: Literal["allow", "switch", "deny"]
    reason: str


class Gatekeeper:
    def __init__(self, rules: Sequence[GateRule], windows: Mapping[str, int | None],
                 abilities: Mapping[str, frozenset[str]] | None = None) -> None:
        self.rules = sorted(rules, key=lambda rule: rule.above, reverse=True)
        self.windows = windows
        # What each configured alias can do ("vision", "image", "video"): a gate never switches a call
        # with images, or a generation, to an alias that cannot take it.
        self.abilities = abilities or {}

    @property
    def active(self) -> bool:
        return bool(self.rules) or any(window is not None for window in self.windows.values())

    def decide(self, alias: str, tokens: int, max_tokens: int | None, counted_by: str,
               needs: frozenset[str] = frozenset()) -> GateDecision:
        for rule in self.rules:
            if tokens > rule.above:
                if rule.deny:
                    return GateDecision(alias, tokens, "deny", f"{tokens} tokens ({counted_by}) is above the "
                                        f"limit of {rule.above} tokens")
                if rule.use != alias:
                    self._check_able(str(rule.use), needs, rule.above)
                    return self._fits(str(rule.use), tokens, max_tokens, "switch",
                                      f"{tokens} tokens ({counted_by}) is above {rule.above}: {rule.use}")
                break
        return self._fits(alias, tokens, max_tokens, "allow", f"{tokens} tokens ({counted_by})")

    def _check_able(self, alias: str, needs: frozenset[str], above: int) -> None:
        able = self.abilities.get(alias)
        missing = sorted(needs - able) if able is not None else []
        if missing:
            what = {"vision": "read images", "image": "make images", "video": "make videos"}
            raise ModelError("bad_request", f"the gate above {above} tokens sends this call to {alias}, which cannot "
                             f"{' or '.join(what[need] for need in missing)}: give that gate an alias that can",
                             model=alias)

    def _fits(self, alias: str, tokens: int, max_tokens: int | None, action: Literal["allow", "switch"],
              reason: str) -> GateDecision:
        window = self.windows.get(alias)
        needed = tokens + (max_tokens or 0)
        if window is not None and needed > window:
            raise ModelError("context_length", f"{needed} tokens ({tokens} in the prompt, {max_tokens or 0} for "
                             f"the answer) do not fit the context window of {alias}: {window} tokens", model=alias)
        return GateDecision(alias, tokens, action, reason)


class GateStage:
    """Routes a request before its attempts: the same alias, another one, or a denial."""

    def __init__(self, gatekeeper: Gatekeeper, clients: Callable[[str], ModelClient],
                 tokenizers: Mapping[str, str | None]) -> None:
        self.gatekeeper = gatekeeper
        self.clients = clients
        self.tokenizers = tokenizers

    async def route(self, request: ModelRequest, call: Call) -> ModelRequest:
        alias = request.model
        tokens, counted_by = await count_request(request, self.tokenizers.get(alias), self.clients(alias))
        try:
            decision = self.gatekeeper.decide(alias, tokens, request.max_tokens, counted_by, needs(request))
        except ModelError as error:
            _announce(call, alias, tokens, "deny", error.message)
            raise
        _announce(call, decision.alias, tokens, decision.action, decision.reason)
        if decision.action == "deny":
            raise ModelError("denied", f"the request was denied by a gate: {decision.reason}", model=alias)
        return request if decision.alias == alias else for_model(request, decision.alias)


def needs(request: ModelRequest) -> frozenset[str]:
    """What a model must be able to do to answer ``request``: read its images, make its media."""
    wanted = {"vision"} if any(message.images for message in request.messages) else set()
    if request.generate is not None:
        wanted.add(request.generate.media)
    return frozenset(wanted)


def _announce(call: Call, alias: str, tokens: int, action: str, reason: str) -> None:
    call.run.emit(GateApplied, task_id=call.task_id, attempt=call.tally.attempts + 1, model=alias, tokens=tokens,
                  action=action, reason=reason)
