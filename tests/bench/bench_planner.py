"""The master planner on the local model: how often its workflows are valid, first try and after repairs.

Run: ``python -m tests.bench.bench_planner`` (needs ``orchestrion[local]``; about 25 s a request).
Each planned workflow that validates is also run, on a FakeModel, to show that it runs.
"""

from __future__ import annotations

import statistics
import sys
import time

import anyio

from engine import Engine
from engine.testing import FakeModel

REQUESTS = [
    "Create a marketing campaign for eco-friendly water bottles",
    "Write a research report on solid-state batteries",
    "Plan a week-long trip to Japan for two people",
    "Draft a business proposal for a neighbourhood bakery",
    "Explain quantum computing to a ten-year-old",
    "Review a Python function for security problems and suggest fixes",
    "Compare three cloud providers for a small startup",
    "Write a product description and three tweets for a smart thermostat",
    "Summarise the pros and cons of remote work for managers",
    "Design a REST API for a library book lending service",
    "Create a lesson plan about photosynthesis for high school students",
    "Analyse the market size for electric scooters in Europe",
    "Write a press release announcing a new mobile banking app",
    "Prepare interview questions for a senior data engineer",
    "Draft a newsletter about healthy eating habits",
    "Write unit tests for a date-parsing library",
    "Create a customer persona for a premium coffee subscription",
    "Outline a YouTube video script about home composting",
    "Do a SWOT analysis of a regional airline",
    "Translate a short product FAQ into plain, polite English",
    "Plan the launch of an open-source command-line tool",
    "Write a short story and a poem about the sea, then pick the better one",
]


async def main(count: int) -> None:
    engine = Engine()
    dry = Engine(models=FakeModel())
    rows = []
    for request in REQUESTS[:count]:
        start = time.perf_counter()
        outcome = await engine.plan_outcome(request)
        seconds = time.perf_counter() - start
        ran = None
        if outcome.workflow is not None:
            ran = (await dry.run(outcome.workflow)).status
        rows.append((request, outcome.valid_first_try, outcome.workflow is not None, len(outcome.attempts), ran,
                     seconds, [a.problems[:2] for a in outcome.attempts if a.problems]))
        print(f"{'first try' if rows[-1][1] else 'repaired' if rows[-1][2] else 'FAILED':>9}  "
              f"attempts={len(outcome.attempts)}  run={ran}  {seconds:5.1f}s  {request}", flush=True)
        for problems in rows[-1][6]:
            print(f"           problems: {problems}", flush=True)
    total = len(rows)
    first = sum(row[1] for row in rows)
    valid = sum(row[2] for row in rows)
    ran = sum(row[4] == "succeeded" for row in rows)
    print(f"\n{total} requests: valid on the first try {first}/{total} ({first / total:.0%}), "
          f"valid after repairs {valid}/{total} ({valid / total:.0%}), ran {ran}/{valid}; "
          f"median {statistics.median(row[5] for row in rows):.1f}s per request")


if __name__ == "__main__":
    anyio.run(main, int(sys.argv[1]) if len(sys.argv) > 1 else len(REQUESTS))
