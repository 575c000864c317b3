"""Workflow files in a real repository: the pre-commit hook, CI reports, the schema link, fmt.

A repository holds compose files, CI pipelines and package.json beside its
workflows; the hook and ``validate PATH`` report only the broken workflow.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from engine.cli import main
from engine.schema import installed_schema
from tests.conftest import ROOT

BROKEN = """\
dsl: orchestrion/v1
name: broken
stages:
  - type: linear
    tasks:
      - {id: a, model: fast_ai, prompt: "{{ missing }}"}
"""
BROKEN_AT = (6, 41)  # where `prompt` is
OTHER_FILES = {
    "compose.yaml": "services:\n  web: {image: nginx, ports: ['8080:80']}\n",
    ".github/workflows/ci.yml": "name: ci\non: push\njobs:\n  test: {runs-on: ubuntu-latest, steps: [{run: make}]}\n",
    "package.json": '{"name": "site", "version": "1.0.0", "scripts": {"build": "vite build"}}\n',
    "docs/config.json": '{"workflow": "not a list: not the seed format"}\n',
}


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    """A git repository with other YAML and JSON, two valid workflows and one broken one."""
    for name, text in OTHER_FILES.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    (tmp_path / "flows").mkdir()
    shutil.copy(ROOT / "examples" / "fan_out.yaml", tmp_path / "flows" / "fan_out.yaml")
    shutil.copy(ROOT / "examples" / "seed_article.json", tmp_path / "flows" / "seed.json")
    (tmp_path / "flows" / "broken.yaml").write_text(BROKEN)
    return tmp_path


def git(repository: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=repository, check=True, capture_output=True,
                   env={**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
                        "GIT_COMMITTER_EMAIL": "t@t"})


@pytest.mark.timeout(120)
def test_the_shipped_hook_run_by_pre_commit_fails_only_on_the_broken_workflow(repository: Path) -> None:
    """The hook's own definition (.pre-commit-hooks.yaml), run by pre-commit over every file.

    pre-commit would install the package from this repository into an environment of its own, which
    needs the package index; the hook runs here with this environment's orchestrion instead
    (``language: system``), with the shipped entry, file pattern and types.
    """
    (hook,) = YAML(typ="safe").load((ROOT / ".pre-commit-hooks.yaml").read_text())
    entry = hook["entry"].replace("orchestrion", f"{sys.executable} -m engine", 1)
    local = {**hook, "entry": entry, "language": "system"}
    (repository / ".pre-commit-config.yaml").write_text(json.dumps({"repos": [{"repo": "local", "hooks": [local]}]}))
    git(repository, "init", "-q")
    git(repository, "add", ".")
    env = {**os.environ, "PRE_COMMIT_HOME": str(repository.parent / "pre-commit-home"), "NO_COLOR": "1"}
    run = subprocess.run([sys.executable, "-m", "pre_commit", "run", "--all-files"], cwd=repository,
                         capture_output=True, text=True, env=env, check=False)
    assert run.returncode == 1, run.stdout + run.stderr
    problems = [line for line in run.stdout.splitlines() if re.match(r"\S+:\d+:\d+: ", line)]
    assert problems == [f"flows/broken.yaml:{BROKEN_AT[0]}:{BROKEN_AT[1]}: stages[0].tasks[0].prompt: "
                        "unknown name 'missing': no input or task of the workflow has it"]
    assert "compose" not in run.stdout and "package.json" not in run.stdout


def test_a_folder_is_searched_for_workflows_and_the_rest_is_skipped(repository: Path, capsys) -> None:
    assert main(["validate", str(repository), "-v"]) == 1
    out = capsys.readouterr().out
    assert f"{repository}/flows/broken.yaml:{BROKEN_AT[0]}:{BROKEN_AT[1]}: " in out
    assert f"{repository}/flows/fan_out.yaml: ok" in out and f"{repository}/flows/seed.json: ok" in out
    assert f"{repository}/compose.yaml: skipped" in out and f"{repository}/package.json: skipped" in out
    assert ".github" not in out  # hidden folders are not searched
    assert "1 of 3 workflows have problems" in out and "3 file(s) skipped: not workflows" in out
    (repository / "flows" / "broken.yaml").unlink()
    assert main(["validate", str(repository)]) == 0


def test_a_file_named_must_be_a_workflow_unless_only_workflows(repository: Path, capsys) -> None:
    compose = str(repository / "compose.yaml")
    assert main(["validate", compose]) == 1
    out = capsys.readouterr().out
    assert out.startswith(f"{compose}:1:1: not a workflow: no `dsl:` key")
    assert "services" not in out  # one clear problem, not one per key
    assert main(["validate", "--only-workflows", compose, str(repository / "package.json")]) == 0
    assert main(["validate", "--only-workflows", "--strict-files", compose]) == 1


def test_a_broken_file_that_names_orchestrion_is_still_checked(repository: Path, capsys) -> None:
    broken = repository / "flows" / "unparsable.yaml"
    broken.write_text("dsl: orchestrion/v1\nname: [unclosed\n")
    other = repository / "notes.yaml"
    other.write_text("a: [unclosed\n")
    assert main(["validate", "--only-workflows", str(broken), str(other)]) == 1
    out = capsys.readouterr().out
    assert str(broken) in out and str(other) not in out


def parse_github_commands(text: str) -> list[tuple[str, dict[str, str], str]]:
    """``::error file=a,line=1::message`` -> ("error", {"file": "a", "line": "1"}, "message"), decoded."""
    def decode(value: str) -> str:
        return value.replace("%0A", "\n").replace("%0D", "\r").replace("%3A", ":").replace("%2C", ",").replace(
            "%25", "%")

    commands = []
    for line in text.splitlines():
        match = re.fullmatch(r"::(\w+)(?: ([^:]*))?::(.*)", line)
        assert match is not None, f"not a workflow command: {line!r}"
        properties = dict(part.split("=", 1) for part in (match.group(2) or "").split(",") if part)
        commands.append((match.group(1), {key: decode(value) for key, value in properties.items()},
                         decode(match.group(3))))
    return commands


def test_github_annotations_point_at_the_line_and_read_back(repository: Path, capsys) -> None:
    broken = repository / "flows" / "broken,v2: draft.yaml"  # a comma and a colon, escaped in properties
    (repository / "flows" / "broken.yaml").rename(broken)
    assert main(["validate", str(repository), "--format", "github"]) == 1
    commands = parse_github_commands(capsys.readouterr().out)
    errors = [command for command in commands if command[0] == "error"]
    assert len(errors) == 1
    _, properties, message = errors[0]
    assert properties == {"file": str(broken), "title": "orchestrion unknown-name",
                          "line": str(BROKEN_AT[0]), "col": str(BROKEN_AT[1])}
    assert message == ("stages[0].tasks[0].prompt: unknown name 'missing': no input or task of the workflow has it"
                       "\nhint: declare it under `inputs:` or add a task with that id")
    assert commands[-1] == ("notice", {"title": "orchestrion validate"}, "1 of 3 workflows have problems")


def test_json_and_sarif_reports(repository: Path, capsys) -> None:
    assert main(["validate", str(repository), "--format", "json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["summary"] == {"ok": 2, "invalid": 1, "skipped": 3}
    (invalid,) = [entry for entry in report["files"] if entry["status"] == "invalid"]
    assert invalid["problems"][0] | {"hint": None} == {
        "file": str(repository / "flows" / "broken.yaml"), "line": BROKEN_AT[0], "column": BROKEN_AT[1],
        "path": "stages[0].tasks[0].prompt", "code": "unknown-name", "hint": None,
        "message": "unknown name 'missing': no input or task of the workflow has it"}
    assert all(entry["status"] != "skipped" for entry in report["files"])  # listed with -v only

    assert main(["validate", str(repository), "--format", "sarif"]) == 1
    sarif = json.loads(capsys.readouterr().out)
    assert sarif["version"] == "2.1.0" and sarif["runs"][0]["tool"]["driver"]["rules"] == [{"id": "unknown-name"}]
    (result,) = sarif["runs"][0]["results"]
    assert result["locations"][0]["physicalLocation"]["region"] == {"startLine": BROKEN_AT[0],
                                                                    "startColumn": BROKEN_AT[1]}


def test_schema_path_is_the_installed_schema(capsys) -> None:
    assert main(["schema", "--path"]) == 0
    path = Path(capsys.readouterr().out.strip())
    assert path == installed_schema() and path.is_file()
    assert main(["schema"]) == 0
    assert json.loads(path.read_text()) == json.loads(capsys.readouterr().out)


def test_a_planned_file_links_to_the_schema_from_wherever_it_is_written(tmp_path: Path, capsys) -> None:
    from tests.test_planner import GOOD

    config = tmp_path / "orchestrion.yaml"
    config.write_text("providers:\n  dry: {kind: fake, answers: {thinking_ai: [" + json.dumps(json.dumps(GOOD)) +
                      "]}}\ndefault_provider: dry\n")
    output = tmp_path / "some" / "dir" / "flow.yaml"
    output.parent.mkdir(parents=True)
    assert main(["plan", "a campaign", "-o", str(output), "--config", str(config)]) == 0
    first = output.read_text().splitlines()[0]
    link = first.removeprefix("# yaml-language-server: $schema=")
    assert link != first and not Path(link).is_absolute()
    assert (output.parent / link).resolve() == installed_schema()
    assert main(["fmt", "--check", str(output)]) == 0  # written in the canonical form
    assert main(["plan", "a campaign", "--config", str(config)]) == 0  # to stdout: an absolute link
    printed = capsys.readouterr().out.splitlines()[0].removeprefix("# yaml-language-server: $schema=")
    assert Path(printed) == installed_schema()


def test_fmt_rewrites_and_check_reports(tmp_path: Path, capsys) -> None:
    messy = tmp_path / "messy.yaml"
    messy.write_text("name: m  # the name\ndsl: orchestrion/v1\nstages:\n- type: linear\n  tasks:\n"
                     "  - {prompt: hi, id: a, model: fast_ai}\n")
    assert main(["fmt", "--check", str(tmp_path)]) == 1
    assert capsys.readouterr().out == f"{messy}: would be reformatted\n"
    assert main(["fmt", str(messy)]) == 0
    assert messy.read_text() == ("dsl: orchestrion/v1\nname: m  # the name\nstages:\n  - type: linear\n    tasks:\n"
                                 "      - {id: a, model: fast_ai, prompt: hi}\n")
    assert main(["fmt", "--check", str(messy)]) == 0
    (tmp_path / "compose.yaml").write_text(OTHER_FILES["compose.yaml"])
    assert main(["fmt", "--check", str(tmp_path)]) == 0  # a folder's other files are left alone
    assert main(["fmt", str(tmp_path / "compose.yaml")]) == 1  # named: refused with the reason
    assert "no `dsl:` key" in capsys.readouterr().err
