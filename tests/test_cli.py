"""The orchestrion command: validate, graph, schema, addons."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from engine.cli import main
from tests.conftest import ROOT

GOOD = "dsl: orchestrion/v1\nname: good\nstages:\n  - type: inline\n    tasks:\n      - id: a\n" \
       "        model: fast_ai\n        prompt: hi\n"
BAD = "dsl: orchestrion/v1\nname: bad\nstages:\n  - type: inline\n    tasks:\n      - id: a\n" \
      "        model: fastai\n        prompt: '{{ b }}'\n"


def test_validate_is_quiet_on_success(write, capsys) -> None:
    assert main(["validate", str(write(GOOD))]) == 0
    assert capsys.readouterr().out == ""


def test_validate_verbose_reports_each_file(write, capsys) -> None:
    path = write(GOOD)
    assert main(["validate", "-v", str(path)]) == 0
    assert capsys.readouterr().out == f"{path}: ok (1 nodes, 0 edges)\n"


def test_validate_reports_all_problems_of_all_files(write, capsys) -> None:
    bad = write(BAD, "bad.yaml")
    broken = write("dsl: orchestrion/v1\nname: [\n", "broken.yaml")
    good = write(GOOD, "good.yaml")
    assert main(["validate", str(bad), str(broken), str(good)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"{bad}:7:16: stages[0].tasks[0].model: unknown model 'fastai'"
    assert out[2] == f"{bad}:8:17: stages[0].tasks[0].prompt: unknown name 'b': no input or task of the workflow has it"
    assert out[4].startswith(f"{broken}:3:1: ")
    assert out[-1] == "2 of 3 files have problems"


def test_catalog_options_extend_what_is_known(write, tmp_path, capsys) -> None:
    flow = write(GOOD.replace("fast_ai", "my_model").replace("prompt: hi", "prompt: hi\n        addons: [tone]"))
    assert main(["validate", str(flow)]) == 1
    addons = tmp_path / "extra"
    addons.mkdir()
    (addons / "tone.yaml").write_text("name: tone\ndescription: d\ncategory: c\nprompt: Be kind.\n")
    assert main(["validate", "--model", "my_model", "--addons", str(addons), str(flow)]) == 0


def test_a_broken_addon_file_is_a_clear_error(tmp_path, write, capsys) -> None:
    (tmp_path / "bad.yaml").write_text("name: other\ndescription: d\ncategory: c\nprompt: p\n")
    assert main(["validate", "--addons", str(tmp_path), str(write(GOOD, "flow.yml"))]) == 2
    assert "name the file after the addon" in capsys.readouterr().err


def test_graph_mermaid_and_dot(capsys) -> None:
    assert main(["graph", str(ROOT / "examples" / "seed_article.json")]) == 0
    mermaid = capsys.readouterr().out
    assert mermaid.startswith("flowchart TD\n") and "research --> article" in mermaid
    assert main(["graph", "--format", "dot", str(ROOT / "examples" / "seed_article.json")]) == 0
    assert '"research" -> "article";' in capsys.readouterr().out


def test_graph_of_a_broken_file_fails_with_problems(write, capsys) -> None:
    assert main(["graph", str(write(BAD))]) == 1
    assert "unknown model 'fastai'" in capsys.readouterr().err


def test_schema_prints_the_published_schema(capsys) -> None:
    assert main(["schema"]) == 0
    assert json.loads(capsys.readouterr().out) == json.loads((ROOT / "schemas" / "workflow.schema.json").read_text())


def test_addons_lists_the_builtin_addons(capsys) -> None:
    assert main(["addons"]) == 0
    assert any(line.split()[1] == "research" for line in capsys.readouterr().out.splitlines())


def test_usage_errors_exit_2() -> None:
    with pytest.raises(SystemExit) as caught:
        main(["validate"])
    assert caught.value.code == 2


def test_console_script_runs_as_a_process(write) -> None:
    result = subprocess.run([sys.executable, "-m", "engine", "validate", str(write(BAD))],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 1
    assert "Traceback" not in result.stdout + result.stderr
    assert "unknown model 'fastai'" in result.stdout
