"""``orchestrion batch``: run a workflow once per line of a JSONL file, results to a JSONL file as they finish.

Line N of ``--inputs`` (from 0; blank lines are skipped) is input N; each result is one JSON line
``{"index", "status", "run_id", "outputs", "error", "cost_usd", "input_tokens", "output_tokens"}``
appended to ``--out`` as soon as its run ends, so an interrupted batch keeps every finished result
and ``--resume`` goes on with the indexes that are not there yet.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from contextlib import aclosing
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from engine.cli.options import add_options, build_engine

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator, AsyncIterator

    from anyio import CancelScope
    from anyio.abc import TaskStatus

    from engine.batch import BatchBackend, BatchItem
    from engine.batch_ray import RayBackend
    from engine.core import Engine
    from engine.dsl.models import Workflow

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
BACKENDS = ("local", "ray")
CHUNK = 1 << 16  # bytes read at a time from the JSONL files


def add_parser(commands: Any) -> None:
    batch = commands.add_parser("batch", help="run a workflow once per line of a JSONL file of inputs")
    batch.add_argument("file", type=Path, metavar="FILE")
    batch.add_argument("--inputs", type=Path, required=True, metavar="JSONL",
                       help="one JSON object of inputs per line, read as the runs go")
    batch.add_argument("--out", type=Path, required=True, metavar="JSONL",
                       help="where each input's result goes, one JSON line as soon as its run ends")
    batch.add_argument("--concurrency", type=_positive, default=16, metavar="N", help="runs at a time (default 16)")
    batch.add_argument("--resume", action="store_true",
                       help="go on with an interrupted batch: skip the indexes already in --out and append")
    batch.add_argument("--backend", choices=BACKENDS, default="local",
                       help="where the runs go: this process (local, the default) or a Ray cluster (ray, with "
                            "pip install 'orchestrion[ray]')")
    batch.add_argument("--address", metavar="ADDRESS",
                       help="with --backend ray, the cluster: `auto` (the default: the one `ray start` runs here, or "
                            "RAY_ADDRESS), `local` (start one on this machine, its node at 127.0.0.1, for this batch) "
                            "or ray://HOST:PORT")
    batch.add_argument("--actors", type=_positive, metavar="N",
                       help="with --backend ray, the Ray actors hosting the runs (default 2, each up to 200 runs)")
    batch.add_argument("--max-cost", type=_dollars, metavar="USD",
                       help="a cost cap for the batch: no call passes it, and no run starts once it is reached "
                            "(sets budget.max_cost_usd; with budget.storage in the configuration it is shared "
                            "through Redis under budget.key, which --backend ray needs)")
    batch.add_argument("--dry-run", action="store_true",
                       help="answer every model alias with a fake model that echoes the prompt; nothing is sent")
    add_options(batch, "addons", "templates", "config", "store")
    batch.set_defaults(handler=batch_command)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1")
    return value


def _dollars(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not an amount of US dollars (0 or more)")
    return value


def batch_command(args: argparse.Namespace, out: TextIO) -> int:
    import anyio

    problem = _usage_problem(args)
    if problem is not None:
        print(f"orchestrion: {problem}", file=sys.stderr)
        return EXIT_USAGE
    engine = build_engine(args)
    workflow = engine.load(args.file)
    engine.compile(workflow)  # an invalid workflow is reported before anything runs
    from engine.errors import BudgetExceededError

    # What stops a batch: the results file cannot be written, the cost cap is reached.
    stops: tuple[type[Exception], ...] = (OSError, BudgetExceededError)
    ray: RayBackend | None = None
    backend: BatchBackend
    if args.backend == "ray":
        try:
            backend = ray = _ray_backend(engine, args)
        except ImportError as exc:
            print(f"orchestrion: {exc}", file=sys.stderr)
            return EXIT_USAGE
        except (ConnectionError, RuntimeError, ValueError) as exc:
            print(f"orchestrion: no Ray cluster at {args.address or 'auto'}: {exc} (`--address local` starts one "
                  "on this machine)", file=sys.stderr)
            return EXIT_FAILED
        from engine.batch_ray import RayBackendError

        stops += (RayBackendError,)  # the actors could not start, or all died
    else:
        from engine.batch import LocalBackend

        backend = LocalBackend()
    tally = Tally(sys.stderr)
    failure: BaseException | None = None
    try:
        anyio.run(_batch, engine, workflow, args, tally, backend)
    except* stops as group:
        failure = group
        while isinstance(failure, BaseExceptionGroup):  # the task groups nest it: the error itself
            failure = failure.exceptions[0]
    finally:
        if ray is not None:
            ray.shutdown()  # a cluster started for this batch stops with it
    if failure is not None:
        print(f"\norchestrion: the batch stopped: {failure}; what finished is in {args.out}, "
              "run again with --resume", file=sys.stderr)
        return 1
    return _report(args, tally)


def _ray_backend(engine: Engine, args: argparse.Namespace) -> RayBackend:
    """The Ray backend, connected on this thread (``ray.init`` blocks) once the engine is known to cross."""
    from engine.batch_ray import RayBackend
    from engine.recipe import EngineRecipe

    backend = RayBackend(args.address or "auto", actors=args.actors or 2)  # ImportError without Ray
    EngineRecipe.of(engine)  # ConfigError for what cannot reach the actors, before a cluster is joined
    backend.connect()
    return backend


def _usage_problem(args: argparse.Namespace) -> str | None:
    if args.backend != "ray":
        for flag, value in (("--address", args.address), ("--actors", args.actors)):
            if value is not None:
                return f"{flag} is for --backend ray"
    if not args.inputs.is_file():
        return f"{args.inputs}: no such file of inputs"
    if args.out.is_dir() or not args.out.parent.is_dir():
        return f"--out {args.out}: name a file in a folder that exists"
    if args.out.exists() and args.out.resolve() == args.inputs.resolve():
        return "--out is the file of inputs: name another file for the results"
    if not args.resume and args.out.exists() and args.out.stat().st_size > 0:
        return (f"{args.out} already holds results: add --resume to go on with that batch (the indexes it "
                "holds are skipped), or name another --out")
    return None


def _report(args: argparse.Namespace, tally: Tally) -> int:
    if tally.stopped_by is not None:
        print(f"orchestrion: batch interrupted by {tally.stopped_by}: {tally.summary()}; the finished results are "
              f"in {args.out}: run the same command with --resume to go on with the rest", file=sys.stderr)
        return EXIT_INTERRUPTED
    print(f"orchestrion: batch done: {tally.summary()}; results in {args.out}", file=sys.stderr)
    failed = tally.failed + tally.failed_before
    if failed:
        earlier = f" ({tally.failed_before} of them before this --resume)" if tally.failed_before else ""
        print(f"orchestrion: {failed} of {tally.done + tally.done_before} inputs failed{earlier}: their lines in "
              f"{args.out} have the error", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


async def _batch(engine: Engine, workflow: Workflow, args: argparse.Namespace, tally: Tally,
                 backend: BatchBackend) -> None:
    """Run the batch; a signal stops it (``tally.stopped_by``) with every finished result written."""
    import anyio

    try:
        await engine.run_store()  # one that cannot be opened is reported as such, not once per input
        done = await _resumed(args.out, tally) if args.resume else set()
        async with await anyio.open_file(args.out, "ab", buffering=0) as file:  # unbuffered: a line is on disk
            writer = Writer(file)
            async with anyio.create_task_group() as group:
                await group.start(_stop_on_signal, group.cancel_scope, tally)
                group.start_soon(_count, args.inputs, done, tally)
                if tally.live:
                    group.start_soon(tally.refresh)
                positions: dict[int, int] = {}  # the batch's index -> the line's, while the run is in flight
                inputs = _inputs(args.inputs, done, positions, writer, tally)
                async with engine.batch(workflow, inputs, concurrency=args.concurrency, backend=backend) as results:
                    async for item in results:
                        line = result_line(positions.pop(item.index), item)
                        await writer.write(line)
                        tally.add(line)
                group.cancel_scope.cancel()  # done: stop listening for signals
    finally:
        with anyio.CancelScope(shield=True):
            await engine.aclose()  # the providers' connections belong to this event loop, which ends here
        tally.finish()


def result_line(index: int, item: BatchItem) -> dict[str, Any]:
    result = item.result
    if result is None:
        return error_line(index, item.error or "no result")
    return {"index": index, "status": "succeeded" if item.ok else "failed", "run_id": result.run_id,
            "outputs": result.outputs, "error": item.error, "cost_usd": result.totals.cost_usd,
            "input_tokens": result.totals.input_tokens, "output_tokens": result.totals.output_tokens}


def error_line(index: int, error: str) -> dict[str, Any]:
    return {"index": index, "status": "failed", "run_id": None, "outputs": None, "error": error,
            "cost_usd": 0.0, "input_tokens": 0, "output_tokens": 0}


async def _inputs(path: Path, done: set[int], positions: dict[int, int], writer: Writer,
                  tally: Tally) -> AsyncIterator[dict[str, Any]]:
    """The input objects of the lines not done yet, read as the batch asks; a line that is not a JSON
    object is written as its index's error line here, and the batch goes on."""
    position = 0
    async with aclosing(_lines(path)) as lines:  # the file is closed when the batch stops reading
        async for index, text in lines:
            if index in done or not text.strip():
                continue
            values, error = _parse(index, text)
            if values is None:
                line = error_line(index, error)
                await writer.write(line)
                tally.add(line)
                continue
            positions[position] = index
            position += 1
            yield values


def _parse(index: int, text: bytes) -> tuple[dict[str, Any] | None, str]:
    from engine.depth import json_too_deep_at
    from engine.dsl.source import MAX_DOCUMENT_DEPTH, TOO_DEEP

    where = f"line {index + 1} of the inputs"
    try:
        decoded = text.decode("utf-8")
        if json_too_deep_at(decoded, MAX_DOCUMENT_DEPTH) is not None:  # `json` recurses once per level
            return None, f"{where}: {TOO_DEEP}"
        value = json.loads(decoded)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        return None, f"{where} is not JSON: {exc}"
    if not isinstance(value, dict):
        return None, f"{where} is a JSON {type(value).__name__}, not an object of input names and values"
    return value, ""


async def _lines(path: Path) -> AsyncGenerator[tuple[int, bytes], None]:
    """Each line of a file with its number from 0, without its newline, read a chunk at a time."""
    import anyio

    index, rest = 0, b""
    async with await anyio.open_file(path, "rb") as file:
        while chunk := await file.read(CHUNK):
            *lines, rest = (rest + chunk).split(b"\n")
            for line in lines:
                yield index, line
                index += 1
    if rest:
        yield index, rest


async def _resumed(path: Path, tally: Tally) -> set[int]:
    """The indexes ``path`` holds results for; a last line cut short (no newline) is removed first."""
    import anyio

    if not await anyio.Path(path).exists():
        return set()
    await anyio.to_thread.run_sync(_drop_cut_line, path)
    done: set[int] = set()
    async with aclosing(_lines(path)) as lines:
        async for _, text in lines:
            try:
                line = json.loads(text)
            except (UnicodeDecodeError, json.JSONDecodeError):
                continue
            if isinstance(line, dict) and isinstance(line.get("index"), int) and line["index"] not in done:
                done.add(line["index"])
                tally.done_before += 1
                tally.failed_before += line.get("status") != "succeeded"
    return done


def _drop_cut_line(path: Path) -> None:
    with path.open("rb+") as file:
        size = file.seek(0, 2)
        if size == 0:
            return
        file.seek(size - 1)
        if file.read(1) == b"\n":
            return
        end = size
        while end > 0:  # back to the last newline, a chunk at a time
            start = max(0, end - CHUNK)
            file.seek(start)
            cut = file.read(end - start).rfind(b"\n")
            if cut >= 0:
                file.truncate(start + cut + 1)
                return
            end = start
        file.truncate(0)


async def _count(path: Path, done: set[int], tally: Tally) -> None:
    """How many inputs this batch runs, counted in a worker thread while it goes (the progress's total)."""
    import anyio

    def count() -> int:
        with path.open("rb") as file:
            return sum(1 for index, line in enumerate(file) if index not in done and line.strip())

    tally.total = await anyio.to_thread.run_sync(count, abandon_on_cancel=True)  # a short batch need not wait


async def _stop_on_signal(scope: CancelScope, tally: Tally, *, task_status: TaskStatus[None]) -> None:
    import anyio

    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        task_status.started()  # listening: the runs may start
        async for number in signals:
            tally.stopped_by = signal.Signals(number).name
            scope.cancel()
            return


class Writer:
    """Appends result lines to the unbuffered ``--out``, one write each, one at a time, off the event loop."""

    def __init__(self, file: Any) -> None:
        import anyio

        self.file = file
        self.lock = anyio.Lock()

    async def write(self, line: dict[str, Any]) -> None:
        data = (json.dumps(line, ensure_ascii=False, default=str) + "\n").encode("utf-8")
        async with self.lock:
            await self.file.write(data)


class Tally:
    """Counts, and a progress line redrawn in place on a terminal (a summary line at the end elsewhere)."""

    def __init__(self, stream: TextIO, interval: float = 0.2) -> None:
        self.stream = stream
        self.live = stream.isatty()
        self.interval = interval
        self.started = time.monotonic()
        self.total: int | None = None  # counted while the batch runs
        self.done = self.failed = 0
        self.done_before = self.failed_before = 0  # in --out already (--resume)
        self.cost = 0.0
        self.stopped_by: str | None = None

    def add(self, line: dict[str, Any]) -> None:
        self.done += 1
        self.failed += line["status"] != "succeeded"
        self.cost += line["cost_usd"]

    def progress(self) -> str:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        rate = self.done / elapsed
        total = "?" if self.total is None else str(self.total)
        eta = "?"
        if self.total is not None and rate > 0:
            eta = f"{max(self.total - self.done, 0) / rate:.0f}s"
        return f"{self.done}/{total} done, {self.failed} failed | {rate:.1f} runs/s | ETA {eta} | ${self.cost:.4f}"

    def summary(self) -> str:
        elapsed = time.monotonic() - self.started
        earlier = f" (and {self.done_before} done before)" if self.done_before else ""
        return (f"{self.done} input(s) done{earlier}, {self.failed} failed, in {elapsed:.1f}s "
                f"({self.done / max(elapsed, 1e-9):.1f} runs/s), ${self.cost:.4f}")

    async def refresh(self) -> None:
        import anyio

        while True:
            self._draw()
            await anyio.sleep(self.interval)

    def finish(self) -> None:
        if self.live:
            self._draw()
            self.stream.write("\n")
            self.stream.flush()

    def _draw(self) -> None:
        self.stream.write("\r\x1b[2K" + self.progress())
        self.stream.flush()
