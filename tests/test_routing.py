"""Routing: the model decides when confident, keywords when not, a default when nothing matches."""

from __future__ import annotations

import pytest

from engine import Engine
from engine.routing import append, identity, route
from engine.testing import FakeModel

RULES = {"finance": ["invest", "stock", "market"], "technical": ["python", "code", "bug"], "general": []}


def test_a_confident_model_decides() -> None:
    decision = route("How do I invest?", RULES, "general", {"category": "finance", "confidence": 0.9}, 0.6)
    assert (decision["category"], decision["by"]) == ("finance", "model")
    assert "confidence 0.90" in decision["reason"]


@pytest.mark.parametrize("model", [None, {"category": "finance", "confidence": 0.3},
                                   {"category": "astrology", "confidence": 0.99}])
def test_below_the_threshold_or_without_a_model_keywords_decide(model) -> None:
    decision = route("My Python code has a bug in the stock ticker", RULES, "general", model, 0.6)
    assert decision["category"] == "technical" and decision["by"] == "keywords"
    assert decision["matched"] == ["python", "code", "bug"] and decision["confidence"] == 0.75
    assert "keywords matched for technical: python, code, bug" in decision["reason"]


def test_nothing_matches_so_the_default_applies() -> None:
    decision = route("Tell me a joke", RULES, "general", None)
    assert (decision["category"], decision["by"], decision["matched"]) == ("general", "default", [])


def test_keywords_match_whole_words_only() -> None:
    assert route("codes and bugs", RULES, "general")["category"] == "general"


def test_helpers_for_loops() -> None:
    assert identity(3) == 3 and append(None, 1) == [1] and append([1], 2) == [1, 2]


@pytest.mark.anyio
async def test_routing_from_the_dsl_with_a_failing_model() -> None:
    from engine import ModelError

    flow = {"dsl": "orchestrion/v1", "name": "r", "inputs": {"q": {"type": "string"}},
            "defaults": {"model": "router", "retry": None},
            "stages": [{"type": "inline", "tasks": [
                {"id": "guess", "prompt": "{{ q }}", "critical": False,
                 "output": {"schema": {"type": "object"}}},
                {"id": "route", "call": "orchestrion.route",
                 "with": {"text": "{{ q }}", "model": "{{ guess }}", "rules": RULES, "default": "general"}},
                {"id": "finance", "prompt": "money", "model": "finance_expert", "when": "route.category == 'finance'"},
                {"id": "technical", "prompt": "tech", "model": "technical_expert",
                 "when": "route.category == 'technical'"}]}]}
    engine = Engine(models=FakeModel({"router": ModelError("server_error", "down")}))
    result = await engine.run(flow, {"q": "a bug in my python code"})
    assert result.tasks["route"].output["by"] == "keywords"
    assert (result.tasks["finance"].status, result.tasks["technical"].status) == ("skipped", "succeeded")
