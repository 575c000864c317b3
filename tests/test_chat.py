"""The chat template and chat sessions: L and M answered directly, H acknowledged, planned, run, summarised."""

from __future__ import annotations

import json

import pytest

from engine import Engine, ModelError
from engine.config import EngineConfig, GateRule
from engine.testing import FakeModel, capture_events

pytestmark = pytest.mark.anyio

PLAN = {"name": "planned", "description": "A planned workflow", "stages": [
    {"type": "inline", "tasks": [{"model": "fast_ai", "prompt": "Do {{ request }}"}]}]}


def model(category: str, confidence: float = 0.9) -> FakeModel:
    return FakeModel({
        "categorizer_ai": {"category": category, "confidence": confidence},
        "thinking_ai": lambda request: json.dumps(PLAN) if request.output_schema else f"thinking: {request.prompt}",
        "medium_ai": lambda request: f"medium: {request.prompt}",
        "fast_ai": lambda request: f"fast: {request.prompt}",
    })


async def test_light_and_medium_requests_are_answered_directly() -> None:
    for category, prefix in (("L", "thinking: hello"), ("M", "medium: hello")):
        reply = await Engine(models=model(category)).chat("hello")
        assert reply.ok and reply.category == category and reply.answer == prefix


async def test_a_heavy_request_is_acknowledged_then_planned_run_and_summarised() -> None:
    engine = Engine(models=model("H"))
    with capture_events(engine) as events:
        reply = await engine.chat("Create a marketing campaign for water bottles")
    assert reply.ok and reply.category == "H"
    order = [(e.type, e.task_id) for e in events if e.type in ("task_finished", "plan_created")]
    assert order.index(("task_finished", "ack")) < order.index(("plan_created", "work"))
    assert order.index(("plan_created", "work")) < order.index(("task_finished", "summary"))
    assert reply.answer.startswith("thinking: Present this result to the user, clearly and briefly: "
                                   "fast: Do Create a marketing campaign")


async def test_without_a_confident_model_keywords_categorise() -> None:
    fake = model("L")
    fake.script["categorizer_ai"] = [ModelError("server_error", "down")]
    reply = await Engine(models=fake).chat("Why is the sky blue? Explain")
    assert reply.category == "M" and reply.result.outputs["routed_by"] == "keywords"


async def test_sessions_keep_history_and_its_tokens_which_the_gates_see() -> None:
    fake = model("L")
    config = EngineConfig(gates=[GateRule(above=400, deny=True)])
    engine = Engine(config, models=fake)
    first = await engine.chat("my name is Ada", session_id="s1")
    second = await engine.chat("what is my name?", session_id="s1")
    assert first.ok and second.ok
    asked = [call for call in fake.calls if call.model == "thinking_ai"][-1].prompt
    assert "user: my name is Ada" in asked and "assistant: thinking:" in asked
    session = engine.session("s1")
    assert session is not None and len(session.messages) == 4 and session.tokens > 0
    assert engine.session("other") is None
    for _ in range(10):  # the history grows until the gate refuses the turn, before anything is spent
        reply = await engine.chat("tell me more " * 5, session_id="s1")
        if not reply.ok:
            break
    assert not reply.ok and reply.result.tasks["light"].error_kind == "denied"


@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # aiosqlite is asyncio's
async def test_a_session_goes_on_in_another_engine_through_the_store(tmp_path, anyio_backend: str) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'runs.db'}"
    first = Engine(models=model("L"), store=url)
    assert (await first.chat("my name is Ada", session_id="s1")).ok
    await first.aclose()
    fake = model("L")
    second = Engine(models=fake, store=url)  # another process, as far as the session knows
    assert (await second.chat("what is my name?", session_id="s1")).ok
    asked = [call for call in fake.calls if call.model == "thinking_ai"][-1].prompt
    assert "user: my name is Ada" in asked
    session = second.session("s1")
    assert session is not None and [role for role, _ in session.messages] == ["user", "assistant"] * 2
    await second.aclose()
