"""``orchestrion run``: run a workflow with live progress, then print its outputs."""

from __future__ import annotations

import argparse
import functools
import json
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from engine.cli.options import add_options, build_engine
from engine.errors import ConfigError, InputError

if TYPE_CHECKING:
    from collections.abc import Callable
    from contextlib import AbstractAsyncContextManager

    from anyio import CancelScope

    # the runtime is imported when a run starts, not for `orchestrion --help`
    from engine.core import Engine, RunEvents
    from engine.events import Event
    from engine.runtime.results import RunResult

EXIT_INTERRUPTED = 130  # what a shell reports for a program stopped by Ctrl-C


def add_parser(commands: Any) -> None:
    run = commands.add_parser("run", help="run a workflow and print its outputs")
    run.add_argument("file", type=Path, metavar="FILE")
    run.add_argument("--input", "-i", action="append", default=[], metavar="NAME=VALUE",
                     help="an input; VALUE is read as JSON unless the input is a string")
    run.add_argument("--inputs-file", type=Path, metavar="FILE", help="a YAML or JSON mapping of inputs")
    run.add_argument("--dry-run", action="store_true",
                     help="answer every model alias with a fake model that echoes the prompt; nothing is sent")
    _add_shared(run)
    run.set_defaults(handler=run_command)

    resume = commands.add_parser("resume", help="go on with a stored run that was interrupted, cancelled or "
                                                "failed; finished tasks are not run again")
    resume.add_argument("run_id", metavar="RUN_ID")
    resume.add_argument("--force", action="store_true",
                        help="resume even if the workflow file changed since, or the run seems alive elsewhere")
    _add_shared(resume)
    resume.set_defaults(handler=resume_command)


def _add_shared(command: argparse.ArgumentParser) -> None:
    """What `run` and `resume` both take: how to report, and what the engine knows."""
    command.add_argument("--json", action="store_true", help="print the whole result as JSON")
    command.add_argument("--quiet", "-q", action="store_true", help="no progress, only the outputs")
    add_options(command, "addons", "templates", "config", "store")


def run_command(args: argparse.Namespace, out: TextIO) -> int:
    import anyio

    engine = build_engine(args)
    workflow = engine.load(args.file)
    inputs = parse_inputs(args.input, args.inputs_file, workflow.inputs)
    progress = Progress(None if args.quiet else sys.stderr)
    result = anyio.run(_run, engine, functools.partial(engine.stream, workflow, inputs), progress)
    return _report(args, result, progress, out)


def resume_command(args: argparse.Namespace, out: TextIO) -> int:
    import anyio

    engine = build_engine(args)
    progress = Progress(None if args.quiet else sys.stderr)
    result = anyio.run(_run, engine, functools.partial(engine.stream_resume, args.run_id, force=args.force), progress)
    return _report(args, result, progress, out)


def _report(args: argparse.Namespace, result: RunResult | None, progress: Progress, out: TextIO) -> int:
    """The outputs (or the whole result with --json); the exit code says how the run ended."""
    if result is None:  # stopped by a signal: say what got done, no traceback
        print(f"orchestrion: run cancelled by {progress.stopped_by}: {progress.summary()}", file=sys.stderr)
        return EXIT_INTERRUPTED
    if args.json:
        out.write(json.dumps(result.to_dict(), indent=2, default=str) + "\n")
    else:
        _print_outputs(result, out)
    return 0 if result.status == "succeeded" else 1


async def _run(engine: Engine, open_stream: Callable[[], AbstractAsyncContextManager[RunEvents]],
               progress: Progress) -> RunResult | None:
    """The run's result; None if SIGINT or SIGTERM stopped it (the run is cancelled, every branch)."""
    import anyio

    result: RunResult | None = None
    try:
        # An invalid workflow or input raises here, before any task group: the CLI reports it as it is.
        async with open_stream() as events:
            async with anyio.create_task_group() as group:
                group.start_soon(_stop_on_signal, group.cancel_scope, progress)
                async for event in events:
                    progress.show(event)
                group.cancel_scope.cancel()  # the run is over: stop listening for signals
            result = events.result  # None if a signal stopped it: leaving the block cancels the run
    finally:
        with anyio.CancelScope(shield=True):
            await engine.aclose()  # the providers' connections belong to this event loop, which ends here
    return result


async def _stop_on_signal(scope: CancelScope, progress: Progress) -> None:
    import anyio

    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for number in signals:
            progress.stopped_by = signal.Signals(number).name
            scope.cancel()
            return


def parse_inputs(pairs: list[str], inputs_file: Path | None, declared: dict[str, Any]) -> dict[str, Any]:
    """``NAME=VALUE`` pairs (JSON unless the declared type is string) over the inputs file."""
    values: dict[str, Any] = {}
    if inputs_file is not None:
        from engine.dsl.source import parse_document

        try:
            values.update(parse_document(inputs_file.read_text(encoding="utf-8"), str(inputs_file)).data)
        except OSError as exc:
            raise ConfigError(f"{inputs_file}: cannot read the inputs: {exc.strerror}") from None
    for pair in pairs:
        name, equals, raw = pair.partition("=")
        if not equals or not name:
            raise InputError([f"--input {pair!r}: write NAME=VALUE (the name of a declared input, then its value)"])
        values[name] = raw if declared.get(name, {}).get("type") == "string" else _json_or_text(name, raw)
    return values


def _json_or_text(name: str, raw: str) -> Any:
    from engine.depth import json_too_deep_at
    from engine.dsl.source import MAX_DOCUMENT_DEPTH, TOO_DEEP

    if json_too_deep_at(raw, MAX_DOCUMENT_DEPTH) is not None:  # `json` recurses once per level: it would crash
        raise InputError([f"--input {name}: {TOO_DEEP}"])
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def _print_outputs(result: RunResult, out: TextIO) -> None:
    if result.status != "succeeded":
        print(f"run {result.status}: {result.error}", file=sys.stderr)
        return
    for name, value in result.outputs.items():
        text = value if isinstance(value, str) else json.dumps(value, indent=2, default=str)
        if "\n" in text:
            print(f"{name}:\n" + "\n".join(f"  {line}" for line in text.splitlines()), file=out)
        else:
            print(f"{name}: {text}", file=out)


class Progress:
    """A live view of the run on a terminal; one plain line per task event elsewhere."""

    def __init__(self, stream: TextIO | None, interval: float = 0.1) -> None:
        self.stream = stream  # None: record what happens, show nothing (--quiet)
        self.live = stream is not None and stream.isatty()
        self.stopped_by: str | None = None
        self.interval = interval
        self.started = time.monotonic()
        self.states: dict[str, str] = {}
        self.tokens = 0
        self.cost = 0.0
        self.drawn_lines = 0
        self.last_draw = 0.0

    def show(self, event: Event) -> None:
        line = self._record(event)
        if self.stream is None:
            return
        if not self.live:
            if line:
                print(f"{time.monotonic() - self.started:7.2f}s {line}", file=self.stream, flush=True)
            return
        now = time.monotonic()
        if event.type == "run_finished" or now - self.last_draw >= self.interval:
            self._draw()
            self.last_draw = now

    def _record(self, event: Event) -> str | None:
        state = _STATES.get(event.type)
        if state is not None and event.task_id is not None:
            self.states[event.task_id] = state
        if event.type == "task_finished":
            self.tokens += event.input_tokens + event.output_tokens  # type: ignore[attr-defined]
            self.cost += event.cost_usd  # type: ignore[attr-defined]
        describe = _LINES.get(event.type)
        return describe(event) if describe is not None else None

    def summary(self) -> str:
        """What the run got done, in one line."""
        states = list(self.states.values())
        return (f"{states.count('done')} task(s) done, {states.count('running')} stopped while running, "
                f"{states.count('failed')} failed, {states.count('skipped')} skipped; {self.tokens} tokens, "
                f"${self.cost:.4f}")

    def _draw(self) -> None:
        assert self.stream is not None
        counts = {state: list(self.states.values()).count(state) for state in ("running", "done", "failed", "skipped")}
        lines = [f"{symbol} {task}" for task, state in self.states.items()
                 if (symbol := _SYMBOLS[state])] if len(self.states) <= 20 else []
        lines.append(f"{counts['done']} done, {counts['running']} running, {counts['failed']} failed, "
                     f"{counts['skipped']} skipped | {self.tokens} tokens | ${self.cost:.4f} | "
                     f"{time.monotonic() - self.started:.1f}s")
        erase = "\x1b[1A\x1b[2K" * self.drawn_lines
        self.stream.write(erase + "\n".join(lines) + "\n")
        self.stream.flush()
        self.drawn_lines = len(lines)


_SYMBOLS = {"running": "…", "done": "✓", "failed": "✗", "skipped": "-"}
_STATES = {"task_started": "running", "task_finished": "done", "task_failed": "failed", "task_skipped": "skipped"}


def _started(event: Any) -> str:
    return f"started  {event.task_id}" + (f" ({event.model})" if event.model else "")


def _finished(event: Any) -> str:
    return (f"finished {event.task_id} in {event.latency_s:.2f}s, {event.input_tokens}+{event.output_tokens} "
            f"tokens, ${event.cost_usd:.4f}")


def _failed(event: Any) -> str:
    return f"failed   {event.task_id}: [{event.error_kind}] {event.error}"


def _skipped(event: Any) -> str:
    return f"skipped  {event.task_id}: {event.reason}"


def _retrying(event: Any) -> str:
    return f"retrying {event.task_id} in {event.delay_s:.1f}s after {event.error_kind}: {event.error}"


def _fell_back(event: Any) -> str:
    return f"fallback {event.task_id}: {event.from_model} -> {event.to_model} after {event.error_kind}"


def _run_finished(event: Any) -> str:
    return (f"run {event.status} in {event.wall_time_s:.2f}s, {event.input_tokens + event.output_tokens} tokens, "
            f"${event.cost_usd:.4f}")


_LINES: dict[str, Any] = {
    "task_started": _started, "task_finished": _finished, "task_failed": _failed, "task_skipped": _skipped,
    "task_retrying": _retrying, "task_fell_back": _fell_back, "run_finished": _run_finished,
}
