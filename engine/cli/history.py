"""What the run store remembers: ``orchestrion runs``, ``runs show``, ``runs prune``, ``stats``, ``cache clear``."""

from __future__ import annotations

import argparse
import json
import re
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any, TextIO

from engine.cli.options import add_options, store_url
from engine.errors import ConfigError, StoreError

if TYPE_CHECKING:
    from engine.store import RunRecord, RunStore, StoredRun
    from engine.store.stats import CallStats, Stats

EXIT_OK, EXIT_NOT_FOUND = 0, 1
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def add_parsers(commands: Any) -> None:
    runs = commands.add_parser("runs", help="the runs the store keeps: list, show one, prune old ones")
    actions = runs.add_subparsers(dest="action", metavar="ACTION")  # none: list the runs
    runs.add_argument("--limit", type=int, default=20, help="how many of the latest runs (default 20)")
    runs.add_argument("--workflow", metavar="NAME", help="only the runs of this workflow")
    runs.add_argument("--status", choices=("running", "succeeded", "failed", "cancelled", "interrupted"))
    runs.add_argument("--json", action="store_true")
    add_options(runs, "config", "store")
    runs.set_defaults(handler=_with_store(_list))

    show = actions.add_parser("show", help="a run's tasks, attempts and outputs")
    show.add_argument("run_id", metavar="RUN_ID")
    show.add_argument("--json", action="store_true")
    add_options(show, "config", "store")
    show.set_defaults(handler=_with_store(_show))

    prune = actions.add_parser("prune", help="delete finished runs older than a duration")
    prune.add_argument("--older-than", required=True, type=duration, metavar="AGE", help="e.g. 30d, 12h")
    add_options(prune, "config", "store")
    prune.set_defaults(handler=_with_store(_prune))

    stats = commands.add_parser("stats", help="model calls per model and per workflow: failures, tokens, cost, "
                                              "latency percentiles")
    stats.add_argument("--since", type=duration, default=7 * 86400, metavar="AGE",
                       help="how far back (default 7d)")
    stats.add_argument("--workflow", metavar="NAME", help="only this workflow's calls")
    stats.add_argument("--json", action="store_true")
    add_options(stats, "config", "store")
    stats.set_defaults(handler=_with_store(_stats))

    cache = commands.add_parser("cache", help="the response cache")
    cache_actions = cache.add_subparsers(dest="action", metavar="ACTION", required=True)
    clear = cache_actions.add_parser("clear", help="delete every cached answer")
    add_options(clear, "config", "store")
    clear.set_defaults(handler=_with_store(_clear_cache))


def duration(text: str) -> float:
    """``30d`` -> seconds; argparse reports a ValueError as an invalid value."""
    match = _DURATION.match(text)
    if match is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration such as 90s, 10m, 12h, 30d or 2w")
    return float(match.group(1)) * _SECONDS[match.group(2)]


Action = Callable[["RunStore", argparse.Namespace, TextIO], Awaitable[int]]


def _with_store(action: Action) -> Callable[[argparse.Namespace, TextIO], int]:
    def handler(args: argparse.Namespace, out: TextIO) -> int:
        import anyio

        url = store_url(args)
        if url is None:
            raise ConfigError("no run store is configured (`store: null`): there are no runs to read")

        async def main() -> int:
            from engine.store import open_store

            store = await open_store(url or None)
            try:
                return await action(store, args, out)
            finally:
                await store.aclose()

        return anyio.run(main)

    return handler


async def _list(store: RunStore, args: argparse.Namespace, out: TextIO) -> int:
    runs = await store.list_runs(args.limit, args.workflow, args.status)
    if args.json:
        out.write(json.dumps([_run_json(run) for run in runs], indent=2, default=str) + "\n")
        return EXIT_OK
    if not runs:
        print("no runs", file=out)
        return EXIT_OK
    print(f"{'RUN':<32}  {'WORKFLOW':<20} {'STATUS':<11} {'STARTED':<19} {'TIME':>8} {'COST':>10}", file=out)
    for run in runs:
        print(f"{run.run_id:<32}  {run.workflow[:20]:<20} {run.status:<11} {_when(run.started_at):<19} "
              f"{_took(run):>8} {'$' + format(run.cost_usd, '.4f'):>10}", file=out)
    return EXIT_OK


async def _show(store: RunStore, args: argparse.Namespace, out: TextIO) -> int:
    stored = await store.load_run(args.run_id)
    if stored is None:
        raise StoreError(f"no run {args.run_id!r} in the run store (`orchestrion runs` lists them)")
    if args.json:
        out.write(json.dumps(_stored_json(stored), indent=2, default=str) + "\n")
        return EXIT_OK
    run = stored.run
    print(f"run {run.run_id} of {run.workflow}: {run.status}, started {_when(run.started_at)}, took {_took(run)}, "
          f"${run.cost_usd:.4f} ({run.input_tokens} in, {run.output_tokens} out)", file=out)
    if run.source:
        print(f"workflow file: {run.source}", file=out)
    if run.error:
        print(f"error: {run.error}", file=out)
    attempts: dict[str, list[str]] = {}
    for attempt in stored.attempts:
        attempts.setdefault(attempt.task_id, []).append(
            f"{attempt.model} {attempt.outcome} {attempt.latency_s:.2f}s" + (" (cached)" if attempt.cached else ""))
    for task in sorted(stored.tasks.values(), key=lambda task: task.started_at or 0.0):
        took = f"{task.ended_at - task.started_at:.2f}s" if task.started_at and task.ended_at else "-"
        print(f"  {task.task_id:<24} {task.status:<10} {task.model or '-':<14} {took:>8} ${task.cost_usd:.4f}",
              file=out)
        for line in attempts.get(task.task_id, []):
            print(f"      call: {line}", file=out)
        if task.error:
            print(f"      error: {task.error}", file=out)
    if run.outputs:
        print("outputs:", file=out)
        for name, value in run.outputs.items():
            text = value if isinstance(value, str) else json.dumps(value, default=str)
            print(f"  {name}: {text}", file=out)
    return EXIT_OK


async def _prune(store: RunStore, args: argparse.Namespace, out: TextIO) -> int:
    count = await store.prune(time.time() - args.older_than)
    print(f"deleted {count} run(s)", file=out)
    return EXIT_OK


async def _stats(store: RunStore, args: argparse.Namespace, out: TextIO) -> int:
    from engine.store.stats import summarize

    since = time.time() - args.since
    stats = summarize(await store.attempts_since(since, args.workflow), since)
    if args.json:
        out.write(json.dumps(stats.to_dict(), indent=2) + "\n")
        return EXIT_OK
    _print_stats(stats, out)
    return EXIT_OK


async def _clear_cache(store: RunStore, args: argparse.Namespace, out: TextIO) -> int:
    print(f"deleted {await store.cache_clear()} cached answer(s)", file=out)
    return EXIT_OK


def _print_stats(stats: Stats, out: TextIO) -> None:
    print(f"model calls since {_when(stats.since)}", file=out)
    for title, groups in (("MODEL", stats.by_model), ("WORKFLOW", stats.by_workflow)):
        print(f"\n{title:<20} {'CALLS':>6} {'FAILED':>6} {'RETRY':>6} {'CACHED':>6} {'TOKENS IN':>10} "
              f"{'OUT':>8} {'COST':>10} {'P50':>7} {'P95':>7} {'P99':>7}", file=out)
        for name, group in [*groups.items(), ("(all)", stats.total)]:
            print(_stats_row(name, group), file=out)
    failures = stats.total.failures
    if failures:
        print("\nfailures: " + ", ".join(f"{kind} {count}" for kind, count in sorted(failures.items())), file=out)


def _stats_row(name: str, group: CallStats) -> str:
    def seconds(value: float | None) -> str:
        return f"{value:.2f}s" if value is not None else "-"

    cost = "$" + format(group.cost_usd, ".4f")
    return (f"{name[:20]:<20} {group.calls:>6} {sum(group.failures.values()):>6} {group.retries:>6} "
            f"{group.cached:>6} {group.input_tokens:>10} {group.output_tokens:>8} {cost:>10} "
            f"{seconds(group.latency_p50_s):>7} {seconds(group.latency_p95_s):>7} {seconds(group.latency_p99_s):>7}")


def _when(moment: float) -> str:
    return datetime.fromtimestamp(moment).strftime("%Y-%m-%d %H:%M:%S")


def _took(run: RunRecord) -> str:
    return f"{run.ended_at - run.started_at:.1f}s" if run.ended_at is not None else "-"


def _run_json(run: RunRecord) -> dict[str, Any]:
    from dataclasses import asdict

    data = asdict(run)
    data.pop("document")  # the workflow itself: `runs show --json` has it
    return data


def _stored_json(stored: StoredRun) -> dict[str, Any]:
    from dataclasses import asdict

    return asdict(stored)
