"""The embedded local model (llama.cpp with Gemma 3 270M), for real: in process, and through
``python -m llama_cpp.server`` on 127.0.0.1 with the openai provider."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import anyio
import pytest

from engine import Engine, ModelRequest
from engine.config import EngineConfig, HttpProviderConfig, LlamaCppProviderConfig, ModelConfig
from engine.model.client import Message
from engine.providers.llama_cpp import LlamaCppProvider, default_model_path
from engine.testing import capture_events

# The real model: loading it, or starting its server (120 s allowed), counts against the first test.
pytestmark = [pytest.mark.anyio, pytest.mark.timeout(180)]

CITY = {"type": "object", "required": ["city", "country"],
        "properties": {"city": {"type": "string"}, "country": {"type": "string"}}}


def one_task(**task: Any) -> dict[str, Any]:
    return {"dsl": "orchestrion/v1", "name": "local", "defaults": {"model": "fast_ai", "max_tokens": 24},
            "stages": [{"type": "inline", "tasks": [{"id": "a", **task}]}]}


@pytest.fixture(scope="module")
def local() -> LlamaCppProvider:
    return LlamaCppProvider("local", LlamaCppProviderConfig(kind="llama_cpp"))


async def test_engine_without_configuration_generates_with_the_local_model() -> None:
    engine = Engine()  # no configuration: every alias is the embedded model
    with capture_events(engine) as events:
        result = await engine.run(one_task(prompt="Name three colours."))
    task = result.tasks["a"]
    assert result.status == "succeeded" and task.output.strip()
    assert 0 < task.output_tokens <= 24 and task.input_tokens > 5
    deltas = "".join(event.text for event in events if event.type == "token_delta")
    assert deltas == task.output  # streamed piece by piece, from a worker thread


async def test_schema_constrained_output_always_parses(local: LlamaCppProvider) -> None:
    engine = Engine(models=local)
    result = await engine.run(one_task(prompt="Give a city and its country.", max_tokens=48,
                                       output={"schema": CITY}))
    output = result.tasks["a"].output
    assert result.status == "succeeded" and result.tasks["a"].attempts == 1  # no repair was needed
    assert isinstance(output["city"], str) and isinstance(output["country"], str)


async def test_token_counts_are_exact(local: LlamaCppProvider) -> None:
    for messages in [(Message("user", "Say hi"),),
                     (Message("system", "Be brief."), Message("user", "Name a colour.")),
                     (Message("user", "a"), Message("assistant", "b"), Message("user", "c"))]:
        request = ModelRequest("fast_ai", messages, max_tokens=2)
        response = await local.complete(request)
        assert await local.count_tokens(request) == response.usage.input_tokens


async def test_calls_stay_off_the_event_loop(local: LlamaCppProvider) -> None:
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await anyio.sleep(0.01)
            ticks += 1

    async with anyio.create_task_group() as group:
        group.start_soon(ticker)
        await local.complete(ModelRequest("fast_ai", (Message("user", "Count to ten."),), max_tokens=48))
        group.cancel_scope.cancel()
    assert ticks > 3  # the loop kept running while the model generated


# -- the same model through llama.cpp's OpenAI-compatible server ------------------------------------

@pytest.fixture(scope="module")
def llama_server() -> Iterator[str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", default_model_path(), "--host", "127.0.0.1",
         "--port", str(port), "--chat_format", "gemma", "--n_ctx", "2048"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and process.poll() is None:
            with socket.socket() as client:
                if client.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.2)
        assert process.poll() is None, "llama_cpp.server exited"
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
async def test_the_openai_provider_against_the_llama_cpp_server(llama_server: str, stream: bool) -> None:
    server = HttpProviderConfig(kind="openai", base_url=llama_server, structured_output="json_object")
    config = EngineConfig(providers={"llama": server},
                          models={"fast_ai": ModelConfig(provider="llama", model="gemma")})
    engine = Engine(config, stream_tokens=stream)
    try:
        with capture_events(engine) as events:
            text = await engine.run(one_task(prompt="Name three colours."))
            structured = await engine.run(one_task(prompt="Give a city and its country.", max_tokens=48,
                                                   output={"schema": CITY}))
    finally:
        await engine.aclose()
    assert text.status == "succeeded" and text.tasks["a"].output.strip()
    assert text.tasks["a"].input_tokens > 5 and text.tasks["a"].output_tokens > 0
    if not stream:  # exact usage from the server; its streams carry none, so the engine estimates high
        assert text.tasks["a"].output_tokens <= 24
    assert structured.status == "succeeded", structured.error
    assert set(structured.tasks["a"].output) >= {"city", "country"}
    assert bool([e for e in events if e.type == "token_delta"]) == stream
