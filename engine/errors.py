"""The one error tree of Orchestrion.

Every error the engine raises on purpose derives from ``OrchestrionError``::

    OrchestrionError
     ├── WorkflowError          a workflow document is invalid: every Problem found,
     │                          each with file:line:column, the path and a hint
     ├── CatalogError           an addon or template file is invalid
     └── TemplateError          rendering a Jinja template or expression failed
          ├── TemplateSecurityError   the sandbox refused an operation
          └── TemplateLimitError      output size or work exceeded its cap

Later layers (runtime, providers) hang their errors under the same root.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

PathPart = str | int
Path = tuple[PathPart, ...]


def format_path(path: Path) -> str:
    """``("stages", 1, "tasks", 0, "prompt")`` -> ``stages[1].tasks[0].prompt``."""
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else part
    return text or "<document>"


@dataclass(frozen=True, slots=True)
class Location:
    """Where something stands in a source file (1-based line and column)."""

    file: str
    line: int | None = None
    column: int | None = None

    def __str__(self) -> str:
        if self.line is None:
            return self.file
        return f"{self.file}:{self.line}:{self.column or 1}"


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a workflow: what, where, and how to fix it."""

    code: str
    message: str
    path: Path = ()
    hint: str | None = None
    location: Location | None = None

    def sort_key(self) -> tuple[int, int]:
        """Problems sort by their position in the file."""
        if self.location is None:
            return (0, 0)
        return (self.location.line or 0, self.location.column or 0)

    def __str__(self) -> str:
        where = f"{self.location}: " if self.location else ""
        path = f"{format_path(self.path)}: " if self.path else ""
        text = f"{where}{path}{self.message}"
        return f"{text}\n    hint: {self.hint}" if self.hint else text


class OrchestrionError(Exception):
    """Root of every error Orchestrion raises on purpose."""


class WorkflowError(OrchestrionError):
    """A workflow document failed to load, validate or compile.

    ``problems`` holds every problem found, not just the first.
    """

    def __init__(self, problems: Sequence[Problem]) -> None:
        if not problems:
            raise ValueError("WorkflowError needs at least one problem")
        self.problems = tuple(problems)
        count = len(self.problems)
        head = f"{count} problem{'s' if count > 1 else ''} in workflow"
        super().__init__(head + ":\n" + "\n".join(str(p) for p in self.problems))

    @classmethod
    def merge(cls, errors: Iterable[WorkflowError]) -> WorkflowError:
        return cls([problem for error in errors for problem in error.problems])


class CatalogError(OrchestrionError):
    """An addon or template file in a catalog folder is invalid."""


class TemplateError(OrchestrionError):
    """Rendering a template or evaluating an expression failed."""


class TemplateSecurityError(TemplateError):
    """The sandbox refused an operation (private attribute, unsafe call...)."""


class TemplateLimitError(TemplateError):
    """A template exceeded its output size or work budget."""
