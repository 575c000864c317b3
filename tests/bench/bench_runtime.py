"""What running a workflow costs on top of the model calls, against a bare anyio floor and LangGraph.

Run: ``python -m tests.bench.bench_runtime`` (``--quick`` for a shorter run). Not part of the
test run: the machines are shared and noisy, so it prints medians and min-max of several runs
and ratios against the floor, and asserts nothing about time.

1. Per-task overhead: a fan-out of 1,000 zero-latency tasks.
2. Per-step overhead: a chain of 1,000 zero-latency steps.
3. A 10,000-way fan-out with 50 ms of simulated latency: wall time minus the critical path,
   and tracemalloc peak per in-flight task.
4. Dataflow vs staged scheduling on stages of mixed latencies.
5. Start-up: importing the package and running the CLI, in subprocesses.

Every task's prompt is the constant "go" (no Jinja), so what is measured is the scheduler.
Every contender calls the same ``FakeModel.complete``. LangGraph (``pip install langgraph``) is
optional: without it its rows are skipped with a note.
"""

from __future__ import annotations

import argparse
import gc
import operator
import os
import statistics
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, TypedDict

import anyio

from engine import Engine
from engine.model.client import Message, ModelRequest
from engine.testing import FakeModel

WIDTH = 1_000  # tasks of the fan-out, steps of the chain
BIG = 10_000  # tasks of the fan-out with latency
LATENCY = 0.05
LANGGRAPH_BUDGET = 60.0  # seconds one LangGraph run of the big fan-out may take before it is skipped
REQUEST = ModelRequest("fast_ai", (Message("user", "go"),))
DEFAULTS = {"model": "fast_ai", "retry": None, "timeout": None}
Samples = list[float]

try:
    from langgraph.graph import END, START, StateGraph
except ImportError:  # optional: only for the comparison
    StateGraph = None


class Settings:
    def __init__(self, quick: bool) -> None:
        self.repeats = 3 if quick else 7
        self.big = 2_000 if quick else BIG
        self.big_repeats = 1 if quick else 3
        self.startup_repeats = 3 if quick else 5


# ---------------------------------------------------------------- measuring and printing


async def measure(run: Callable[[], Awaitable[object]], repeats: int, warmup: int = 1) -> Samples:
    for _ in range(warmup):
        await run()
    samples = []
    for _ in range(repeats):
        gc.collect()
        start = time.perf_counter()
        await run()
        samples.append(time.perf_counter() - start)
    return samples


def header(title: str) -> None:
    print(f"\n== {title}")


def note(text: str) -> None:
    print(f"   note: {text}")


def row(label: str, samples: Samples, *, per: int = 1, unit: str = "us", floor: float | None = None,
        minus: float = 0.0) -> float:
    """Print median (min-max) of ``(sample - minus) / per``; return the median."""
    scale = {"us": 1e6, "ms": 1e3, "s": 1.0}[unit]
    values = [(sample - minus) / per * scale for sample in samples]
    median = statistics.median(values)
    ratio = f"  {median / floor:6.2f}x floor" if floor else ""
    print(f"   {label:<58} median {median:9.1f} {unit:<2} (min {min(values):9.1f}, max {max(values):9.1f})"
          f"  n={len(values)}{ratio}")
    return median


# ---------------------------------------------------------------- the contenders


def fan_workflow(width: int, name: str = "fan") -> dict[str, Any]:
    tasks = [{"id": f"t{index}", "prompt": "go"} for index in range(width)]
    return {"dsl": "orchestrion/v1", "name": name, "defaults": DEFAULTS, "stages": [{"type": "linear", "tasks": tasks}]}


def chain_workflow(length: int) -> dict[str, Any]:
    tasks = [{"id": f"t{index}", "prompt": "go"} for index in range(length)]
    return {"dsl": "orchestrion/v1", "name": "chain", "defaults": DEFAULTS,
            "stages": [{"type": "inline", "tasks": tasks}]}


async def floor_fan(model: FakeModel, width: int) -> None:
    async def call() -> None:
        await model.complete(REQUEST)

    async with anyio.create_task_group() as group:
        for _ in range(width):
            group.start_soon(call)


async def floor_chain(model: FakeModel, length: int) -> None:
    for _ in range(length):
        await model.complete(REQUEST)


async def task_per_step_chain(model: FakeModel, length: int) -> None:
    """For scale: the chain with one anyio task per step, as a scheduler must spawn."""
    async def call() -> None:
        await model.complete(REQUEST)

    for _ in range(length):
        async with anyio.create_task_group() as group:
            group.start_soon(call)


class FanState(TypedDict):
    out: Annotated[list[str], operator.add]


class ChainState(TypedDict):
    last: str


def langgraph_fan(model: FakeModel, width: int) -> Any:
    async def node(state: FanState) -> dict[str, list[str]]:
        return {"out": [(await model.complete(REQUEST)).text]}

    graph = StateGraph(FanState)
    for index in range(width):
        graph.add_node(f"t{index}", node)
        graph.add_edge(START, f"t{index}")
        graph.add_edge(f"t{index}", END)
    return graph.compile()


def langgraph_chain(model: FakeModel, length: int) -> Any:
    async def node(state: ChainState) -> dict[str, str]:
        return {"last": (await model.complete(REQUEST)).text}

    graph = StateGraph(ChainState)
    previous = START
    for index in range(length):
        graph.add_node(f"t{index}", node)
        graph.add_edge(previous, f"t{index}")
        previous = f"t{index}"
    graph.add_edge(previous, END)
    return graph.compile()


def reset(model: FakeModel) -> FakeModel:
    model.calls.clear()  # FakeModel records every request; keep every run's memory the same
    return model


async def orchestrion_run(engine: Engine, workflow: Any, model: FakeModel) -> None:
    reset(model)
    result = await engine.run(workflow)
    if result.status != "succeeded":
        raise RuntimeError(f"the run {result.status}: {result.error}")


async def langgraph_run(graph: Any, state: dict[str, Any], model: FakeModel, config: Any = None) -> None:
    reset(model)
    await graph.ainvoke(state, config)


def timed_build(build: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    built = build()
    return built, time.perf_counter() - start


# ---------------------------------------------------------------- the benchmarks


async def bench_fan(settings: Settings) -> None:
    header(f"1. fan-out of {WIDTH:,} zero-latency tasks, per task ({settings.repeats} runs, 1 warm-up)")
    model = FakeModel()
    floor = row("floor: anyio task group, model.complete each",
                await measure(lambda: floor_fan(reset(model), WIDTH), settings.repeats), per=WIDTH)
    engine = Engine(models=model)
    document = fan_workflow(WIDTH)
    workflow = engine.load(document)  # engine.run(workflow) reuses the compiled plan: the run alone
    row("Orchestrion engine.run (plan compiled once)",
        await measure(lambda: orchestrion_run(engine, workflow, model), settings.repeats),
        per=WIDTH, floor=floor)
    row("Orchestrion engine.run(dict): validate+compile+run",
        await measure(lambda: orchestrion_run(engine, document, model), settings.repeats),
        per=WIDTH, floor=floor)
    if StateGraph is None:
        note("LangGraph is not importable: skipped (pip install langgraph)")
        return
    graph, built = timed_build(lambda: langgraph_fan(model, WIDTH))
    row("LangGraph ainvoke (graph compiled once)",
        await measure(lambda: langgraph_run(graph, {"out": []}, model), settings.repeats),
        per=WIDTH, floor=floor)
    note(f"building and compiling the LangGraph graph took {built * 1000:.0f} ms once, not counted above")


async def bench_chain(settings: Settings) -> None:
    header(f"2. chain of {WIDTH:,} zero-latency steps, per step ({settings.repeats} runs, 1 warm-up)")
    model = FakeModel()
    floor = row("floor: plain loop of awaited model.complete",
                await measure(lambda: floor_chain(reset(model), WIDTH), settings.repeats), per=WIDTH)
    row("for scale: one anyio task group + task per step",
        await measure(lambda: task_per_step_chain(reset(model), WIDTH), settings.repeats), per=WIDTH, floor=floor)
    engine = Engine(models=model)
    document = chain_workflow(WIDTH)
    workflow = engine.load(document)
    row("Orchestrion engine.run, inline stage (plan compiled once)",
        await measure(lambda: orchestrion_run(engine, workflow, model), settings.repeats),
        per=WIDTH, floor=floor)
    row("Orchestrion engine.run(dict): validate+compile+run",
        await measure(lambda: orchestrion_run(engine, document, model), settings.repeats),
        per=WIDTH, floor=floor)
    note("a zero-latency FakeModel.complete never suspends, so the floor loop never yields to the event loop")
    if StateGraph is None:
        note("LangGraph is not importable: skipped (pip install langgraph)")
        return
    graph, built = timed_build(lambda: langgraph_chain(model, WIDTH))
    config = {"recursion_limit": WIDTH + 10}
    row("LangGraph ainvoke, linear chain (graph compiled once)",
        await measure(lambda: langgraph_run(graph, {"last": ""}, model, config), settings.repeats),
        per=WIDTH, floor=floor)
    note(f"building and compiling the LangGraph graph took {built * 1000:.0f} ms once, not counted above")


async def peak_memory(run: Callable[[], Awaitable[object]]) -> int:
    gc.collect()
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        await run()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


async def bench_big_fan(settings: Settings) -> None:
    big, repeats = settings.big, settings.big_repeats
    header(f"3. fan-out of {big:,} tasks, {LATENCY * 1000:.0f} ms latency each: wall time minus the critical path "
           f"({repeats} runs, 1 warm-up)")
    model = FakeModel(latency=LATENCY)
    floor = row("floor: anyio task group, overhead per task",
                await measure(lambda: floor_fan(reset(model), big), repeats), per=big, minus=LATENCY)
    floor_memory = await peak_memory(lambda: floor_fan(reset(model), big)) / big
    engine = Engine(models=model)
    document = fan_workflow(big, "big_fan")
    workflow = engine.load(document)
    _, compiled = timed_build(lambda: engine.compile(workflow))
    row("Orchestrion engine.run (plan compiled once)",
        await measure(lambda: orchestrion_run(engine, workflow, model), repeats),
        per=big, minus=LATENCY, floor=floor)
    memory = await peak_memory(lambda: orchestrion_run(engine, workflow, model)) / big
    note(f"compiling the {big:,}-task workflow took {compiled * 1000:.0f} ms once, not counted above")
    memories = [("floor: anyio task group", floor_memory, None), ("Orchestrion engine.run", memory, floor_memory)]
    if StateGraph is None:
        note("LangGraph is not importable: skipped (pip install langgraph)")
    else:
        graph, built = timed_build(lambda: langgraph_fan(model, big))
        start = time.perf_counter()
        with anyio.move_on_after(LANGGRAPH_BUDGET) as scope:
            await langgraph_run(graph, {"out": []}, model)
        first = time.perf_counter() - start
        if scope.cancelled_caught:
            note(f"LangGraph: one run did not finish within {LANGGRAPH_BUDGET:.0f} s: skipped")
        else:
            samples = [first] + await measure(lambda: langgraph_run(graph, {"out": []}, model),
                                              repeats - 1, warmup=0)
            row("LangGraph ainvoke (graph compiled once; no warm-up)", samples, per=big, minus=LATENCY, floor=floor)
            lg_memory = await peak_memory(lambda: langgraph_run(graph, {"out": []}, model)) / big
            memories.append(("LangGraph ainvoke", lg_memory, floor_memory))
            note(f"building and compiling the LangGraph graph took {built:.1f} s once, not counted above")
    print(f"   tracemalloc peak during one run / {big:,} (tracemalloc slows every contender alike; "
          "memory allocated before the run, such as a compiled plan or graph, is not counted):")
    for label, value, base in memories:
        ratio = f"  {value / base:6.2f}x floor" if base else ""
        print(f"   {label:<58} {value / 1024:9.2f} KiB per task{ratio}")


def mixed_workflow(schedule: str) -> dict[str, Any]:
    return {"dsl": "orchestrion/v1", "name": f"mixed_{schedule}", "schedule": schedule, "defaults": DEFAULTS,
            "stages": [
                {"type": "linear", "tasks": [{"id": "a", "model": "fast_ai", "prompt": "go"},
                                             {"id": "b", "model": "medium_ai", "prompt": "go"}]},
                {"type": "linear", "tasks": [{"id": "c", "model": "thinking_ai", "prompt": "{{ a }}"}]},
                {"type": "linear", "tasks": [{"id": "d", "model": "code_ai", "prompt": "{{ c }}"}]},
            ]}


async def bench_dataflow(settings: Settings) -> None:
    latencies = {"fast_ai": 0.01, "medium_ai": 0.2, "thinking_ai": 0.2, "code_ai": 0.01}
    dataflow_path = max(latencies["fast_ai"] + latencies["thinking_ai"] + latencies["code_ai"], latencies["medium_ai"])
    staged_path = (max(latencies["fast_ai"], latencies["medium_ai"]) + latencies["thinking_ai"]
                   + latencies["code_ai"])
    header(f"4. dataflow vs staged ({settings.repeats} runs, 1 warm-up): stage 1 a (10 ms) | b (200 ms); "
           "stage 2 c reads a (200 ms); stage 3 d reads c (10 ms)")
    print(f"   critical path: dataflow max(a+c+d, b) = {dataflow_path * 1000:.0f} ms; "
          f"with stage barriers max(a, b)+c+d = {staged_path * 1000:.0f} ms")
    model = FakeModel(latency=latencies)
    engine = Engine(models=model)
    for schedule in ("dataflow", "staged"):
        workflow = engine.load(mixed_workflow(schedule))
        samples = await measure(lambda workflow=workflow: orchestrion_run(engine, workflow, model),
                                settings.repeats)
        median = row(f"Orchestrion schedule: {schedule}", samples, unit="ms")
        ratios = [f"{median / 1000 / path:.3f}x the {name} critical path"
                  for name, path in (("dataflow", dataflow_path), ("staged", staged_path))]
        print(f"   {'':<58} = {', '.join(ratios)}")


def bench_startup(settings: Settings) -> None:
    bin_dir = Path(sys.executable).parent
    python = str(bin_dir / "python") if (bin_dir / "python").exists() else sys.executable
    commands = [
        ("python -c pass (the interpreter alone)", [python, "-c", "pass"]),
        ("python -c 'import engine'", [python, "-c", "import engine"]),
        ("python -c 'from engine import Engine'", [python, "-c", "from engine import Engine"]),
        ("orchestrion --help", [str(bin_dir / "orchestrion"), "--help"]),
        ("python -c 'import langgraph.graph'", [python, "-c", "import langgraph.graph"]),
    ]
    header(f"5. start-up, wall time of a subprocess ({settings.startup_repeats} runs, 1 warm-up)")
    environment = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    for label, command in commands:
        if "langgraph" in command[-1] and StateGraph is None:
            note("LangGraph is not importable: skipped")
            continue
        if not Path(command[0]).exists():
            note(f"{command[0]} not found: skipped")
            continue
        samples = []
        for attempt in range(settings.startup_repeats + 1):
            start = time.perf_counter()
            subprocess.run(command, check=True, capture_output=True, env=environment)
            if attempt:  # the first run warms the OS file cache
                samples.append(time.perf_counter() - start)
        row(label, samples, unit="ms")


async def main_async(settings: Settings) -> None:
    await bench_fan(settings)
    await bench_chain(settings)
    await bench_big_fan(settings)
    await bench_dataflow(settings)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer runs and a 2,000-task big fan-out")
    settings = Settings(parser.parse_args().quick)
    print(f"Python {sys.version.split()[0]} on {os.cpu_count()} CPUs, asyncio backend; "
          f"LangGraph {'available' if StateGraph is not None else 'not importable'}; prompts are the constant 'go'")
    anyio.run(main_async, settings)
    bench_startup(settings)


if __name__ == "__main__":
    main()
