"""`orchestrion run` and the engine configuration file with the fake provider."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from engine import ConfigError, Engine
from engine.cli import main
from engine.config import load_config
from tests.conftest import ROOT
from tests.support.terminal import run_in_terminal

EXAMPLES = {
    "templates/research_report.yaml": ["-i", "topic=solar"],
    "examples/critique_loop.yaml": ["-i", "brief=a haiku"],
    "examples/fan_out.yaml": ["-i", "subject=tea"],
    "examples/seed_article.json": [],
}


@pytest.mark.parametrize("path", sorted(EXAMPLES))
def test_every_example_runs_end_to_end_on_the_fake_model(path: str, capsys) -> None:
    assert main(["run", str(ROOT / path), "--dry-run", "--json", *EXAMPLES[path]]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["status"] == "succeeded" and result["outputs"]


def test_run_prints_outputs_and_plain_progress(capsys) -> None:
    assert main(["run", str(ROOT / "examples/seed_article.json"), "--dry-run", "-i", "topic=wind"]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("research: [thinking_ai] Research wind\narticle: [thinking_ai] Write an article")
    progress = captured.err.splitlines()
    assert any("started  research (thinking_ai)" in line for line in progress)
    assert "run succeeded" in progress[-1]
    words = {line.split()[1] for line in progress}  # a line per task event; none for a model call or a token
    assert words == {"started", "finished", "run"}, progress


def test_inputs_are_typed_by_the_declared_schema(tmp_path, capsys) -> None:
    flow = tmp_path / "flow.yaml"
    flow.write_text("dsl: orchestrion/v1\nname: f\ninputs:\n  n: {type: integer}\n  s: {type: string}\n"
                    "stages:\n  - type: inline\n    tasks:\n"
                    "      - {id: a, model: fast_ai, prompt: '{{ n + 1 }} {{ s }}'}\n")
    assert main(["run", str(flow), "--dry-run", "-q", "-i", "n=41", "-i", "s=007"]) == 0
    assert capsys.readouterr().out == "a: [fast_ai] 42 007\n"


def test_inputs_file_and_bad_inputs(tmp_path, capsys) -> None:
    inputs = tmp_path / "inputs.yaml"
    inputs.write_text("topic: hydrogen\n")
    assert main(["run", str(ROOT / "templates/research_report.yaml"), "--dry-run", "-q",
                 "--inputs-file", str(inputs)]) == 0
    assert main(["run", str(ROOT / "templates/research_report.yaml"), "--dry-run", "-q"]) == 1
    assert "missing input 'topic': Subject of the report" in capsys.readouterr().err


def test_a_failed_run_exits_1_with_the_error(tmp_path, capsys) -> None:
    config = tmp_path / "orchestrion.yaml"
    config.write_text("providers:\n  dry: {kind: fake, echo: false}\ndefault_provider: dry\n")
    assert main(["run", str(ROOT / "examples/seed_article.json"), "--config", str(config)]) == 1
    assert "run failed: task 'research'" in capsys.readouterr().err


def test_config_file_scripts_answers_and_prices(tmp_path, capsys) -> None:
    config = tmp_path / "orchestrion.yaml"
    config.write_text("providers:\n  dry:\n    kind: fake\n    answers: {thinking_ai: [R, A]}\n"
                      "models:\n  thinking_ai: {provider: dry, input_price: 1000000, output_price: 0}\n")
    assert main(["run", str(ROOT / "examples/seed_article.json"), "--config", str(config), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["outputs"] == {"research": "R", "article": "A"}
    assert result["totals"]["cost_usd"] == result["totals"]["input_tokens"] > 0


def test_config_errors_name_the_place(tmp_path) -> None:
    config = tmp_path / "orchestrion.yaml"
    config.write_text("providers:\n  dry: {kind: fake}\nmodels:\n  fast_ai: {provider: wet}\n")
    with pytest.raises(ConfigError, match=r"models\.fast_ai\.provider: unknown provider 'wet'"):
        load_config(config)
    config.write_text("providers:\n  dry: {kind: fake, latency: soon}\n")
    with pytest.raises(ConfigError, match=r"orchestrion.yaml:2:\d+: providers.dry.latency"):
        Engine.from_file(config)


def test_without_the_local_extra_the_error_names_the_install_command(monkeypatch, capsys) -> None:
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # as if llama-cpp-python were not installed
    assert main(["run", str(ROOT / "examples/seed_article.json")]) == 1
    assert "pip install 'orchestrion[local]'" in capsys.readouterr().err


def test_live_progress_on_a_terminal() -> None:
    printed = run_in_terminal(["run", f"{ROOT}/examples/seed_article.json", "--dry-run"])
    assert "\x1b[1A\x1b[2K" in printed  # the view redraws in place
    assert "2 done, 0 running, 0 failed, 0 skipped" in printed
    assert "✓ research" in printed


def test_run_help_is_cheap_to_start() -> None:
    code = ("import contextlib, io, sys\nfrom engine.cli import main\n"
            "with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()): main(['--help'])\n"
            "print([m for m in ('pydantic', 'anyio', 'jinja2', 'engine.core') if m in sys.modules])")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=Path(ROOT))
    assert result.stdout.strip() == "[]"


ADDON = "name: tone\ndescription: A kind tone\ncategory: style\nprompt: Be kind.\n"
USES_TONE = ("dsl: orchestrion/v1\nname: f\nstages:\n  - type: inline\n    tasks:\n"
             "      - {id: a, model: fast_ai, prompt: hi, addons: [tone]}\n")


def test_dry_run_sees_the_addons_folder_of_the_current_directory(tmp_path, monkeypatch, capsys) -> None:
    (tmp_path / "addons").mkdir()
    (tmp_path / "addons" / "tone.yaml").write_text(ADDON)
    (tmp_path / "flow.yaml").write_text(USES_TONE)
    monkeypatch.chdir(tmp_path)
    assert main(["validate", "flow.yaml"]) == 0
    assert main(["run", "flow.yaml", "--dry-run", "-q"]) == 0
    assert capsys.readouterr().out.startswith("a: [fast_ai]")


def test_run_honours_addons_and_templates_folders(tmp_path, capsys) -> None:
    addons, templates = tmp_path / "more_addons", tmp_path / "more_templates"
    addons.mkdir()
    templates.mkdir()
    (addons / "tone.yaml").write_text(ADDON)
    (templates / "greet.yaml").write_text(USES_TONE.replace("name: f", "name: greet"))
    flow = tmp_path / "flow.yaml"
    flow.write_text("dsl: orchestrion/v1\nname: outer\nstages:\n  - type: inline\n    tasks:\n"
                    "      - {id: g, workflow: greet}\n")
    assert main(["run", str(flow), "--dry-run", "-q"]) == 1
    assert "workflow: unknown template 'greet'" in capsys.readouterr().err
    assert main(["run", str(flow), "--dry-run", "-q", "--templates", str(templates), "--addons", str(addons)]) == 0


def test_dry_run_knows_the_aliases_of_the_configuration_and_needs_no_key(tmp_path, capsys) -> None:
    config = tmp_path / "orchestrion.yaml"
    config.write_text("providers:\n  router: {kind: openai, api_key: '${ORCHESTRION_TEST_UNSET_KEY}'}\n"
                      "models:\n  my_model: {provider: router, model: openai/gpt-4o-mini, input_price: 1000000}\n")
    flow = tmp_path / "flow.yaml"
    flow.write_text(USES_TONE.replace("fast_ai", "my_model").replace(", addons: [tone]", ""))
    assert main(["run", str(flow), "--config", str(config)]) == 2  # a real run needs the key
    assert "ORCHESTRION_TEST_UNSET_KEY is not set" in capsys.readouterr().err
    assert main(["run", str(flow), "--config", str(config), "--dry-run", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["outputs"] == {"a": "[my_model] hi"}
    assert result["totals"]["cost_usd"] > 0  # the configured prices hold in a dry run


def test_plan_honours_the_addons_folders(tmp_path, capsys) -> None:
    answer = {"name": "planned", "description": "A kind poem", "stages": [
        {"type": "inline", "tasks": [{"model": "fast_ai", "prompt": "Do {{ request }}", "addons": ["tone"]}]}]}
    config = tmp_path / "orchestrion.yaml"
    config.write_text("providers:\n  dry: {kind: fake, answers: {thinking_ai: " + json.dumps(json.dumps(answer)) +
                      "}}\ndefault_provider: dry\n")
    addons = tmp_path / "more_addons"
    addons.mkdir()
    (addons / "tone.yaml").write_text(ADDON)
    flow = tmp_path / "flow.yaml"
    assert main(["plan", "Write a poem", "-o", str(flow), "--config", str(config)]) == 1
    assert main(["plan", "Write a poem", "-o", str(flow), "--config", str(config), "--addons", str(addons)]) == 0
    assert "attempt 1: valid" in capsys.readouterr().err


@pytest.mark.timeout(60)
@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_run_stopped_by_a_signal_says_what_it_did_and_exits_130(tmp_path: Path, stop: signal.Signals) -> None:
    (tmp_path / "orchestrion.yaml").write_text("providers: {slow: {kind: fake, latency: 30}}\ndefault_provider: slow\n")
    (tmp_path / "flow.yaml").write_text("dsl: orchestrion/v1\nname: slow\ndefaults: {model: fast_ai}\nstages:\n"
                                        "  - type: inline\n    tasks:\n      - {id: a, prompt: one}\n")
    process = subprocess.Popen([sys.executable, "-m", "engine", "run", "flow.yaml"], cwd=tmp_path,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert process.stderr is not None
    assert "started  a" in process.stderr.readline()  # the run is under way, and listening
    process.send_signal(stop)
    _, errors = process.communicate(timeout=30)
    assert process.returncode == 130
    assert f"run cancelled by {stop.name}: 0 task(s) done, 1 stopped while running" in errors
    assert "Traceback" not in errors


def test_a_workflow_given_as_configuration_is_named_as_such(tmp_path: Path) -> None:
    flow = tmp_path / "flow.yaml"
    flow.write_text("dsl: orchestrion/v1\nname: x\nstages: []\n")
    with pytest.raises(ConfigError, match="looks like a workflow, not an engine configuration"):
        load_config(flow)


def test_an_input_without_a_name_is_refused_as_such(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", str(ROOT / "examples" / "hello_local.yaml"), "--dry-run", "-q", "-i", "=x"]) == 1
    assert "write NAME=VALUE" in capsys.readouterr().err
