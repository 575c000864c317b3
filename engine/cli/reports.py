"""How ``orchestrion validate`` reports what it found: for people, for GitHub Actions, for tools.

    text    ``file:line:col: path: message`` and an indented hint (the default)
    github  workflow commands, ``::error file=…,line=…,col=…::message``, which GitHub Actions
            shows as annotations on the pull request's diff
    json    ``{"files": [{"file", "status", "problems": [...]}], "summary": {...}}``
    sarif   SARIF 2.1.0, for code-scanning tools (GitHub's ``upload-sarif``, GitLab)
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TextIO

from engine.errors import Problem, format_path

FORMATS = ("text", "github", "json", "sarif")
Status = Literal["ok", "invalid", "skipped"]
SARIF_SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"


@dataclass(frozen=True)
class FileReport:
    """What validate found in one file."""

    file: str
    status: Status
    problems: Sequence[Problem] = ()
    detail: str = ""  # ok: the plan's size; skipped: why it is not taken for a workflow


@dataclass
class Reports:
    files: list[FileReport] = field(default_factory=list)

    def count(self, status: Status) -> int:
        return sum(report.status == status for report in self.files)


def write_report(reports: Reports, form: str, out: TextIO, *, verbose: bool) -> None:
    {"text": _text, "github": _github, "json": _json, "sarif": _sarif}[form](reports, out, verbose)


def _text(reports: Reports, out: TextIO, verbose: bool) -> None:
    for report in reports.files:
        for problem in report.problems:
            print(problem, file=out)
        if verbose and report.status != "invalid":
            print(f"{report.file}: {report.status} ({report.detail})", file=out)
    invalid, checked = reports.count("invalid"), reports.count("invalid") + reports.count("ok")
    if invalid and checked > 1:
        print(f"{invalid} of {checked} workflows have problems", file=out)
    skipped = reports.count("skipped")
    if verbose and skipped:
        print(f"{skipped} file(s) skipped: not workflows", file=out)


def _github(reports: Reports, out: TextIO, verbose: bool) -> None:
    for report in reports.files:
        for problem in report.problems:
            location = problem.location
            properties = {"file": location.file if location else report.file, "title": f"orchestrion {problem.code}"}
            if location is not None and location.line is not None:
                properties |= {"line": str(location.line), "col": str(location.column or 1)}
            fields = ",".join(f"{key}={_escape_property(value)}" for key, value in properties.items())
            print(f"::error {fields}::{_escape_data(_message(problem))}", file=out)
        if verbose and report.status == "skipped":
            print(f"::debug::{_escape_data(f'{report.file}: skipped ({report.detail})')}", file=out)
    invalid, checked = reports.count("invalid"), reports.count("invalid") + reports.count("ok")
    print(f"::notice title=orchestrion validate::{invalid} of {checked} workflows have problems"
          if invalid else f"::notice title=orchestrion validate::{checked} workflows are valid", file=out)


def _message(problem: Problem) -> str:
    where = format_path(problem.path)
    text = f"{where}: {problem.message}" if where else problem.message
    return f"{text}\nhint: {problem.hint}" if problem.hint else text


def _escape_data(text: str) -> str:
    # GitHub's workflow-command encoding (actions/toolkit, command.ts).
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _escape_property(text: str) -> str:
    return _escape_data(text).replace(":", "%3A").replace(",", "%2C")


def _problem_json(problem: Problem, file: str) -> dict[str, Any]:
    location = problem.location
    return {
        "file": location.file if location else file,
        "line": location.line if location else None,
        "column": location.column if location else None,
        "path": format_path(problem.path),
        "code": problem.code,
        "message": problem.message,
        "hint": problem.hint,
    }


def _json(reports: Reports, out: TextIO, verbose: bool) -> None:
    files = [{"file": report.file, "status": report.status, "detail": report.detail,
              "problems": [_problem_json(problem, report.file) for problem in report.problems]}
             for report in reports.files if verbose or report.status != "skipped"]
    summary = {status: reports.count(status) for status in ("ok", "invalid", "skipped")}
    json.dump({"files": files, "summary": summary}, out, indent=2, ensure_ascii=False)
    out.write("\n")


def _sarif(reports: Reports, out: TextIO, verbose: bool) -> None:
    results: list[dict[str, Any]] = []
    for report in reports.files:
        for problem in report.problems:
            found = _problem_json(problem, report.file)
            region = {"startLine": found["line"], "startColumn": found["column"] or 1} if found["line"] else None
            physical: dict[str, Any] = {"artifactLocation": {"uri": found["file"]}}
            if region is not None:
                physical["region"] = region
            results.append({"ruleId": problem.code, "level": "error", "message": {"text": _message(problem)},
                            "locations": [{"physicalLocation": physical}]})
    rules = [{"id": code} for code in sorted({result["ruleId"] for result in results})]
    document = {"$schema": SARIF_SCHEMA, "version": "2.1.0", "runs": [{
        "tool": {"driver": {"name": "orchestrion", "rules": rules}},
        "results": results,
    }]}
    json.dump(document, out, indent=2, ensure_ascii=False)
    out.write("\n")
