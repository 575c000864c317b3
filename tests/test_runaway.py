"""Runaway workflows: recursion caught by `validate` where the files are known, and the run-wide
bounds (`limits.max_tasks`, `limits.max_depth`) that stop whatever gets past it, with one clear error."""

from __future__ import annotations

import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import anyio
import pytest

import engine.compiler
from engine import Catalog, Engine, WorkflowError, compile_workflow, load_workflow
from engine.cli import main
from engine.compiler import nesting
from engine.testing import FakeModel, capture_events

Write = Callable[..., Path]

# The hostile user's workflow: each of ten items runs the workflow itself, so runs grow tenfold a level.
BOMB = """dsl: orchestrion/v1
name: bomb
inputs:
  n: {type: integer, default: 0}
stages:
  - type: linear
    tasks:
      - id: fan
        for_each: "[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]"
        workflow: bomb.yaml
        with: {n: "{{ item }}"}
"""
AGAIN = """dsl: orchestrion/v1
name: again
stages:
  - type: linear
    tasks:
      - id: again
        workflow: again.yaml
"""


def flow(name: str, *tasks: str, limits: str = "") -> str:
    """A workflow document whose tasks are given as YAML flow mappings."""
    lines = "".join(f"      - {task}\n" for task in tasks)
    return (f"dsl: orchestrion/v1\nname: {name}\ndefaults: {{model: fast_ai, retry: null}}\n{limits}"
            f"stages:\n  - type: linear\n    tasks:\n{lines}")


def problems_of(path: Path) -> list[tuple[str, str, int | None]]:
    """(code, message, line) of each problem compiling ``path`` reports."""
    with pytest.raises(WorkflowError) as caught:
        compile_workflow(load_workflow(path), Catalog.default())
    return [(p.code, p.message, p.location.line if p.location else None) for p in caught.value.problems]


@pytest.fixture
def no_cycle_check(monkeypatch: pytest.MonkeyPatch) -> None:
    """Stand-in for a cycle `validate` cannot see (a file changed after the check): only the
    run-time bounds are left to stop it."""
    monkeypatch.setattr(engine.compiler, "check_nesting", lambda *args: [])


# -- static: validate finds the cycle ------------------------------------------------------------

def test_a_workflow_that_runs_itself_is_reported_where_it_does(write: Write) -> None:
    path = write(BOMB, "bomb.yaml")
    assert problems_of(path) == [("recursive-workflow", "the workflow bomb.yaml runs itself: bomb.yaml → bomb.yaml",
                                  10)]


def test_a_cycle_through_two_files_is_reported_in_each(write: Write, tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    top = write(flow("a", "{id: first, prompt: hi}", "{id: down, workflow: sub/b.yaml}"), "a.yaml")
    below = write(flow("b", "{id: up, workflow: ../a.yaml}"), "sub/b.yaml")
    assert problems_of(top) == [("recursive-workflow",
                                 "workflows run each other in a cycle: a.yaml → sub/b.yaml → a.yaml", 8)]
    assert problems_of(below) == [("recursive-workflow",
                                   "workflows run each other in a cycle: b.yaml → ../a.yaml → b.yaml", 7)]


def test_validate_prints_the_cycle_at_its_line_and_column(write: Write, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(BOMB, "bomb.yaml")
    assert main(["validate", str(path)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"{path}:10:19: stages[0].tasks[0].workflow: the workflow bomb.yaml runs itself: " \
                     "bomb.yaml → bomb.yaml"
    assert "limits.max_depth" in out[1] and "repeat:" in out[1]


def test_a_cycle_below_the_checked_workflow_is_reported_at_the_task_that_enters_it(write: Write) -> None:
    top = write(flow("top", "{id: sub, workflow: b.yaml}"), "top.yaml")
    write(flow("b", "{id: c, workflow: c.yaml}"), "b.yaml")
    write(flow("c", "{id: b, workflow: b.yaml}"), "c.yaml")
    assert problems_of(top) == [("recursive-workflow",
                                 "workflows run each other in a cycle: b.yaml → c.yaml → b.yaml", 7)]


def test_a_symlink_back_to_the_workflow_is_the_same_file(write: Write, tmp_path: Path) -> None:
    path = write(flow("loop", "{id: again, workflow: alias.yaml}"), "loop.yaml")
    (tmp_path / "alias.yaml").symlink_to(path)
    ((code, message, _),) = problems_of(path)
    assert code == "recursive-workflow" and message.endswith("loop.yaml → loop.yaml")


def test_a_reference_that_names_no_file_is_left_to_the_catalog_check(write: Write) -> None:
    path = write(flow("t", "{id: sub, workflow: '{{ which }}.yaml'}"), "t.yaml")
    assert [code for code, _, _ in problems_of(path)] == ["unknown-workflow-file"]


def test_the_walk_reads_a_bounded_number_of_files(write: Write, monkeypatch: pytest.MonkeyPatch) -> None:
    """A cycle farther away than the walk reads is left to the run-time bounds; the check stays quick."""
    for index in range(6):
        write(flow(f"f{index}", f"{{id: next, workflow: f{(index + 1) % 6}.yaml}}"), f"f{index}.yaml")
    first = write(flow("f0", "{id: next, workflow: f1.yaml}"), "f0.yaml")
    assert [code for code, _, _ in problems_of(first)] == ["recursive-workflow"]
    reads: list[object] = []
    load = Catalog.load_workflow
    monkeypatch.setattr(Catalog, "load_workflow", lambda self, *args: reads.append(args) or load(self, *args))
    monkeypatch.setattr(nesting, "MAX_FILES", 3)
    compile_workflow(load_workflow(first), Catalog.default())  # the cycle is six files long: not reached
    assert len(reads) <= 3 + 1  # the walk's reads, and the catalog check's of f1.yaml


# -- a workflow without a cycle ------------------------------------------------------------------

@pytest.mark.anyio
async def test_a_workflow_used_twice_without_a_cycle_validates_and_runs(write: Write) -> None:
    write(flow("leaf", "{id: answer, prompt: 'leaf {{ topic }}'}").replace(
        "stages:", "inputs: {topic: {type: string}}\noutputs: {text: '{{ answer }}'}\nstages:"), "leaf.yaml")
    write(flow("middle", "{id: one, workflow: leaf.yaml, with: {topic: x}}",
               "{id: two, workflow: leaf.yaml, with: {topic: y}}"), "middle.yaml")
    top = write(flow("top", "{id: left, workflow: middle.yaml}", "{id: right, workflow: middle.yaml}",
                     "{id: leaf, workflow: leaf.yaml, with: {topic: z}}"), "top.yaml")
    compile_workflow(load_workflow(top), Catalog.default())
    result = await Engine(models=FakeModel()).run(top)
    assert result.status == "succeeded", result.error
    assert result.outputs["left"]["one"] == {"text": "[fast_ai] leaf x"}


# -- run time: the bounds ------------------------------------------------------------------------

@pytest.mark.anyio
@pytest.mark.usefixtures("no_cycle_check")
@pytest.mark.allow_blocking("the bound cancels some 10,000 tasks at once, and trio runs every task a "
                            "cancellation wakes in one batch of its loop: about 300 ms")
async def test_the_self_recursive_fan_out_stops_at_max_tasks_at_once(write: Write) -> None:
    path = write(BOMB, "bomb.yaml")
    engine = Engine(models=FakeModel())
    started = time.perf_counter()
    with capture_events(engine) as events, anyio.fail_after(60):
        result = await engine.run(path)
    elapsed = time.perf_counter() - started
    assert result.status == "failed"
    error = result.error or ""
    assert error.startswith("task 'fan': the run started more than 10000 tasks (limits.max_tasks); "
                            "the last was in bomb → bomb → bomb"), error
    assert error.count("limits.max_tasks") == 1 and "workflow" not in error
    runs = sum(event.type == "run_started" for event in events)
    assert runs < 2_000  # about a tenth of the bound: each run starts ten; not 10 ** depth
    assert elapsed < 30  # 2 to 3 s on a quiet machine; before the bound, still going after 30 s and 1.5 GB


@pytest.mark.anyio
@pytest.mark.usefixtures("no_cycle_check")
@pytest.mark.allow_blocking("tracemalloc slows every allocation, and trio cancels the 1,000 tasks in one step")
async def test_memory_stays_bounded_by_max_tasks(write: Write) -> None:
    path = write(BOMB.replace("stages:", "limits: {max_tasks: 1000}\nstages:"), "bomb.yaml")
    engine = Engine(models=FakeModel())
    await engine.run(write(flow("warm", "{id: a, prompt: hi}"), "warm.yaml"))  # imports are not the run's
    tracemalloc.start()
    try:
        result = await engine.run(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "more than 1000 tasks" in (result.error or "")
    assert peak < 40_000_000  # about 12 MB: some 10 KB per task instance


@pytest.mark.anyio
@pytest.mark.usefixtures("no_cycle_check")
async def test_plain_self_recursion_stops_at_max_depth_with_one_message(write: Write) -> None:
    result = await Engine(models=FakeModel()).run(write(AGAIN, "again.yaml"))
    assert result.status == "failed"
    assert result.error == ("task 'again': workflows nested deeper than 8 (limits.max_depth): "
                            "again → again → again → again → … 2 more … → again → again → again → again")


@pytest.mark.anyio
async def test_max_depth_from_limits_names_the_chain_of_workflows(write: Write) -> None:
    for index in range(4):
        write(flow(f"w{index}", f"{{id: next, workflow: w{index + 1}.yaml}}"), f"w{index}.yaml")
    write(flow("w4", "{id: last, prompt: hi}"), "w4.yaml")
    top = write(flow("top", "{id: down, workflow: w0.yaml}", limits="limits: {max_depth: 3}\n"), "top.yaml")
    result = await Engine(models=FakeModel()).run(top)
    assert result.error == "task 'next': workflows nested deeper than 3 (limits.max_depth): top → w0 → w1 → w2 → w3"
    assert (await Engine(models=FakeModel(), max_depth=5).run(write(flow("top", "{id: down, workflow: w0.yaml}"),
                                                                    "free.yaml"))).status == "succeeded"


@pytest.mark.anyio
@pytest.mark.parametrize(("max_tasks", "status"), [(9, "succeeded"), (8, "failed")])
async def test_max_tasks_counts_items_and_nested_tasks(write: Write, max_tasks: int, status: str) -> None:
    # 3 items, each a run of 2 tasks: 9 task instances. The nested workflow's own bound is not used.
    write(flow("child", "{id: a, prompt: hi}", "{id: b, prompt: ho}", limits="limits: {max_tasks: 1}\n"),
          "child.yaml")
    top = write(flow("top", "{id: each, for_each: '[1, 2, 3]', workflow: child.yaml}",
                     limits=f"limits: {{max_tasks: {max_tasks}}}\n"), "top.yaml")
    result = await Engine(models=FakeModel()).run(top)
    assert result.status == status, result.error
    if status == "failed":
        assert result.error is not None and "the run started more than 8 tasks (limits.max_tasks)" in result.error


@pytest.mark.anyio
async def test_repeat_rounds_count(write: Write) -> None:
    path = write(flow("loop", "{id: a, prompt: hi}", limits="limits: {max_tasks: 3}\n").replace(
        "    tasks:", "    repeat: {max_rounds: 5}\n    tasks:"), "loop.yaml")
    result = await Engine(models=FakeModel()).run(path)
    assert result.status == "failed" and result.failed_task == "a@4"
    assert [result.tasks[f"a@{n}"].status for n in (1, 2, 3, 5)] == ["succeeded"] * 3 + ["cancelled"]


@pytest.mark.anyio
async def test_the_engine_bound_is_a_ceiling_a_workflow_may_only_lower(write: Write) -> None:
    many = flow("many", "{id: each, for_each: '[1, 2, 3, 4]', prompt: 'n {{ item }}'}")
    result = await Engine(models=FakeModel(), max_tasks=3).run(write(many, "many.yaml"))
    assert result.status == "failed" and result.tasks["each"].error_kind == "limit"
    assert result.error == "task 'each': the run started more than 3 tasks (limits.max_tasks)"
    raised = write(many.replace("stages:", "limits: {max_tasks: 4}\nstages:"), "raised.yaml")
    assert (await Engine(models=FakeModel(), max_tasks=3).run(raised)).status == "failed"  # not above the engine's
    assert (await Engine(models=FakeModel(), max_tasks=4).run(raised)).status == "succeeded"
    lowered = write(many.replace("stages:", "limits: {max_tasks: 3}\nstages:"), "lowered.yaml")
    assert (await Engine(models=FakeModel(), max_tasks=100).run(lowered)).status == "failed"


@pytest.mark.anyio
async def test_a_limit_fails_the_run_even_from_a_non_critical_task(write: Write) -> None:
    path = write(flow("soft", "{id: each, critical: false, for_each: '[1, 2, 3]', prompt: 'n {{ item }}'}",
                      "{id: other, prompt: hi}", limits="limits: {max_tasks: 3}\n"), "soft.yaml")
    result = await Engine(models=FakeModel()).run(path)
    assert result.status == "failed" and "limits.max_tasks" in (result.error or "")
