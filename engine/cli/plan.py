"""``orchestrion plan "request"``: the master planner writes a workflow file."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from engine.cli.options import add_options, build_engine

if TYPE_CHECKING:
    from engine.core import Engine
    from engine.planner import PlanOutcome


def add_parser(commands: Any) -> None:
    plan = commands.add_parser("plan", help="have the master planner write a workflow for a request")
    plan.add_argument("request", help="what the workflow should do")
    plan.add_argument("-o", "--output", type=Path, metavar="FILE", help="write the workflow here (default: stdout)")
    plan.add_argument("--model", metavar="ALIAS", help="the planner's model alias (default: thinking_ai)")
    plan.add_argument("-v", "--verbose", action="store_true",
                      help="say how the plan was made (template or pattern, and why) and every lint finding")
    add_options(plan, "addons", "templates", "config")
    plan.set_defaults(handler=plan_command)


def plan_command(args: argparse.Namespace, out: TextIO) -> int:
    import anyio

    from engine.planner import dump_yaml
    from engine.schema import schema_link

    outcome = anyio.run(_plan, build_engine(args), args.request, args.model)
    if args.verbose and outcome.choice is not None:
        print(f"planned ({outcome.mode}) from the {outcome.choice.kind} {outcome.choice.name!r}: "
              f"{outcome.choice.reason}", file=sys.stderr)
        for name, value in outcome.choice.inputs.items():
            print(f"    input {name} = {value!r}", file=sys.stderr)
    for number, attempt in enumerate(outcome.attempts, 1):
        verdict = "valid" if not attempt.problems else f"{len(attempt.problems)} problem(s)"
        if not attempt.problems and attempt.lints:
            verdict += f", {len(attempt.lints)} lint finding(s)"
        print(f"attempt {number}: {verdict}", file=sys.stderr)
        for problem in attempt.problems[:10]:
            print(f"    {problem}", file=sys.stderr)
        for lint in attempt.lints[:10] if args.verbose else ():
            print(f"    lint: {lint}", file=sys.stderr)
    if outcome.document is None:
        print(f"orchestrion: no valid workflow after {len(outcome.attempts)} attempts", file=sys.stderr)
        return 1
    text = dump_yaml(outcome.document, schema_link(args.output))
    if args.output is None:
        out.write(text)
    else:
        args.output.write_text(text, encoding="utf-8")
        print(f"wrote {args.output}", file=sys.stderr)
    return 0


async def _plan(engine: Engine, request: str, model: str | None) -> PlanOutcome:
    try:
        return await engine.plan_outcome(request, model=model)
    finally:
        await engine.aclose()  # the providers' connections belong to this event loop, which ends here
