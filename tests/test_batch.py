"""Batch runs: ``engine.batch`` (the local backend and the seam) and ``orchestrion batch``."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from engine import BatchItem, Engine, WorkflowError
from engine.batch import BUFFER, Deliver, run_one
from engine.cli import main
from engine.dsl.loader import load_workflow
from engine.dsl.models import Workflow
from engine.errors import ModelError
from engine.events import RunFinished
from engine.model.client import ModelRequest
from engine.store.open import open_store
from engine.testing import FakeModel
from tests.support.terminal import run_in_terminal

FLOW = ("dsl: orchestrion/v1\nname: echo\ninputs:\n  n: {type: integer}\nstages:\n  - type: inline\n    tasks:\n"
        "      - {id: a, model: fast_ai, prompt: 'echo {{ n }}'}\n")
DOCUMENT: dict[str, Any] = {
    "dsl": "orchestrion/v1", "name": "echo", "inputs": {"n": {"type": "integer"}},
    "stages": [{"type": "inline", "tasks": [{"id": "a", "model": "fast_ai", "prompt": "echo {{ n }}"}]}]}


def number(request: ModelRequest) -> int:
    return int(request.prompt.rsplit(" ", 1)[1])


class Gauge:
    """A FakeModel answer that counts the calls in flight, waits, and answers the prompt in capitals."""

    def __init__(self, delay: float = 0.002, fail: frozenset[int] = frozenset()) -> None:
        self.delay, self.fail = delay, fail
        self.now = self.peak = self.calls = 0

    async def __call__(self, request: ModelRequest) -> Any:
        self.calls += 1
        self.now += 1
        self.peak = max(self.peak, self.now)
        try:
            await anyio.sleep(self.delay)
        finally:
            self.now -= 1
        if number(request) in self.fail:
            return ModelError("bad_request", f"scripted failure for {number(request)}", model=request.model)
        return request.prompt.upper()


async def collect(engine: Engine, workflow: Any, inputs: Any, **options: Any) -> list[BatchItem]:
    async with engine.batch(workflow, inputs, **options) as results:
        return [item async for item in results]


# ---------------------------------------------------------------- engine.batch


@pytest.mark.anyio
async def test_hundreds_of_runs_each_index_once_with_concurrency_bounded_and_used() -> None:
    gauge = Gauge(delay=0.02)
    engine = Engine(models=FakeModel({"fast_ai": gauge}))
    finished: list[RunFinished] = []
    engine.add_listener(lambda event: finished.append(event) if isinstance(event, RunFinished) else None)
    items = await collect(engine, DOCUMENT, ({"n": n} for n in range(300)), concurrency=16)
    assert sorted(item.index for item in items) == list(range(300))
    assert all(item.ok and item.error is None for item in items)
    assert all(item.result is not None and item.result.outputs == {"a": f"ECHO {item.index}"} for item in items)
    assert gauge.peak == 16  # never more than asked, and the machine kept busy
    assert gauge.calls == 300 and len(finished) == 300  # each input one run, through engine.run (events)


@pytest.mark.anyio
async def test_items_come_as_the_runs_finish_not_in_input_order() -> None:
    async def answer(request: ModelRequest) -> str:
        await anyio.sleep(0.3 if number(request) == 0 else 0.001)
        return "ok"

    engine = Engine(models=FakeModel({"fast_ai": answer}))
    items = await collect(engine, DOCUMENT, [{"n": n} for n in range(10)], concurrency=10)
    assert [item.index for item in items][-1] == 0
    assert sorted(item.index for item in items) == list(range(10))


@pytest.mark.anyio
async def test_invalid_inputs_and_a_failed_run_are_items_with_their_errors() -> None:
    gauge = Gauge(fail=frozenset({3}))
    engine = Engine(models=FakeModel({"fast_ai": gauge}))
    inputs: list[Any] = [{"n": 0}, {"n": "x"}, {"n": 2}, {"n": 3}, {"m": 1}, "n=5", {"n": 6}]
    items = {item.index: item for item in await collect(engine, DOCUMENT, inputs, concurrency=3)}
    assert sorted(items) == list(range(7))
    assert sorted(index for index, item in items.items() if item.ok) == [0, 2, 6]
    assert items[1].result is None and "input 'n': 'x' is not of type 'integer'" in (items[1].error or "")
    assert items[4].result is None and "unknown input 'm'" in (items[4].error or "")
    assert items[5].result is None and items[5].error == (
        "input 5 is a str, not a mapping of input names to values")
    failed = items[3]
    assert failed.result is not None and failed.result.status == "failed"
    assert "scripted failure for 3" in (failed.error or "")
    assert gauge.calls == 4  # the invalid inputs never reached a model


@pytest.mark.anyio
@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_inputs_are_read_as_runs_can_start_not_loaded_whole(kind: str) -> None:
    total, concurrency = 400, 4
    read = 0

    def plain() -> Iterator[dict[str, int]]:
        nonlocal read
        for n in range(total):
            read += 1
            yield {"n": n}

    async def streamed() -> AsyncIterator[dict[str, int]]:
        for values in plain():
            yield values

    engine = Engine(models=FakeModel())  # echoes at once: the inputs would run ahead if they could
    ahead: list[int] = []
    async with engine.batch(DOCUMENT, plain() if kind == "sync" else streamed(), concurrency=concurrency) as results:
        received = 0
        async for item in results:
            received += 1
            ahead.append(read - received)
            assert item.ok
            await anyio.sleep(0.0005)  # a slow reader: the runs wait for it, the inputs are not read ahead
    assert received == read == total
    assert max(ahead) <= concurrency + BUFFER
    assert ahead[0] <= concurrency + BUFFER < total


@pytest.mark.anyio
async def test_leaving_the_block_cancels_the_runs_in_flight_and_closes_the_inputs() -> None:
    started: list[int] = []
    running = 0
    closed, waiting = anyio.Event(), anyio.Event()

    async def answer(request: ModelRequest) -> str:
        nonlocal running
        started.append(number(request))
        running += 1
        if running == 7:
            waiting.set()
        try:
            if number(request) > 0:
                await anyio.sleep(30)  # only a cancellation ends it
        finally:
            running -= 1
        return "ok"

    async def inputs() -> AsyncIterator[dict[str, int]]:
        try:
            for n in range(1000):
                yield {"n": n}
        finally:
            closed.set()

    engine = Engine(models=FakeModel({"fast_ai": answer}))
    begun = time.monotonic()
    async with engine.batch(DOCUMENT, inputs(), concurrency=8) as results:
        async for item in results:
            assert item.index == 0 and item.ok
            await waiting.wait()  # the other slots are taken by runs that wait
            break
    assert running == 0 and closed.is_set()  # cancelled and closed before the block returned
    assert time.monotonic() - begun < 5
    count = len(started)
    assert 8 <= count <= 9
    await anyio.sleep(0.05)
    assert len(started) == count  # nothing starts after the block


@pytest.mark.anyio
async def test_an_invalid_workflow_raises_before_any_input_is_read(tmp_path: Path) -> None:
    read = 0

    def inputs() -> Iterator[dict[str, int]]:
        nonlocal read
        read += 1
        yield {"n": 1}

    fake = FakeModel()
    engine = Engine(models=fake)
    bad = {**DOCUMENT, "stages": [{"type": "inline", "tasks": [{"id": "a", "model": "no_such_ai", "prompt": "x"}]}]}
    with pytest.raises(WorkflowError, match="no_such_ai"):
        async with engine.batch(bad, inputs()):
            raise AssertionError("the block must not be entered")
    with pytest.raises(ValueError, match="concurrency"):
        async with engine.batch(DOCUMENT, inputs(), concurrency=0):
            raise AssertionError("the block must not be entered")
    assert read == 0 and fake.calls == []


@pytest.mark.anyio
async def test_the_workflow_is_compiled_once_and_runs_are_stored(tmp_path: Path, monkeypatch) -> None:
    import engine.core

    compiled = 0
    real = engine.core.compile_workflow

    def counting(*args: Any) -> Any:
        nonlocal compiled
        compiled += 1
        return real(*args)

    monkeypatch.setattr(engine.core, "compile_workflow", counting)
    (tmp_path / "flow.yaml").write_text(FLOW, encoding="utf-8")
    runs = Engine(models=FakeModel(), store="memory:")
    items = await collect(runs, tmp_path / "flow.yaml", [{"n": n} for n in range(50)], concurrency=8)
    assert compiled == 1
    store = await runs.run_store()
    assert store is not None
    for item in items:
        assert item.result is not None
        stored = await store.load_run(item.result.run_id)
        assert stored is not None and stored.run.status == "succeeded" and stored.run.inputs == {"n": item.index}


class ShippingBackend:
    """A backend as a remote one would be written: only plain data crosses (a document, dicts, item dicts),
    and the runs happen on an engine built from the configuration, one at a time."""

    def __init__(self, models: Any) -> None:
        self.models = models

    async def run(self, engine: Engine, workflow: Workflow, inputs: AsyncIterator[tuple[int, dict[str, Any]]],
                  concurrency: int, deliver: Deliver) -> None:
        document = json.loads(json.dumps(workflow.model_dump(mode="json", by_alias=True, exclude_unset=True)))
        worker = Engine(engine.config, models=self.models)
        shipped = load_workflow(document)
        async for index, values in inputs:
            item = await run_one(worker, shipped, index, json.loads(json.dumps(values)))
            await deliver(BatchItem.from_dict(json.loads(json.dumps(item.to_dict()))))


@pytest.mark.anyio
async def test_another_backend_through_the_seam_with_plain_data() -> None:
    engine = Engine(models=FakeModel())
    items = await collect(engine, DOCUMENT, [{"n": 1}, {"n": "bad"}, {"n": 3}],
                          backend=ShippingBackend(FakeModel({"fast_ai": "remote"})))
    assert [(item.index, item.ok) for item in items] == [(0, True), (1, False), (2, True)]
    assert items[0].result is not None and items[0].result.outputs == {"a": "remote"}
    assert "is not of type 'integer'" in (items[1].error or "")


# ---------------------------------------------------------------- orchestrion batch


def write_inputs(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
    return path


def read_out(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_cli_writes_one_line_per_input_and_never_overwrites(tmp_path: Path, capsys) -> None:
    flow = tmp_path / "flow.yaml"
    flow.write_text(FLOW, encoding="utf-8")
    inputs = write_inputs(tmp_path / "in.jsonl", [json.dumps({"n": n}) for n in range(300)])
    out = tmp_path / "out.jsonl"
    command = ["batch", str(flow), "--inputs", str(inputs), "--out", str(out), "--dry-run", "--store", "none",
               "--concurrency", "32"]
    assert main(command) == 0
    lines = read_out(out)
    assert sorted(line["index"] for line in lines) == list(range(300))
    for line in lines:
        assert set(line) == {"index", "status", "run_id", "outputs", "error", "cost_usd", "input_tokens",
                             "output_tokens"}
        assert line["status"] == "succeeded" and line["error"] is None and line["run_id"]
        assert line["outputs"] == {"a": f"[fast_ai] echo {line['index']}"}
        assert line["input_tokens"] > 0
    err = capsys.readouterr().err
    assert "batch done: 300 input(s) done, 0 failed" in err and "\r" not in err  # no live line off a terminal

    written = out.read_bytes()
    assert main(command) == 2
    assert "already holds results: add --resume" in capsys.readouterr().err
    assert out.read_bytes() == written
    assert main([*command, "--resume"]) == 0  # nothing left to do
    assert out.read_bytes() == written


def test_cli_a_malformed_line_is_its_index_error_and_the_rest_run(tmp_path: Path, capsys) -> None:
    flow = tmp_path / "flow.yaml"
    flow.write_text(FLOW, encoding="utf-8")
    inputs = write_inputs(tmp_path / "in.jsonl", [
        '{"n": 0}', "not json", "[1, 2]", "", '{"n": "x"}', '{"n": 5}', '{"n": ' * 300 + "1" + "}" * 300])
    out = tmp_path / "out.jsonl"
    assert main(["batch", str(flow), "--inputs", str(inputs), "--out", str(out), "--dry-run", "--store", "none"]) == 1
    lines = {line["index"]: line for line in read_out(out)}
    assert sorted(lines) == [0, 1, 2, 4, 5, 6]  # the blank line is no input
    assert sorted(index for index, line in lines.items() if line["status"] == "succeeded") == [0, 5]
    assert lines[1]["error"].startswith("line 2 of the inputs is not JSON")
    assert lines[2]["error"] == "line 3 of the inputs is a JSON list, not an object of input names and values"
    assert "is not of type 'integer'" in lines[4]["error"] and lines[4]["run_id"] is None
    assert lines[6]["error"] == "line 7 of the inputs: nested too deep (more than 64 levels)"
    assert "4 of 6 inputs failed" in capsys.readouterr().err


def test_cli_usage_errors_exit_2(tmp_path: Path, capsys) -> None:
    flow = tmp_path / "flow.yaml"
    flow.write_text(FLOW, encoding="utf-8")
    inputs = write_inputs(tmp_path / "in.jsonl", ['{"n": 1}'])
    base = ["batch", str(flow), "--inputs", str(inputs), "--dry-run", "--store", "none"]
    for extra in (["--out", "o.jsonl", "--backend", "dask"], ["--out", "o.jsonl", "--concurrency", "0"], []):
        with pytest.raises(SystemExit) as exited:
            main([*base, *extra])
        assert exited.value.code == 2
    assert main(["batch", str(flow), "--inputs", str(tmp_path / "none.jsonl"), "--out", str(tmp_path / "o"),
                 "--dry-run"]) == 2
    assert main([*base, "--out", str(inputs)]) == 2
    assert "--out is the file of inputs" in capsys.readouterr().err
    assert main([*base, "--out", str(tmp_path / "no" / "such" / "out.jsonl")]) == 2
    assert "name a file in a folder that exists" in capsys.readouterr().err


def test_cli_resume_drops_a_line_cut_short_and_runs_its_input_again(tmp_path: Path) -> None:
    flow = tmp_path / "flow.yaml"
    flow.write_text(FLOW, encoding="utf-8")
    inputs = write_inputs(tmp_path / "in.jsonl", [json.dumps({"n": n}) for n in range(5)])
    out = tmp_path / "out.jsonl"
    earlier = {"index": 1, "status": "succeeded", "run_id": "r1", "outputs": {"a": "kept"}, "error": None,
               "cost_usd": 0.0, "input_tokens": 0, "output_tokens": 0}
    out.write_text(json.dumps(earlier) + "\n" + '{"index": 3, "status": "succ', encoding="utf-8")
    assert main(["batch", str(flow), "--inputs", str(inputs), "--out", str(out), "--dry-run", "--store", "none",
                 "--resume"]) == 0
    lines = read_out(out)
    assert sorted(line["index"] for line in lines) == [0, 1, 2, 3, 4]
    assert lines[0] == earlier  # kept as it was, not run again
    assert {line["index"]: line["outputs"]["a"] for line in lines}[3] == "[fast_ai] echo 3"


def test_cli_interrupted_by_sigint_then_resumed_runs_each_input_once(tmp_path: Path, monkeypatch) -> None:
    """A real Ctrl-C in a real process: what finished is on disk, the rest runs on --resume, and the store
    shows each input succeeded once, and no input written before the interruption ran again."""
    total, concurrency = 200, 4
    (tmp_path / "flow.yaml").write_text(FLOW, encoding="utf-8")
    (tmp_path / "slow.yaml").write_text("providers:\n  dry: {kind: fake, latency: 0.05}\ndefault_provider: dry\n")
    write_inputs(tmp_path / "in.jsonl", [json.dumps({"n": n}) for n in range(total)])
    out, url = tmp_path / "out.jsonl", f"sqlite+aiosqlite:///{tmp_path / 'runs.db'}"
    command = ["batch", "flow.yaml", "--inputs", "in.jsonl", "--out", "out.jsonl", "--config", "slow.yaml",
               "--store", url, "--concurrency", str(concurrency)]
    process = subprocess.Popen([sys.executable, "-m", "engine", *command], cwd=tmp_path,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 15
    while (not out.exists() or out.read_text().count("\n") < 20) and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=15)
    assert process.returncode == 130, err
    assert "interrupted by SIGINT" in err and "--resume" in err
    first = {line["index"] for line in read_out(out)}  # every line whole: nothing cut short
    assert 20 <= len(first) < total

    resumed_at = time.time()
    monkeypatch.chdir(tmp_path)
    assert main([*command[:-1], "50", "--resume"]) == 0
    lines = read_out(out)
    assert sorted(line["index"] for line in lines) == list(range(total))  # each index exactly once
    assert all(line["status"] == "succeeded" for line in lines)

    async def stored() -> tuple[list[Any], int]:
        store = await open_store(url)
        try:
            return await store.list_runs(limit=10_000), len(await store.attempts_since(0))
        finally:
            await store.aclose()

    runs, calls = anyio.run(stored)
    succeeded = sorted(run.inputs["n"] for run in runs if run.status == "succeeded")
    assert succeeded == list(range(total))  # no input succeeded twice
    again = {run.inputs["n"] for run in runs if run.started_at >= resumed_at}
    assert again == set(range(total)) - first  # the resume ran exactly what was missing
    stopped = [run for run in runs if run.status != "succeeded"]
    assert len(stopped) <= concurrency and all(run.inputs["n"] not in first for run in stopped)
    assert calls == len(runs) == total + len(stopped)  # one model call per run: no input written was run twice


def test_cli_live_progress_on_a_terminal(tmp_path: Path) -> None:
    (tmp_path / "flow.yaml").write_text(FLOW, encoding="utf-8")
    (tmp_path / "slow.yaml").write_text("providers:\n  dry: {kind: fake, latency: 0.1}\ndefault_provider: dry\n")
    write_inputs(tmp_path / "in.jsonl", [json.dumps({"n": n}) for n in range(20)])
    printed = run_in_terminal(["batch", "flow.yaml", "--inputs", "in.jsonl", "--out", "out.jsonl", "--config",
                               "slow.yaml", "--store", "none", "--concurrency", "2"], cwd=tmp_path, timeout=30)
    assert printed.count("\x1b[2K") >= 3  # redrawn in place
    assert "20/20 done, 0 failed" in printed and "runs/s | ETA" in printed
    assert "batch done: 20 input(s) done" in printed


def test_a_results_file_that_cannot_be_written_stops_the_batch_with_a_message(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    full = Path("/dev/full")
    if not full.exists():
        pytest.skip("no /dev/full here")
    inputs = tmp_path / "in.jsonl"
    inputs.write_text('{"topic": "a"}\n{"topic": "b"}\n')
    flow = tmp_path / "f.yaml"
    flow.write_text("dsl: orchestrion/v1\nname: f\ninputs: {topic: {type: string}}\nstages:\n  - type: linear\n"
                    "    tasks:\n      - {id: a, model: fast_ai, prompt: 'Say {{ topic }}'}\n")
    code = main(["batch", str(flow), "--inputs", str(inputs), "--out", str(full), "--dry-run", "--store", "none"])
    err = capsys.readouterr().err
    assert code == 1 and "No space left on device" in err and "--resume" in err and "Traceback" not in err


def test_cli_max_cost_stops_the_batch_and_resume_goes_on_under_a_higher_cap(tmp_path: Path, capsys) -> None:
    flow = tmp_path / "flow.yaml"
    flow.write_text(FLOW, encoding="utf-8")
    (tmp_path / "priced.yaml").write_text(  # the dry run keeps the aliases' prices
        "providers: {dry: {kind: fake}}\nmodels: {fast_ai: {provider: dry, input_price: 100.0}}\n", encoding="utf-8")
    inputs = write_inputs(tmp_path / "in.jsonl", [json.dumps({"n": n}) for n in range(200)])
    out = tmp_path / "out.jsonl"
    command = ["batch", str(flow), "--inputs", str(inputs), "--out", str(out), "--dry-run", "--store", "none",
               "--config", str(tmp_path / "priced.yaml"), "--concurrency", "4"]
    assert main([*command, "--max-cost", "0.005"]) == 1
    err = capsys.readouterr().err
    assert "the batch stopped: the cost cap of $0.005000 (budget.max_cost_usd) is reached" in err
    assert "run again with --resume" in err
    lines = read_out(out)
    assert 0 < len(lines) < 200 and sum(line["cost_usd"] for line in lines) <= 0.005
    assert main([*command, "--max-cost", "1", "--resume"]) in (0, 1)  # the refused runs stay failed lines
    assert sorted(line["index"] for line in read_out(out)) == list(range(200))
    for bad in ("-1", "x", "inf"):
        with pytest.raises(SystemExit):
            main([*command, "--max-cost", bad])
