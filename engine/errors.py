"""The one error tree of Orchestrion.

Every error the engine raises on purpose derives from ``OrchestrionError``::

    OrchestrionError
     ├── WorkflowError          a workflow document is invalid: every Problem found,
     │                          each with file:line:column, the path and a hint
     ├── CatalogError           an addon or template file is invalid
     ├── ConfigError            the engine's configuration is invalid or incomplete
     ├── InputError             a run's inputs do not match the declared inputs
     ├── PlanningError          the master planner gave no valid workflow within its repairs
     ├── RunFailedError         ``RunResult.raise_for_status()`` on a run that did not succeed
     ├── StoreError             the run store could not be read or written; a resume was refused
     ├── TemplateError          rendering a Jinja template or expression failed
     │    ├── TemplateSecurityError   the sandbox refused an operation
     │    └── TemplateLimitError      output size or work exceeded its cap
     └── TaskError              a task failed; carries task_id and attempt
          ├── ModelError             a model call failed; ``kind`` classifies it
          │    └── InvalidOutputError     the output did not match ``output.schema``
          ├── BudgetExceededError    the next call would pass ``limits.max_cost_usd``
          ├── RunLimitError          the run passed ``limits.max_tasks`` or ``limits.max_depth``
          └── FunctionError          a ``call:`` function raised

``ModelError.kind`` is one of ERROR_KINDS; ``transient`` kinds are retried,
``persistent`` ones go to the next model of the fallback chain.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

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


class PlanningError(OrchestrionError):
    """The master planner gave no valid workflow; ``attempts`` holds each attempt's problems."""

    def __init__(self, attempts: Sequence[Sequence[str]]) -> None:
        self.attempts = [list(problems) for problems in attempts]
        last = self.attempts[-1] if self.attempts else ["no answer"]
        super().__init__(f"no valid workflow after {len(self.attempts)} attempt(s); last problems: "
                         + "; ".join(last[:5]))


class RunFailedError(OrchestrionError):
    """Raised by ``RunResult.raise_for_status()`` for a run that did not succeed."""


class StoreError(OrchestrionError):
    """The run store could not be read or written (down, full, locked too long), or a run cannot
    be resumed (unknown, finished, or its workflow file changed)."""


class TemplateError(OrchestrionError):
    """Rendering a template or evaluating an expression failed."""


class TemplateSecurityError(TemplateError):
    """The sandbox refused an operation (private attribute, unsafe call...)."""


class TemplateLimitError(TemplateError):
    """A template exceeded its output size or work budget."""


class ConfigError(OrchestrionError):
    """The engine's configuration is invalid or incomplete (names what and where)."""


class InputError(OrchestrionError):
    """The inputs given to a run do not match the workflow's declared inputs."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = tuple(problems)
        super().__init__("invalid inputs:\n" + "\n".join(f"  {problem}" for problem in self.problems))


ErrorKind = Literal[
    "rate_limit", "server_error", "timeout", "connection",  # transient: retried
    "auth", "bad_request", "not_found",  # persistent: next model of the chain
    "context_length",  # resource: a model with a larger context
    "breaker_open",  # the endpoint's circuit breaker is open: the next model, at once
    "invalid_output",  # logical: repaired with the error fed back
    "budget", "limit", "denied", "function", "cancelled", "unknown",
]
TRANSIENT_KINDS: frozenset[str] = frozenset({"rate_limit", "server_error", "timeout", "connection"})


class TaskError(OrchestrionError):
    """A task failed. ``task_id`` and ``attempt`` say which and when."""

    kind: ErrorKind = "unknown"

    def __init__(self, message: str, *, task_id: str | None = None, attempt: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.task_id = task_id
        self.attempt = attempt

    def __str__(self) -> str:
        where = f"task {self.task_id!r}" if self.task_id else ""
        if where and self.attempt:
            where += f" (attempt {self.attempt})"
        return f"{where}: {self.message}" if where else self.message


class ModelError(TaskError):
    """A model call failed; ``kind`` classifies the failure for retries and fallbacks."""

    def __init__(
        self, kind: ErrorKind, message: str, *, model: str | None = None, retry_after: float | None = None,
        task_id: str | None = None, attempt: int | None = None,
    ) -> None:
        super().__init__(message, task_id=task_id, attempt=attempt)
        self.kind = kind
        self.model = model
        self.retry_after = retry_after

    @property
    def transient(self) -> bool:
        return self.kind in TRANSIENT_KINDS


class InvalidOutputError(ModelError):
    """The model's output is not JSON, or does not match the task's ``output.schema``."""

    def __init__(self, message: str, *, output: str, model: str | None = None) -> None:
        super().__init__("invalid_output", message, model=model)
        self.output = output


class BudgetExceededError(TaskError):
    """Running the next call would pass the run's ``limits.max_cost_usd``."""

    kind: ErrorKind = "budget"


class RunLimitError(TaskError):
    """The run, nested runs included, started more tasks than ``limits.max_tasks`` or nested
    workflows deeper than ``limits.max_depth``. Always fatal, even to a ``critical: false`` task:
    it stops a runaway (a workflow that runs itself), so nothing of the run may go on."""

    kind: ErrorKind = "limit"


class FunctionError(TaskError):
    """A registered function called by a ``call:`` task raised."""

    kind: ErrorKind = "function"
