"""``orchestrion validate``: check the workflows among files and folders of a repository.

A repository holds more YAML and JSON than workflows (compose files, CI
pipelines, ``package.json``), so files found in a folder, and every file under
``--only-workflows`` (what the pre-commit hook passes), are checked only if
they are workflows: a document that declares ``dsl:``, or has the seed
format's ``workflow:`` list, or does not parse but names ``orchestrion/``.
The rest are skipped (``-v`` says which). A file named on the command line
must be a workflow, unless ``--only-workflows``; ``--strict-files`` makes every
file given, even by the hook, a workflow that must validate.

Exit codes: 0 every workflow is valid (or there are none), 1 a workflow has a
problem, 2 a usage or configuration error.
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from engine.cli.options import add_options, build_catalog
from engine.cli.reports import FORMATS, FileReport, Reports, write_report
from engine.errors import Location, Problem, WorkflowError

if TYPE_CHECKING:
    from engine.catalog import Catalog

EXIT_OK, EXIT_INVALID = 0, 1
NO_DSL = "no `dsl:` key, and not the seed format"
_TOP_LEVEL_DSL = re.compile(r"^dsl[ \t]*:", re.MULTILINE)  # a key of the top-level YAML mapping
SUFFIXES = (".yaml", ".yml", ".json")
# Folders a walk never enters: tools' caches and installed dependencies, not the repository's own files.
SKIPPED_FOLDERS = frozenset({"node_modules", "__pycache__", "venv", "site-packages", "dist", "build"})


def add_parser(commands: Any, check_options: Sequence[str]) -> None:
    validate = commands.add_parser(
        "validate", help="check workflow files and the workflows in folders; exit 1 if any has a problem",
        description=__doc__.split("\n\n")[1].replace("\n", " ") if __doc__ else None)
    validate.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="a workflow file, or a folder to search")
    validate.add_argument("-v", "--verbose", action="store_true",
                          help="also report the valid workflows and the files skipped as not workflows")
    validate.add_argument("--format", choices=FORMATS, default="text",
                          help="text (default), github (Actions annotations), json, or sarif")
    validate.add_argument("--only-workflows", action="store_true",
                          help="skip the files given that are not workflows, as in folders (the pre-commit hook)")
    validate.add_argument("--strict-files", action="store_true",
                          help="every file given must be a workflow, even with --only-workflows")
    add_options(validate, *check_options)
    validate.set_defaults(handler=validate_command)


def validate_command(args: argparse.Namespace, out: TextIO) -> int:
    catalog = build_catalog(args)
    reports = Reports()
    for path, explicit in candidates(args.paths):
        strict = args.strict_files or (explicit and not args.only_workflows)
        reports.files.append(_check(path, catalog, strict=strict))
    write_report(reports, args.format, out, verbose=args.verbose)
    return EXIT_INVALID if reports.count("invalid") else EXIT_OK


def candidates(paths: Sequence[Path]) -> Iterator[tuple[Path, bool]]:
    """Each file to look at, and whether it was named itself (True) or found in a folder."""
    for path in paths:
        if path.is_dir():
            yield from ((found, False) for found in _walk(path))
        else:
            yield path, True


def _walk(folder: Path) -> Iterator[Path]:
    for root, folders, files in os.walk(folder):
        folders[:] = sorted(name for name in folders if not name.startswith(".") and name not in SKIPPED_FOLDERS)
        for name in sorted(files):
            if name.endswith(SUFFIXES):
                yield Path(root) / name


def _check(path: Path, catalog: Catalog, *, strict: bool) -> FileReport:
    from engine.compiler import compile_workflow
    from engine.dsl.loader import load_workflow, parse_workflow

    text, reason = read_candidate(path)
    if reason is not None and not strict:
        return FileReport(str(path), "skipped", detail=reason)
    if reason == NO_DSL:  # named on purpose, and parses, but is something else: say so, not every key's error
        return FileReport(str(path), "invalid", [not_a_workflow_problem(path, reason)])
    try:
        # The text read to tell it apart is the one checked (unreadable: the loader says why).
        workflow = parse_workflow(text, name=str(path), file=path) if text is not None else load_workflow(path)
        plan = compile_workflow(workflow, catalog)
    except WorkflowError as exc:
        return FileReport(str(path), "invalid", exc.problems)
    return FileReport(str(path), "ok", detail=f"{len(plan.nodes)} nodes, {len(plan.edges)} edges")


def read_candidate(path: Path) -> tuple[str | None, str | None]:
    """The file's text (None if unreadable or too large), and why it is not taken for a workflow (None if
    it is one, or cannot be told apart). Most files are told apart without being parsed."""
    from engine.dsl.source import MAX_DOCUMENT_BYTES

    try:
        if path.stat().st_size > MAX_DOCUMENT_BYTES:
            return None, "larger than a workflow may be"
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None, None  # the loader says what is wrong with it
    return text, _why_not_a_workflow(text, str(path))


def _why_not_a_workflow(text: str, name: str) -> str | None:
    from engine.dsl.seed import is_seed_document
    from engine.dsl.source import parse_document

    if "dsl" not in text and "workflow" not in text:
        return NO_DSL
    if _TOP_LEVEL_DSL.search(text):  # a YAML workflow's first key: no need to parse it twice
        return None
    try:
        data = parse_document(text, name).data
    except WorkflowError:
        return None if "orchestrion/" in text else "does not parse, and does not name orchestrion/"
    return None if isinstance(data, dict) and ("dsl" in data or is_seed_document(data)) else NO_DSL


def not_a_workflow_problem(path: Path, reason: str) -> Problem:
    return Problem("not-a-workflow", f"not a workflow: {reason}", location=Location(str(path), 1, 1),
                   hint="a workflow starts with `dsl: orchestrion/v1`; to skip files that are not workflows, "
                        "pass --only-workflows")
