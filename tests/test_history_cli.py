"""`orchestrion runs`, `runs show`, `runs prune`, `stats` and `cache clear` on a SQLite store."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.cli import main

FLOW = """\
dsl: orchestrion/v1
name: hist
defaults: {cache: true}
stages:
  - type: linear
    tasks:
      - {id: a, model: fast_ai, prompt: hello}
      - {id: b, model: medium_ai, prompt: again}
"""


@pytest.fixture
def store(tmp_path: Path) -> list[str]:
    return ["--store", f"sqlite+aiosqlite:///{tmp_path / 'runs.db'}"]


def test_runs_show_stats_and_the_cache_after_two_runs(tmp_path: Path, store: list[str], capsys) -> None:
    flow = tmp_path / "hist.yaml"
    flow.write_text(FLOW)
    assert main(["run", str(flow), "--dry-run", "-q", *store]) == 0
    assert main(["run", str(flow), "--dry-run", "-q", *store]) == 0  # answered from the cache
    capsys.readouterr()

    assert main(["runs", "--json", *store]) == 0
    runs = json.loads(capsys.readouterr().out)
    assert [run["status"] for run in runs] == ["succeeded", "succeeded"] and runs[0]["workflow"] == "hist"
    assert main(["runs", *store]) == 0
    listing = capsys.readouterr().out.splitlines()
    assert listing[0].split() == ["RUN", "WORKFLOW", "STATUS", "STARTED", "TIME", "COST"] and len(listing) == 3

    assert main(["runs", "show", runs[1]["run_id"], *store]) == 0
    shown = capsys.readouterr().out
    assert f"run {runs[1]['run_id']} of hist: succeeded" in shown and f"workflow file: {flow}" in shown
    assert "call: fast_ai ok" in shown and "outputs:" in shown

    assert main(["stats", "--json", *store]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["total"]["calls"] == 4 and stats["total"]["cached"] == 2
    assert set(stats["by_model"]) == {"fast_ai", "medium_ai"} and set(stats["by_workflow"]) == {"hist"}
    assert main(["stats", "--since", "1h", "--workflow", "hist", *store]) == 0
    table = capsys.readouterr().out
    assert "fast_ai" in table and "(all)" in table

    assert main(["cache", "clear", *store]) == 0
    assert capsys.readouterr().out == "deleted 2 cached answer(s)\n"
    assert main(["runs", "prune", "--older-than", "0s", *store]) == 0
    assert capsys.readouterr().out == "deleted 2 run(s)\n"
    assert main(["runs", "--json", *store]) == 0
    assert json.loads(capsys.readouterr().out) == []


def test_unknown_runs_and_bad_durations_are_clear_errors(store: list[str], capsys) -> None:
    assert main(["runs", "show", "nope", *store]) == 1
    assert "no run 'nope' in the run store" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exited:
        main(["stats", "--since", "a week", *store])
    assert exited.value.code == 2
    assert "'a week' is not a duration such as 90s" in capsys.readouterr().err
    assert main(["resume", "nope", *store]) == 1
    assert "no run 'nope'" in capsys.readouterr().err
    assert main(["runs", "--store", "none"]) == 2
    assert "no run store is configured" in capsys.readouterr().err
