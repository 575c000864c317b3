"""The ``orchestrion`` command: validate, format, graph, run and plan workflows; list addons and models."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from engine.cli.options import add_options, build_catalog
from engine.errors import CatalogError, ConfigError, InputError, StoreError, WorkflowError

if TYPE_CHECKING:  # imported where used: `orchestrion --help` should not load pydantic
    from engine.catalog import Catalog
    from engine.compiler import Plan

EXIT_OK, EXIT_INVALID, EXIT_USAGE = 0, 1, 2
_CHECK_OPTIONS = ("addons", "templates", "model", "function", "config")  # for commands that do not run


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``orchestrion`` console script; returns the exit code."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.handler(args, sys.stdout)
    except (CatalogError, ConfigError) as exc:
        print(f"orchestrion: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except WorkflowError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return EXIT_INVALID
    except (InputError, StoreError) as exc:
        print(f"orchestrion: {exc}", file=sys.stderr)
        return EXIT_INVALID
    except KeyboardInterrupt:  # Ctrl-C before a run listens for it (a run stops itself and says what it did)
        print("orchestrion: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `orchestrion schema | head`
        return EXIT_OK
    return code


class _CommandParser(argparse.ArgumentParser):
    """A command's parser: it reports an unknown argument itself, with the command's usage.

    argparse parses a command with ``parse_known_args`` and hands what it did not know back to the
    top-level parser, which would print ``usage: orchestrion [-h] COMMAND ...`` instead.
    """

    def parse_known_args(self, *args: Any, **kwargs: Any) -> tuple[Any, list[str]]:
        namespace, unknown = super().parse_known_args(*args, **kwargs)
        if unknown:
            self.error(f"unrecognized arguments: {' '.join(unknown)}")
        return namespace, unknown


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="orchestrion", description="Declarative LLM workflows.")
    commands = parser.add_subparsers(required=True, metavar="COMMAND", parser_class=_CommandParser)

    from engine.cli import batch, fmt, history, models, plan, run, serve, validate

    validate.add_parser(commands, _CHECK_OPTIONS)
    fmt.add_parser(commands)

    graph = commands.add_parser("graph", help="print a workflow's task graph")
    graph.add_argument("file", type=Path, metavar="FILE")
    graph.add_argument("--format", choices=("mermaid", "dot"), default="mermaid")
    add_options(graph, *_CHECK_OPTIONS)
    graph.set_defaults(handler=_graph)

    run.add_parser(commands)
    batch.add_parser(commands)
    history.add_parsers(commands)
    plan.add_parser(commands)
    models.add_parser(commands)
    serve.add_parser(commands)

    schema = commands.add_parser("schema", help="print the JSON Schema of workflow files")
    schema.add_argument("--path", action="store_true",
                        help="print where the installed schema file is instead (for editor settings)")
    schema.set_defaults(handler=_schema)

    addons = commands.add_parser("addons", help="list the prompt addons")
    add_options(addons, "addons")
    addons.set_defaults(handler=_addons)
    return parser


def _compile(path: Path, catalog: Catalog) -> Plan:
    from engine.compiler import compile_workflow
    from engine.dsl.loader import load_workflow

    return compile_workflow(load_workflow(path), catalog)


def _graph(args: argparse.Namespace, out: TextIO) -> int:
    from engine.graph import to_dot, to_mermaid

    try:
        plan = _compile(args.file, build_catalog(args))
    except WorkflowError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return EXIT_INVALID
    out.write(to_dot(plan) if args.format == "dot" else to_mermaid(plan))
    return EXIT_OK


def _schema(args: argparse.Namespace, out: TextIO) -> int:
    from engine.schema import installed_schema, workflow_json_schema

    if args.path:
        installed = installed_schema()
        if installed is None:
            print("orchestrion: no schema file is installed; `orchestrion schema > FILE` writes one",
                  file=sys.stderr)
            return EXIT_USAGE
        print(installed, file=out)
        return EXIT_OK
    out.write(json.dumps(workflow_json_schema(), indent=2, ensure_ascii=False) + "\n")
    return EXIT_OK


def _addons(args: argparse.Namespace, out: TextIO) -> int:
    for addon in sorted(build_catalog(args).addons.values(), key=lambda a: (a.category, a.name)):
        print(f"{addon.category:<18} {addon.name:<24} {addon.description}", file=out)
    return EXIT_OK
