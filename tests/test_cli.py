"""The orchestrion command: validate, graph, schema, addons."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from engine.cli import main
from engine.suggest import did_you_mean
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
    assert out[-1] == "2 of 3 workflows have problems"


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


def test_validate_knows_the_model_aliases_of_the_configuration(tmp_path, monkeypatch, write, capsys) -> None:
    flow = write(GOOD.replace("fast_ai", "my_model"))
    monkeypatch.chdir(tmp_path)
    assert main(["validate", str(flow)]) == 1
    config = ("providers:\n  router: {kind: openai, api_key: '${ORCHESTRION_TEST_UNSET_KEY}'}\n"
              "models:\n  my_model: {provider: router}\n")
    (tmp_path / "orchestrion.yaml").write_text(config)
    assert main(["validate", str(flow)]) == 0  # the default configuration; no key needed to validate
    other = tmp_path / "other.yaml"
    other.write_text(config.replace("my_model", "your_model"))
    assert main(["validate", "--config", str(other), str(flow)]) == 1
    assert main(["graph", "--config", str(other), str(write(GOOD.replace("fast_ai", "your_model")))]) == 0


def test_one_did_you_mean_for_every_unknown_name(write, capsys) -> None:
    assert did_you_mean("fsat_ai", ["medium_ai", "fast_ai"]) == "did you mean 'fast_ai'?"
    assert did_you_mean("zzz", ["fast_ai"]) is None
    typos = ("dsl: orchestrion/v1\nname: typos\ninputs:\n  topic: {type: string}\nstages:\n  - type: inline\n"
             "    tasks:\n      - {id: a, model: fastai, prompt: '{{ topc }}'}\n")
    assert main(["validate", str(write(typos))]) == 1
    hints = [line.strip() for line in capsys.readouterr().out.splitlines() if line.startswith("    hint:")]
    assert hints == ["hint: did you mean 'fast_ai'?", "hint: did you mean 'topic'?"]
    assert main(["validate", str(write(GOOD.replace("prompt:", "promt:")))]) == 1
    assert "hint: did you mean 'prompt'?" in capsys.readouterr().out
    assert main(["run", str(write(typos.replace("fastai", "fast_ai").replace("topc", "topic"))), "--dry-run",
                 "-i", "topic=tea", "-i", "topc=tea"]) == 1
    assert "unknown input 'topc' (did you mean 'topic'?)" in capsys.readouterr().err


def test_reserved_names_say_which_and_why(write, capsys) -> None:
    header = "dsl: orchestrion/v1\nname: r\n"
    tasks = "stages:\n  - type: inline\n    tasks:\n"
    assert main(["validate", str(write(header + "inputs:\n  range: {type: string}\n" + tasks +
                                       "      - {id: a, model: fast_ai, prompt: hi}\n"))]) == 1
    assert "inputs.range: 'range' is a reserved name: it is a Jinja function; choose another input name" in \
        capsys.readouterr().out
    assert main(["validate", str(write(header + tasks + "      - {id: loop, model: fast_ai, prompt: hi}\n"))]) == 1
    assert "'loop' is a reserved name: it is `loop.round` in a repeated stage" in capsys.readouterr().out
    fan_out = header + tasks + ("      - {id: a, call: orchestrion.identity, with: {value: [1]}}\n"
                                "      - {id: b, model: fast_ai, for_each: a, as: NAME, prompt: '{{ NAME }}'}\n")
    assert main(["validate", str(write(fan_out.replace("NAME", "none")))]) == 1
    assert ".as: 'none' is a reserved name: it is a Jinja constant" in capsys.readouterr().out
    assert main(["validate", str(write(fan_out.replace("NAME", "item")))]) == 0


def test_validate_and_graph_build_no_engine(write, tmp_path) -> None:
    (tmp_path / "orchestrion.yaml").write_text("providers: {dry: {kind: fake}}\nmodels: {my_model: {provider: dry}}\n")
    flow = write(GOOD.replace("fast_ai", "my_model"))
    code = (f"import sys\nfrom engine.cli import main\nassert main(['validate', {str(flow)!r}]) == 0\n"
            f"assert main(['graph', {str(flow)!r}]) == 0\nprint('engine.core' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=tmp_path)
    assert result.stdout.splitlines()[-1] == "False"


@pytest.mark.parametrize("command", [["run", "flow.yaml"], ["validate", "flow.yaml"], ["graph", "flow.yaml"],
                                     ["plan", "a request"], ["models"], ["schema"], ["addons"]])
def test_an_unknown_option_shows_the_usage_of_its_command(command, capsys) -> None:
    with pytest.raises(SystemExit) as caught:
        main([*command, "--bogus"])
    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"usage: orchestrion {command[0]} [-h]")
    assert err.rstrip().endswith(f"orchestrion {command[0]}: error: unrecognized arguments: --bogus")


def test_an_unknown_option_before_the_command_shows_the_top_level_usage(capsys) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["--bogus", "schema"])
    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: orchestrion [-h] COMMAND") and "orchestrion: error: unrecognized arguments" in err
