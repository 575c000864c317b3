"""Failover with an open breaker, retries under 30 % faults, and local tokens/s.

Run: ``python -m tests.bench.bench_providers`` (needs ``orchestrion[local]``). Prints medians and
min-max of several runs; asserts nothing about time.

1. Failover: a dead OpenAI-compatible server (always 503) behind ``medium_ai``, falling back to a
   FakeModel. Once the breaker is open, the latency of a task (breaker check, fallback, answer),
   against the same task sent straight to the FakeModel.
2. Retries per run: 40 tasks against the fault server with 30 % transient faults (429, 500, 503,
   hangs, resets, malformed JSON, cut streams), several seeds.
3. Local generation: completion tokens per second through ``engine.run`` against
   ``llama_cpp.Llama.create_chat_completion`` called directly on the same loaded model.
"""

from __future__ import annotations

import random
import socket
import statistics
import time
from typing import Any

import anyio

from engine import Engine
from engine.config import (
    BreakerConfig,
    EngineConfig,
    HttpProviderConfig,
    LlamaCppProviderConfig,
    ModelConfig,
    RetryConfig,
)
from engine.providers.llama_cpp import LlamaCppProvider
from engine.testing import FakeModel, capture_events
from tests.support.fault_server import running_fault_server


def summary(label: str, samples: list[float], unit: str, scale: float = 1.0) -> None:
    values = [sample * scale for sample in samples]
    print(f"  {label:<56} median {statistics.median(values):9.3f} {unit} "
          f"(min {min(values):.3f}, max {max(values):.3f}, n={len(values)})")


def flow(count: int, chain: list[str], stage: str = "inline", **defaults: Any) -> dict[str, Any]:
    return {"dsl": "orchestrion/v1", "name": "bench", "defaults": {"model": chain, **defaults},
            "stages": [{"type": stage, "tasks": [{"id": f"t{i}", "prompt": f"q{i}"} for i in range(count)]}]}


async def _no_sleep(seconds: float) -> None:
    await anyio.lowlevel.checkpoint()


def refusing_url() -> str:
    """A loopback port nothing listens on: every connection is refused at once."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


async def first_requests_after_an_outage() -> None:
    print("== 0. a dead primary, a healthy backup (`model: [primary, backup]`, shipped defaults): latency of "
          "each request, in order")
    for outage in ("refuses connections", "hangs (HTTP timeout 2 s)", "hangs, hedge_after: 0.5"):
        with running_fault_server() as backup, running_fault_server() as hanging:
            hanging.default, hanging.hang_seconds = "hang", 5.0
            primary = refusing_url() if outage.startswith("refuses") else hanging.url
            config = EngineConfig(
                providers={"primary": HttpProviderConfig(kind="openai", base_url=primary, timeout=2.0),
                           "backup": HttpProviderConfig(kind="openai", base_url=backup.url)},
                models={"medium_ai": ModelConfig(provider="primary"), "thinking_ai": ModelConfig(provider="backup")})
            engine = Engine(config)  # the real sleep: retries would cost real time
            await engine.run(flow(1, ["thinking_ai"]))  # a running service: the process has made HTTP calls before
            hedge = {"hedge_after": 0.5} if "hedge" in outage else {}
            latencies = []
            for _ in range(53):
                start = time.perf_counter()
                result = await engine.run(flow(1, ["medium_ai", "thinking_ai"], **hedge))
                latencies.append(time.perf_counter() - start)
                assert result.status == "succeeded" and result.tasks["t0"].model == "thinking_ai", result.error
            crowd = Engine(config)
            start = time.perf_counter()
            result = await crowd.run(flow(200, ["medium_ai", "thinking_ai"], stage="linear", **hedge))
            wall = time.perf_counter() - start
            assert result.status == "succeeded", result.error
            for each in (engine, crowd):
                await each.aclose()
        first = ", ".join(f"{latency * 1000:.1f}" for latency in latencies[:3])
        print(f"  primary {outage}: requests 1, 2, 3: {first} ms")
        summary("  requests 4-53", latencies[3:], "ms", 1000)
        print(f"  200 concurrent requests on a fresh engine: {wall:.2f} s wall")


async def failover() -> None:
    print("== 1. failover with an open breaker (task latency, ms)")
    with running_fault_server() as server:
        server.default = "503"
        config = EngineConfig(providers={"dead": HttpProviderConfig(kind="openai", base_url=server.url)},
                              models={"medium_ai": ModelConfig(provider="dead")})
        engine = Engine(config, models={"fast_ai": FakeModel()}, sleep=_no_sleep)
        await engine.run(flow(5, ["medium_ai", "fast_ai"], retry=None))  # opens the breaker
        assert engine.health()["breakers"]["medium_ai"]["state"] == "open"
        fallback: list[float] = []
        direct: list[float] = []
        for _ in range(7):
            result = await engine.run(flow(50, ["medium_ai", "fast_ai"], retry=None))
            fallback += [task.latency_s or 0.0 for task in result.tasks.values()]
            result = await engine.run(flow(50, ["fast_ai"], retry=None))
            direct += [task.latency_s or 0.0 for task in result.tasks.values()]
        await engine.aclose()
        print(f"  requests the dead server got after opening: {len(server.requests) - 5}")
    summary("open breaker -> fallback model answers", fallback, "ms", 1000)
    summary("same task straight to the fallback model", direct, "ms", 1000)


async def retries() -> None:
    print("== 2. retries per run of 40 tasks under 30 % transient faults")
    faults = ["429", "500", "503", "hang", "reset", "malformed", "cut"]
    counts: list[float] = []
    walls: list[float] = []
    for seed in range(5):
        with running_fault_server() as server:
            rng = random.Random(seed)
            server.chooser = lambda body, rng=rng: rng.choice(faults) if rng.random() < 0.3 else "ok"
            server.hang_seconds = 1.0
            provider = HttpProviderConfig(kind="openai", base_url=server.url, timeout=0.3)
            # As in the fault suite: breakers and per-class caps out of the way, so this counts retries.
            config = EngineConfig(providers={"flaky": provider}, models={"medium_ai": ModelConfig(provider="flaky")},
                                  breaker=BreakerConfig(failures=1000), retry=RetryConfig(attempts={
                                      "rate_limit": 10, "server_error": 10, "timeout": 10, "connection": 10}))
            engine = Engine(config, sleep=_no_sleep, stream_tokens=seed % 2 == 1)
            start = time.perf_counter()
            with capture_events(engine) as events:
                result = await engine.run(flow(40, ["medium_ai"], stage="linear", retry={"max_attempts": 10}))
            walls.append(time.perf_counter() - start)
            await engine.aclose()
            assert result.status == "succeeded", result.error
            counts.append(sum(1 for event in events if event.type == "task_retrying"))
    summary("retries per run (seeds 0-4, JSON and SSE alternating)", counts, "retries")
    summary("wall time per run (hangs cost their 0.3 s timeout)", walls, "s")


async def local_tokens_per_second() -> None:
    print("== 3. local model, completion tokens per second (max_tokens 128, temperature 0)")
    provider = LlamaCppProvider("local", LlamaCppProviderConfig(kind="llama_cpp"))
    llama = provider._model()  # the same loaded model for both
    messages = [{"role": "user", "content": "Write a short story about a lighthouse keeper."}]
    direct: list[float] = []
    for _ in range(5):
        start = time.perf_counter()
        out = llama.create_chat_completion(messages=messages, max_tokens=128, temperature=0.0)
        direct.append(out["usage"]["completion_tokens"] / (time.perf_counter() - start))
    through: list[float] = []
    for stream in (False, True):
        engine = Engine(models=provider, stream_tokens=stream)
        document = {"dsl": "orchestrion/v1", "name": "local", "defaults": {"model": "fast_ai"},
                    "stages": [{"type": "inline", "tasks": [{"id": "a", "prompt": messages[0]["content"],
                                                             "max_tokens": 128, "temperature": 0.0}]}]}
        samples = []
        for _ in range(5):
            with capture_events(engine):  # a listener makes the engine stream token deltas
                start = time.perf_counter()
                result = await engine.run(document)
                samples.append(result.tasks["a"].output_tokens / (time.perf_counter() - start))
        summary(f"engine.run, {'streaming deltas' if stream else 'one completion'}", samples, "tok/s")
        through += samples
    summary("llama-cpp-python called directly", direct, "tok/s")


async def main() -> None:
    await first_requests_after_an_outage()
    await failover()
    await retries()
    await local_tokens_per_second()


if __name__ == "__main__":
    anyio.run(main)
