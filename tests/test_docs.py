"""Docs that are executed: the README's Python and commands, every example and template."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shlex
import shutil
from pathlib import Path

import pytest

from engine import compile_workflow, load_workflow, to_dot, to_mermaid
from engine.cli import main
from tests.conftest import ROOT
from tests.support.catalogs import able_catalog

README = (ROOT / "README.md").read_text()
WORKFLOWS = sorted([*ROOT.glob("examples/*"), *ROOT.glob("templates/*")])


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


def test_readme_python_runs_and_prints_what_it_says(monkeypatch) -> None:
    monkeypatch.chdir(ROOT)
    (code,) = blocks("python")
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        exec(compile(code, "README.md", "exec"), {})
    expected = [line.split("# ", 1)[1].strip() for line in code.splitlines() if line.startswith("print(")]
    assert output.getvalue().splitlines() == expected


@pytest.mark.timeout(180)  # its `orchestrion run` generates with the real local model (5-20 s)
def test_readme_first_command_validates_and_graphs(monkeypatch, capsys) -> None:
    monkeypatch.chdir(ROOT)
    first = blocks("sh")[0]
    steps = [shlex.split(step) for step in first.strip().split(" && ") if not step.startswith("export ")]
    orchestrion = [step[1:] for step in steps if step[0].endswith("orchestrion")]
    assert [step[0] for step in orchestrion] == ["validate", "graph", "run"]
    for arguments in orchestrion:
        expanded = [str(path) for arg in arguments for path in (sorted(Path().glob(arg)) if "*" in arg else [arg])]
        assert main(expanded) == 0
    assert "flowchart TD" in capsys.readouterr().out


def test_readme_test_command_is_what_ci_runs() -> None:
    assert blocks("sh")[1].strip() == "bash .ci/run"
    first = blocks("sh")[0]
    cmake_args = first.split('"')[1]
    assert f'CMAKE_ARGS="{cmake_args}"' in (ROOT / ".ci" / "run").read_text()  # both build llama.cpp alike


def test_readme_configuration_block_loads(tmp_path, monkeypatch) -> None:
    from engine import Engine

    (config,) = [block for block in blocks("yaml")
                 if "providers:" in block and "rate_limits:" not in block and "generates:" not in block]
    path = tmp_path / "orchestrion.yaml"
    path.write_text(config)
    monkeypatch.setenv("OPENROUTER_API_KEY", "sk-or-test")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test")
    engine = Engine.from_file(path)
    result = engine.run_sync(ROOT / "examples" / "seed_article.json")
    assert result.outputs["research"] == "a scripted answer"
    assert result.totals.cost_usd > 0


def test_readme_shared_state_block_is_a_configuration_that_crosses_to_workers(tmp_path, monkeypatch) -> None:
    from engine import Engine
    from engine.recipe import EngineRecipe

    (config,) = [block for block in blocks("yaml") if "rate_limits:" in block]
    path = tmp_path / "orchestrion.yaml"
    path.write_text(config)
    monkeypatch.setenv("OPENROUTER_API_KEY", "sk-or-test")
    monkeypatch.setenv("REDIS_PASSWORD", "hunter2")
    engine = Engine.from_file(path)  # nothing is connected until a call
    assert engine.config.budget.key == "batch-2026-11" and engine.config.rate_limits.storage
    EngineRecipe.of(engine)  # the cap is shared: it may cross to the workers


def test_readme_media_configuration_gives_the_templates_their_models(tmp_path, monkeypatch) -> None:
    from engine import Engine

    (config,) = [block for block in blocks("yaml") if "generates:" in block and "providers:" in block]
    path = tmp_path / "orchestrion.yaml"
    path.write_text(config)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.setenv("GEMINI_API_KEY", "g-test")
    engine = Engine.from_file(path)
    for name in ("image_analysis", "campaign_media", "marketing_campaign", "chat"):
        engine.compile(engine.catalog.load_workflow(name))  # every alias can do what the template asks
    (workflow,) = [block for block in blocks("yaml") if "name: label_check" in block]
    (tmp_path / "label_check.yaml").write_text(workflow)
    engine.compile(load_workflow(tmp_path / "label_check.yaml"))


def test_readme_workflow_block_validates(tmp_path) -> None:
    (yaml_block,) = [block for block in blocks("yaml") if "dsl: orchestrion/v1" in block and "label_check" not in block]
    path = tmp_path / "readme.yaml"
    path.write_text(yaml_block)
    plan = compile_workflow(load_workflow(path), able_catalog())
    assert sorted(plan.nodes["summary"].depends_on) == ["companies", "research"]


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_every_example_and_template_compiles_and_graphs(path: Path) -> None:
    plan = compile_workflow(load_workflow(path), able_catalog())
    assert plan.nodes and plan.critical_path
    assert to_mermaid(plan).count("-->") == len(plan.edges)
    assert to_dot(plan).count("->") == len(plan.edges)


def test_examples_run_from_any_directory(tmp_path) -> None:
    old = Path.cwd()
    os.chdir(tmp_path)
    try:
        assert main(["validate", *(str(path) for path in WORKFLOWS)]) == 0
    finally:
        os.chdir(old)


def test_readme_ci_jobs_use_commands_that_exist(tmp_path, monkeypatch, capsys) -> None:
    """Every `orchestrion` command of the CI examples runs, on a folder holding the shipped examples."""
    from ruamel.yaml import YAML

    jobs = [YAML(typ="safe").load(block) for block in blocks("yaml") if "orchestrion validate ." in block]
    assert len(jobs) == 2  # GitHub Actions and GitLab CI
    lines = [line for block in blocks("yaml") if "orchestrion validate ." in block
             for line in re.findall(r"(?:run:|- ) *(orchestrion [^\n]*)", block)]
    assert {line.split()[1] for line in lines} == {"validate", "fmt"}
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    monkeypatch.chdir(tmp_path)
    for line in lines:
        words = shlex.split(line.split(">")[0])
        assert main(words[1:]) == 0, line
    capsys.readouterr()


def test_readme_json_blocks_parse() -> None:
    documents = [json.loads(block) for block in blocks("json")]
    assert any("fileMatch" in document for document in documents)
