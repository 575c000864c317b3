"""One error shape for every 4xx and 5xx the adapter answers, and the handlers that give it.

    {"error": {"status": 422, "type": "invalid_workflow", "message": "...", "problems": [...]}}

A workflow's problems carry the same path, file, line, column, message and hint
as ``orchestrion validate``. Every message is scrubbed of the engine's secrets;
an unexpected exception answers 500 with no detail (it is logged instead).
"""

from __future__ import annotations

from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from engine.errors import (
    CatalogError,
    ConfigError,
    InputError,
    OrchestrionError,
    PlanningError,
    Problem,
    StoreError,
    WorkflowError,
    format_path,
)
from engine.secrets import Scrubber

ERROR_SCHEMA: dict[str, Any] = {  # what every error body validates against (tests check it)
    "type": "object", "required": ["error"], "additionalProperties": False,
    "properties": {"error": {
        "type": "object", "required": ["status", "type", "message"],
        "properties": {
            "status": {"type": "integer", "minimum": 400, "maximum": 599},
            "type": {"type": "string"}, "message": {"type": "string"},
            "problems": {"type": "array", "items": {"type": "object", "required": ["message"]}},
        },
    }},
}


class ApiError(Exception):
    """An answer other than success, raised from a route."""

    def __init__(self, status: int, kind: str, message: str, *, headers: dict[str, str] | None = None,
                 **details: Any) -> None:
        super().__init__(message)
        self.status, self.kind, self.message, self.headers, self.details = status, kind, message, headers, details


def error_body(status: int, kind: str, message: str, **details: Any) -> dict[str, Any]:
    return {"error": {"status": status, "type": kind, "message": message,
                      **{key: value for key, value in details.items() if value is not None}}}


def problem_dict(problem: Problem) -> dict[str, Any]:
    """A workflow problem as ``orchestrion validate --format json`` gives it."""
    location = problem.location
    return {"code": problem.code, "message": problem.message, "path": format_path(problem.path),
            "file": location.file if location else None, "line": location.line if location else None,
            "column": location.column if location else None, "hint": problem.hint}


def install_error_handlers(app: FastAPI, scrub: Scrubber) -> None:
    def answer(status: int, kind: str, message: str, headers: dict[str, str] | None = None,
               **details: Any) -> JSONResponse:
        body = scrub.value(error_body(status, kind, scrub.text(message), **details))
        return JSONResponse(body, status_code=status, headers=headers)

    async def api_error(_: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, ApiError)
        return answer(error.status, error.kind, error.message, error.headers, **error.details)

    async def workflow_error(_: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, WorkflowError)
        return answer(422, "invalid_workflow", str(error).splitlines()[0],
                      problems=[problem_dict(problem) for problem in error.problems])

    async def engine_error(_: Request, error: Exception) -> JSONResponse:
        status, kind = _status_of(error)
        return answer(status, kind, str(error))

    async def request_error(_: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, RequestValidationError)
        problems = [{"message": item.get("msg", "invalid"), "path": ".".join(str(part) for part in item.get("loc", ())),
                     "type": item.get("type")} for item in error.errors()]
        return answer(422, "invalid_request", "the request is invalid: " + "; ".join(
            f"{p['path']}: {p['message']}" for p in problems[:5]), problems=problems)

    async def http_error(_: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, HTTPException)
        kind = {404: "not_found", 405: "method_not_allowed"}.get(error.status_code, "http_error")
        return answer(error.status_code, kind, str(error.detail), dict(error.headers or {}) or None)

    async def unexpected(_: Request, error: Exception) -> JSONResponse:
        structlog.get_logger("orchestrion.server").error("unexpected error", error_type=type(error).__name__,
                                                        error=scrub.text(str(error)))
        return answer(500, "internal_error", "the server failed to answer this request (the error is logged)")

    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(WorkflowError, workflow_error)
    app.add_exception_handler(OrchestrionError, engine_error)
    app.add_exception_handler(RequestValidationError, request_error)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(Exception, unexpected)


def _status_of(error: Exception) -> tuple[int, str]:
    if isinstance(error, InputError):
        return 422, "invalid_inputs"
    if isinstance(error, PlanningError):
        return 422, "planning_failed"
    if isinstance(error, StoreError):
        return 409, "store"
    if isinstance(error, CatalogError | ConfigError):
        return 500, "configuration"
    return 500, "engine_error"
