"""``orchestrion fmt``: rewrite workflow files in the canonical key order and style.

Files named are formatted; folders are searched for workflows as ``validate``
searches them (seed-format workflows found there are left as they are).
``--check`` writes nothing and exits 1 if a file would change (for CI and
pre-commit).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, TextIO

from engine.cli.validate import candidates, read_candidate

EXIT_OK, EXIT_CHANGED = 0, 1


def add_parser(commands: Any) -> None:
    fmt = commands.add_parser("fmt", help="rewrite workflow files in the canonical key order, comments kept")
    fmt.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="a workflow file, or a folder to search")
    fmt.add_argument("--check", action="store_true", help="change nothing; exit 1 if a file is not formatted")
    fmt.set_defaults(handler=fmt_command)


def fmt_command(args: argparse.Namespace, out: TextIO) -> int:
    from engine.dsl.fmt import FormatError, NotInTheDslError, format_text

    changed = failed = 0
    for path, named in candidates(args.paths):
        text, reason = read_candidate(path) if not named else (None, None)
        if reason is not None:  # found in a folder, and not a workflow
            continue
        try:
            text = text if text is not None else path.read_text(encoding="utf-8")
            formatted = format_text(text, json_file=path.suffix == ".json")
        except NotInTheDslError as error:
            if not named:  # a seed-format workflow found in a folder: run as it is, never rewritten
                continue
            print(f"{path}: {error}", file=sys.stderr)
            failed += 1
            continue
        except (OSError, UnicodeDecodeError, FormatError) as error:
            print(f"{path}: {getattr(error, 'strerror', None) or error}", file=sys.stderr)
            failed += 1
            continue
        if formatted == text:
            continue
        changed += 1
        if args.check:
            print(f"{path}: would be reformatted", file=out)
        else:
            path.write_text(formatted, encoding="utf-8")
            print(f"{path}: reformatted", file=out)
    return EXIT_CHANGED if failed or (args.check and changed) else EXIT_OK
