"""``orchestrion models``: every model alias the engine knows, where it runs, what it costs."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any, TextIO

from engine.cli.options import add_options, build_engine

if TYPE_CHECKING:
    from engine.core import Engine

_COLUMNS = {"alias": "ALIAS", "provider": "PROVIDER", "kind": "KIND", "model": "MODEL", "context_window": "WINDOW",
            "input_price": "IN $/M", "output_price": "OUT $/M", "breaker": "BREAKER"}
_NUMBERS = frozenset({"context_window", "input_price", "output_price"})  # aligned right


def add_parser(commands: Any) -> None:
    models = commands.add_parser("models", help="list the model aliases: provider, window, prices, breaker")
    models.add_argument("--json", action="store_true", help="print a JSON list, one object per alias")
    add_options(models, "config")
    models.set_defaults(handler=models_command)


def models_command(args: argparse.Namespace, out: TextIO) -> int:
    rows = model_rows(build_engine(args, secrets=False))  # builds clients, but connects and loads nothing
    if args.json:
        out.write(json.dumps(rows, indent=2) + "\n")
        return 0
    for line in _table(rows):
        print(line, file=out)
    return 0


def model_rows(engine: Engine) -> list[dict[str, Any]]:
    from engine.assembly import model_rows as rows

    return rows(engine.config, engine.health()["breakers"])


def _text(value: Any) -> str:
    return "-" if value is None else f"{value:g}" if isinstance(value, float) else str(value)


def _table(rows: list[dict[str, Any]]) -> list[str]:
    cells = [list(_COLUMNS.values()), *([_text(row[key]) for key in _COLUMNS] for row in rows)]
    widths = [max(len(line[column]) for line in cells) for column in range(len(_COLUMNS))]
    return ["  ".join(cell.rjust(width) if key in _NUMBERS else cell.ljust(width)
                      for key, cell, width in zip(_COLUMNS, line, widths, strict=True)).rstrip() for line in cells]
