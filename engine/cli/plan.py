"""``orchestrion plan "request"``: the master planner writes a workflow file."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, TextIO


def add_parser(commands: Any) -> None:
    plan = commands.add_parser("plan", help="have the master planner write a workflow for a request")
    plan.add_argument("request", help="what the workflow should do")
    plan.add_argument("-o", "--output", type=Path, metavar="FILE", help="write the workflow here (default: stdout)")
    plan.add_argument("--model", metavar="ALIAS", help="the planner's model alias (default: thinking_ai)")
    plan.add_argument("--config", type=Path, metavar="FILE", help="engine configuration (default: ./orchestrion.yaml)")
    plan.set_defaults(handler=plan_command)


def plan_command(args: argparse.Namespace, out: TextIO) -> int:
    import anyio

    from engine.cli.run import DEFAULT_CONFIG
    from engine.core import Engine
    from engine.planner import dump_yaml

    config = args.config or (DEFAULT_CONFIG if DEFAULT_CONFIG.is_file() else None)
    engine = Engine.from_file(config) if config is not None else Engine()
    outcome = anyio.run(lambda: engine.plan_outcome(args.request, model=args.model))
    for number, attempt in enumerate(outcome.attempts, 1):
        verdict = "valid" if not attempt.problems else f"{len(attempt.problems)} problem(s)"
        print(f"attempt {number}: {verdict}", file=sys.stderr)
        for problem in attempt.problems[:10]:
            print(f"    {problem}", file=sys.stderr)
    if outcome.document is None:
        print(f"orchestrion: no valid workflow after {len(outcome.attempts)} attempts", file=sys.stderr)
        return 1
    schema = "../schemas/workflow.schema.json"
    text = dump_yaml(outcome.document, schema)
    if args.output is None:
        out.write(text)
    else:
        args.output.write_text(text, encoding="utf-8")
        print(f"wrote {args.output}", file=sys.stderr)
    return 0
