"""What the master planner makes of 32 varied requests, offline, on the embedded model.

Run: ``python -m tests.bench.bench_plans [--set heldout|dev] [--mode guided|free] [--limit N]``. Not
part of the test run. Two sets of requests, each labelled with the template that fits (if one does)
and otherwise the pattern: ``dev`` (32, written with the keyword tables, which were tuned on it) and
``heldout`` (40, written by someone who had not seen the planner's code). For each request:
whether a valid plan came, its lint findings (``engine.planner.lints``), whether it uses the fitting
template (or, where none fits, uses none), and the planning time. Prints the shares and the median
and min-max time. The planner is the engine's own (``Engine()``: the packaged Gemma 3 270M, mode
``auto``, which is guided for a model in process), so the numbers are what a new user gets.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import anyio

from engine import Engine, EngineConfig
from engine.config import PlannerConfig
from engine.providers.settings import LlamaCppProviderConfig

DATA = Path(__file__).parent / "data"
SETS = {"dev": DATA / "plan_requests.json",  # written with the keyword tables: they were tuned on it
        "heldout": DATA / "plan_requests_heldout.json"}  # written blind to the planner's code


async def measure(mode: str, limit: int | None, show: bool, which: str) -> None:
    config = EngineConfig(providers={"local": LlamaCppProviderConfig(kind="llama_cpp")}, default_provider="local",
                          planner=PlannerConfig(mode=mode))  # type: ignore[arg-type]
    engine = Engine(config)
    cases: list[dict[str, Any]] = json.loads(SETS[which].read_text())[:limit]
    valid = clean = fitting = patterned = pattern_fits = 0
    times: list[float] = []
    for case in cases:
        started = time.perf_counter()
        outcome = await engine.plan_outcome(case["request"])
        times.append(time.perf_counter() - started)
        last = outcome.attempts[-1]
        choice = outcome.choice
        template = choice.name if choice is not None and choice.kind == "template" else None
        pattern = choice.name if choice is not None and choice.kind == "pattern" else None
        valid += outcome.workflow is not None
        clean += outcome.workflow is not None and not last.lints
        fitting += template == case["template"]
        if case["template"] is None:
            patterned += 1
            pattern_fits += pattern == case.get("pattern")
        if show:
            how = (f"{outcome.choice.kind} {outcome.choice.name}" if outcome.choice
                   else f"{len(outcome.attempts)} attempts")
            print(f"  {times[-1]:6.2f} s  {how:<32} lints {len(last.lints)}  {case['request']}")
            for lint in last.lints:
                print(f"             lint: {lint}")
    count = len(cases)
    print(f"mode {mode}, {count} requests ({which} set)")
    print(f"   valid plans           {valid}/{count} ({valid / count:.0%})")
    print(f"   lint-clean plans      {clean}/{count} ({clean / count:.0%})")
    print(f"   fitting template      {fitting}/{count} ({fitting / count:.0%})  "
          "(the fitting one, or none where none fits)")
    print(f"   fitting pattern       {pattern_fits}/{patterned} ({pattern_fits / max(patterned, 1):.0%})  "
          "(of the requests no template fits)")
    print(f"   planning time         median {statistics.median(times):.2f} s "
          f"(min {min(times):.2f}, max {max(times):.2f})")
    await engine.aclose()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", choices=("guided", "free"), default="guided")
    parser.add_argument("--limit", type=int)
    parser.add_argument("--quiet", action="store_true", help="only the totals")
    parser.add_argument("--set", choices=tuple(SETS), default="heldout")
    args = parser.parse_args()
    anyio.run(measure, args.mode, args.limit, not args.quiet, args.set)


if __name__ == "__main__":
    main()
