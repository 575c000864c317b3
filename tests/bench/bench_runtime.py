"""What running a workflow costs on top of the model calls, against a bare anyio floor and LangGraph.

Run: ``python -m tests.bench.bench_runtime`` (``--quick`` for a shorter run). Not part of the
test run: the machines are shared and noisy, so it prints medians and min-max of several runs
and ratios against the floor, and asserts nothing about time.

Every contender calls the same minimal client, the thinnest possible: ``await anyio.sleep(latency)``
and a ModelResponse. (A test double with bookkeeping of its own, such as FakeModel, would make
the floor slower and flatter the engine.) Every task's prompt is the constant "go" (no Jinja).
Orchestrion runs twice: ``bare`` (``retry: null, timeout: null``) and with the shipped defaults
(retries on, a 120 s timeout per attempt, circuit breakers).

1. Per-task overhead: a fan-out of 1,000 zero-latency tasks.
2. Per-step overhead: a chain of 1,000 zero-latency steps.
3. Fan-outs of 1,000 and 10,000 tasks with 50 ms latency: wall time minus the 50 ms, per task,
   and how it grows from 1,000 to 10,000 (linear is 1.0).
4. Peak RSS of a 10,000-way fan-out at 50 ms, each contender in a fresh process that imports
   the same modules.
5. Dataflow vs staged scheduling on stages of mixed latencies.
6. Start-up: importing the package and running the CLI, in subprocesses.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import operator
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, TypedDict

import anyio

from engine import Engine
from engine.model.client import Message, ModelRequest, ModelResponse, TextDelta, Usage

WIDTH = 1_000  # tasks of the zero-latency fan-out, steps of the chain
BIG = 10_000  # tasks of the big fan-out with latency
LATENCY = 0.05
LANGGRAPH_BUDGET = 60.0  # seconds one LangGraph run of the big fan-out may take before it is skipped
REQUEST = ModelRequest("fast_ai", (Message("user", "go"),))
BARE = {"model": "fast_ai", "retry": None, "timeout": None}
DEFAULTS = {"model": "fast_ai"}
GOALS = {"fan": 2.0, "chain": 1.5, "big": 2.0, "rss": 1.5, "linear": 1.3}
Samples = list[float]

try:
    from langgraph.graph import END, START, StateGraph
except ImportError:  # optional: only for the comparison
    StateGraph = None


class ThinClient:
    """The minimal model client every contender calls."""

    def __init__(self, latency: float = 0.0) -> None:
        self.latency = latency
        self.response = ModelResponse("ok", Usage(1, 1))

    async def complete(self, request: ModelRequest) -> ModelResponse:
        await anyio.sleep(self.latency)
        return self.response

    async def stream(self, request: ModelRequest) -> Any:  # never used: no listener is attached
        yield TextDelta("ok")
        yield await self.complete(request)


@dataclass
class Settings:
    quick: bool
    repeats: int = field(init=False)
    big_repeats: int = field(init=False)
    startup_repeats: int = field(init=False)

    def __post_init__(self) -> None:
        self.repeats = 3 if self.quick else 7
        self.big_repeats = 2 if self.quick else 5
        self.startup_repeats = 3 if self.quick else 5


@dataclass
class Summary:
    """The goal ratios, collected as the sections run, printed at the end."""

    rows: list[tuple[str, str, float, float]] = field(default_factory=list)

    def add(self, label: str, floor: str, ratio: float, goal: float) -> None:
        self.rows.append((label, floor, ratio, goal))

    def show(self) -> None:
        header("Summary: Orchestrion with shipped defaults against the goals (medians)")
        for label, floor, ratio, goal in self.rows:
            verdict = "met" if ratio <= goal else "MISSED"
            print(f"   {label:<46} {ratio:5.2f}x {floor:<28} goal <= {goal:.1f}x  {verdict}")


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
    print(f"   {label:<52} median {median:9.1f} {unit:<2} (min {min(values):9.1f}, max {max(values):9.1f})"
          f"  n={len(values)}{ratio}")
    return median


# ---------------------------------------------------------------- the contenders


def fan_workflow(width: int, defaults: dict[str, Any], name: str = "fan") -> dict[str, Any]:
    tasks = [{"id": f"t{index}", "prompt": "go"} for index in range(width)]
    return {"dsl": "orchestrion/v1", "name": name, "defaults": defaults,
            "stages": [{"type": "linear", "tasks": tasks}]}


def chain_workflow(length: int, defaults: dict[str, Any]) -> dict[str, Any]:
    tasks = [{"id": f"t{index}", "prompt": "go"} for index in range(length)]
    return {"dsl": "orchestrion/v1", "name": "chain", "defaults": defaults,
            "stages": [{"type": "inline", "tasks": tasks}]}


async def floor_fan(client: ThinClient, width: int) -> None:
    async def call() -> None:
        await client.complete(REQUEST)

    async with anyio.create_task_group() as group:
        for _ in range(width):
            group.start_soon(call)


async def floor_chain_spawning(client: ThinClient, length: int) -> None:
    """The chain floor of a scheduler that runs each step as a task: a task group and a task per step."""
    async def call() -> None:
        await client.complete(REQUEST)

    for _ in range(length):
        async with anyio.create_task_group() as group:
            group.start_soon(call)


async def floor_chain_loop(client: ThinClient, length: int) -> None:
    """For scale: a plain loop of awaited calls (no task, no group)."""
    for _ in range(length):
        await client.complete(REQUEST)


class FanState(TypedDict):
    out: Annotated[list[str], operator.add]


class ChainState(TypedDict):
    last: str


def langgraph_fan(client: ThinClient, width: int) -> Any:
    async def node(state: FanState) -> dict[str, list[str]]:
        return {"out": [(await client.complete(REQUEST)).text]}

    graph = StateGraph(FanState)
    for index in range(width):
        graph.add_node(f"t{index}", node)
        graph.add_edge(START, f"t{index}")
        graph.add_edge(f"t{index}", END)
    return graph.compile()


def langgraph_chain(client: ThinClient, length: int) -> Any:
    async def node(state: ChainState) -> dict[str, str]:
        return {"last": (await client.complete(REQUEST)).text}

    graph = StateGraph(ChainState)
    previous = START
    for index in range(length):
        graph.add_node(f"t{index}", node)
        graph.add_edge(previous, f"t{index}")
        previous = f"t{index}"
    graph.add_edge(previous, END)
    return graph.compile()


async def orchestrion_run(engine: Engine, workflow: Any) -> None:
    result = await engine.run(workflow)
    if result.status != "succeeded":
        raise RuntimeError(f"the run {result.status}: {result.error}")


def engine_rows(client: ThinClient, build: Callable[[dict[str, Any]], dict[str, Any]]) -> list[tuple[str, Any, Any]]:
    """(label, engine, pre-loaded workflow) for the bare and the default policies: engine.run then reuses
    the compiled plan, so the figure is the run alone."""
    engine = Engine(models=client)
    return [(f"Orchestrion, {label}", engine, engine.load(build(defaults)))
            for label, defaults in (("bare (retry: null, timeout: null)", BARE), ("shipped defaults", DEFAULTS))]


def timed_build(build: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    built = build()
    return built, time.perf_counter() - start


# ---------------------------------------------------------------- the benchmarks


async def bench_fan(settings: Settings, summary: Summary) -> None:
    header(f"1. fan-out of {WIDTH:,} zero-latency tasks, per task ({settings.repeats} runs, 1 warm-up)")
    client = ThinClient()
    floor = row("floor: anyio task group, one task per call", await measure(
        lambda: floor_fan(client, WIDTH), settings.repeats), per=WIDTH)
    median = floor
    for label, engine, workflow in engine_rows(client, lambda defaults: fan_workflow(WIDTH, defaults)):
        median = row(label, await measure(lambda e=engine, w=workflow: orchestrion_run(e, w), settings.repeats),
                     per=WIDTH, floor=floor)
    summary.add(f"fan-out {WIDTH:,}, per task", "the anyio task group", median / floor, GOALS["fan"])
    if StateGraph is None:
        note("LangGraph is not importable: skipped (pip install langgraph)")
        return
    graph, built = timed_build(lambda: langgraph_fan(client, WIDTH))
    row("LangGraph ainvoke (graph compiled once)", await measure(
        lambda: graph.ainvoke({"out": []}), settings.repeats), per=WIDTH, floor=floor)
    note(f"building and compiling the LangGraph graph took {built * 1000:.0f} ms once, not counted above")


async def bench_chain(settings: Settings, summary: Summary) -> None:
    header(f"2. chain of {WIDTH:,} zero-latency steps, per step ({settings.repeats} runs, 1 warm-up)")
    client = ThinClient()
    floor = row("floor: a task group and a task per step", await measure(
        lambda: floor_chain_spawning(client, WIDTH), settings.repeats), per=WIDTH)
    row("for scale: a plain loop of awaited calls", await measure(
        lambda: floor_chain_loop(client, WIDTH), settings.repeats), per=WIDTH, floor=floor)
    median = floor
    for label, engine, workflow in engine_rows(client, lambda defaults: chain_workflow(WIDTH, defaults)):
        median = row(label, await measure(lambda e=engine, w=workflow: orchestrion_run(e, w), settings.repeats),
                     per=WIDTH, floor=floor)
    summary.add(f"chain {WIDTH:,}, per step", "a task per step", median / floor, GOALS["chain"])
    note("Orchestrion runs a chain in one task (a node goes on with the child it makes ready), so it spawns "
         "no task per step; the plain loop is what no scheduler can beat")
    if StateGraph is None:
        return
    graph, _ = timed_build(lambda: langgraph_chain(client, WIDTH))
    row("LangGraph ainvoke, linear chain", await measure(
        lambda: graph.ainvoke({"last": ""}, {"recursion_limit": WIDTH + 10}), settings.repeats),
        per=WIDTH, floor=floor)


async def bench_latency_fans(settings: Settings, summary: Summary) -> None:
    repeats = settings.big_repeats
    widths = (WIDTH, BIG)
    header(f"3. fan-outs of {WIDTH:,} and {BIG:,} tasks, {LATENCY * 1000:.0f} ms latency each: (wall - "
           f"{LATENCY * 1000:.0f} ms) per task ({repeats} runs, 1 warm-up)")
    client = ThinClient(LATENCY)
    medians: dict[tuple[str, int], float] = {}
    for width in widths:
        medians["floor", width] = row(f"floor, {width:,} tasks", await measure(
            lambda w=width: floor_fan(client, w), repeats), per=width, minus=LATENCY)
        rows = engine_rows(client, lambda defaults, w=width: fan_workflow(w, defaults, f"fan_{w}"))
        for kind, (label, engine, workflow) in zip(("bare", "defaults"), rows, strict=True):
            medians[kind, width] = row(f"{label}, {width:,} tasks", await measure(
                lambda e=engine, wf=workflow: orchestrion_run(e, wf), repeats),
                per=width, minus=LATENCY, floor=medians["floor", width])
    for kind in ("floor", "bare", "defaults"):
        growth = medians[kind, BIG] / medians[kind, WIDTH]
        print(f"   per task at {BIG:,} / at {WIDTH:,}: {kind:<8} {growth:5.2f}x")
    summary.add(f"fan-out {BIG:,} at 50 ms, overhead per task", "the anyio task group",
                medians["defaults", BIG] / medians["floor", BIG], GOALS["big"])
    engine_growth = medians["defaults", BIG] / medians["defaults", WIDTH]
    floor_growth = medians["floor", BIG] / medians["floor", WIDTH]
    summary.add(f"per task at {BIG:,} / at {WIDTH:,} (linear = 1)", "(absolute)", engine_growth, GOALS["linear"])
    summary.add("  the same, relative to the floor's own growth", f"(floor grew {floor_growth:.2f}x)",
                engine_growth / floor_growth, GOALS["linear"])
    if StateGraph is None:
        return
    graph, built = timed_build(lambda: langgraph_fan(client, BIG))
    start = time.perf_counter()
    with anyio.move_on_after(LANGGRAPH_BUDGET) as scope:
        await graph.ainvoke({"out": []})
    if scope.cancelled_caught:
        note(f"LangGraph: one run of {BIG:,} did not finish within {LANGGRAPH_BUDGET:.0f} s: skipped")
        return
    first = time.perf_counter() - start
    samples = [first, *await measure(lambda: graph.ainvoke({"out": []}), repeats - 1, warmup=0)]
    row(f"LangGraph ainvoke, {BIG:,} tasks (no warm-up)", samples, per=BIG, minus=LATENCY,
        floor=medians["floor", BIG])
    note(f"building and compiling the {BIG:,}-node LangGraph graph took {built:.1f} s once, not counted above")


# ---------------------------------------------------------------- peak memory, in fresh processes


def memory_kib(field: str) -> int:
    """A line of /proc/self/status: VmRSS (resident now) or VmHWM (the peak since the last reset)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def settle_memory() -> None:
    """Free what preparing the run left behind, give it back to the OS, and reset the peak to now."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    Path("/proc/self/clear_refs").write_text("5")  # Linux: VmHWM := VmRSS


async def one_big_fan(contender: str) -> None:
    client = ThinClient(LATENCY)
    engine = Engine(models=client)  # every contender builds it: the same imports and objects at start
    workflow = engine.load(fan_workflow(BIG, DEFAULTS if contender == "defaults" else BARE))
    engine.compile(workflow)
    graph = langgraph_fan(client, BIG) if contender == "langgraph" else None
    settle_memory()
    baseline = memory_kib("VmRSS")
    if contender == "floor":
        await floor_fan(client, BIG)
    elif graph is not None:
        await graph.ainvoke({"out": []})
    else:
        await orchestrion_run(engine, workflow)
    print(json.dumps({"baseline_kib": baseline, "peak_kib": memory_kib("VmHWM")}))


def bench_rss(settings: Settings, summary: Summary) -> None:
    repeats = settings.big_repeats
    header(f"4. peak RSS of one {BIG:,}-way fan-out at 50 ms, each in a fresh process ({repeats} processes each). "
           "Every process first builds the same engine and compiled plan, frees what that left (gc, malloc_trim) "
           "and resets its peak; 'the run' is the peak minus the resident memory just before the run")
    contenders = ["floor", "bare", "defaults"] + (["langgraph"] if StateGraph is not None else [])
    peaks: dict[str, float] = {}
    grown: dict[str, float] = {}
    for contender in contenders:
        samples, growth = [], []
        for _ in range(repeats):
            output = subprocess.run([sys.executable, "-m", "tests.bench.bench_runtime", "--rss", contender],
                                    check=True, capture_output=True, text=True).stdout
            data = json.loads(output.strip().splitlines()[-1])
            samples.append(data["peak_kib"] / 1024)
            growth.append((data["peak_kib"] - data["baseline_kib"]) / 1024)
        peaks[contender], grown[contender] = statistics.median(samples), statistics.median(growth)
        ratios = (f"  {peaks[contender] / peaks['floor']:5.2f}x and {grown[contender] / grown['floor']:5.2f}x floor"
                  if contender != "floor" else "")
        print(f"   {contender:<10} peak RSS median {peaks[contender]:7.1f} MiB (min {min(samples):6.1f}, max "
              f"{max(samples):6.1f}); the run {grown[contender]:6.1f} MiB (min {min(growth):6.1f}, max "
              f"{max(growth):6.1f}){ratios}")
    summary.add(f"memory of the run, fan-out {BIG:,} at 50 ms", "the anyio task group's",
                grown["defaults"] / grown["floor"], GOALS["rss"])
    summary.add("  peak RSS of the process, the same", "(same baseline)", peaks["defaults"] / peaks["floor"],
                GOALS["rss"])


# ---------------------------------------------------------------- scheduling and start-up


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
    header(f"5. dataflow vs staged ({settings.repeats} runs, 1 warm-up): stage 1 a (10 ms) | b (200 ms); "
           "stage 2 c reads a (200 ms); stage 3 d reads c (10 ms)")
    print(f"   critical path: dataflow max(a+c+d, b) = {dataflow_path * 1000:.0f} ms; "
          f"with stage barriers max(a, b)+c+d = {staged_path * 1000:.0f} ms")
    engine = Engine(models={alias: ThinClient(latency) for alias, latency in latencies.items()})
    for schedule in ("dataflow", "staged"):
        workflow = engine.load(mixed_workflow(schedule))
        samples = await measure(lambda w=workflow: orchestrion_run(engine, w), settings.repeats)
        median = row(f"Orchestrion schedule: {schedule}", samples, unit="ms")
        ratios = [f"{median / 1000 / path:.3f}x the {name} critical path"
                  for name, path in (("dataflow", dataflow_path), ("staged", staged_path))]
        print(f"   {'':<52} = {', '.join(ratios)}")


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
    header(f"6. start-up, wall time of a subprocess ({settings.startup_repeats} runs, 1 warm-up)")
    environment = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    for label, command in commands:
        if "langgraph" in command[-1] and StateGraph is None:
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


async def main_async(settings: Settings, summary: Summary) -> None:
    await bench_fan(settings, summary)
    await bench_chain(settings, summary)
    await bench_latency_fans(settings, summary)
    bench_rss(settings, summary)
    await bench_dataflow(settings)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer runs")
    parser.add_argument("--rss", choices=("floor", "bare", "defaults", "langgraph"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss:  # one contender's peak memory, in this fresh process (section 4)
        anyio.run(one_big_fan, args.rss)
        return
    settings, summary = Settings(args.quick), Summary()
    print(f"Python {sys.version.split()[0]} on {os.cpu_count()} CPUs, asyncio backend; "
          f"LangGraph {'available' if StateGraph is not None else 'not importable'}; prompts are the constant 'go'")
    anyio.run(main_async, settings, summary)
    bench_startup(settings)
    summary.show()


if __name__ == "__main__":
    main()
