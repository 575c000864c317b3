"""Runs untrusted templates and workflow documents in a child process with hard limits.

An attack that gets past the sandbox must fail its test, not take the machine with it: the
child (``python -m tests.support.attack_runner``) caps its address space (RLIMIT_AS) and the
CPU time of each case (RLIMIT_CPU), and the parent kills it when a case gives no answer in
time. ``run_cases`` is the parent's side: it starts the child, sends the cases one JSON line
at a time, and starts a new child after one dies, so one crash costs one case.

A case is ``{"kind": "template" | "expression" | "workflow_text", "source": ..., "variables": ...}``.
Variables are JSON, plus two builders for values too large to send::

    {"$text": ["ab", 3]}              -> "ababab"
    {"$list": [<value>, 3]}           -> [v, v, v], three references to one value

The child answers each case with one JSON line: ``outcome`` is ``rendered`` (``length``)
or ``refused`` (``error_class``, ``message``), or ``error`` for any other exception; with
``seconds``, ``cpu_seconds`` and ``peak_rss_growth_kb``. The parent adds ``killed`` (the child
died or gave no answer: ``detail`` says how, ``stderr`` holds its stack if it was stuck).
"""

from __future__ import annotations

import faulthandler
import json
import os
import re
import resource
import select
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

# Measured on this repository's venv (Python 3.11.7, x86-64 Linux): VmPeak is 12.3 MiB at
# start, 39.1 MiB after importing the sandbox and the workflow loader, 40.1 MiB (41,028 kB)
# once a template has rendered and ruamel.yaml has parsed a document. The child may use the
# baseline + 256 MiB, no more; it reports its own baseline when ready, and refuses to start
# if that leaves less than HEADROOM_MIB for the cases.
BASELINE_VM_PEAK_KB = 41_028
ADDRESS_SPACE_LIMIT = BASELINE_VM_PEAK_KB * 1024 + 256 * 1024 * 1024  # 297 MiB
HEADROOM_MIB = 192
CASE_SECONDS = 2.0  # a case that takes longer fails its test
# A case still running after ANSWER_TIMEOUT has failed already: the parent has the child print its
# stack (faulthandler, on SIGUSR1) and kills it, so a failing case costs about 3 s and a restart.
# RLIMIT_CPU is the kernel's backstop, should the parent not: it kills the child after 3-4 s of CPU
# in one case (the limit counts whole seconds).
ANSWER_TIMEOUT = CASE_SECONDS + 1.0
CASE_CPU_SECONDS = 4
KINDS = frozenset({"template", "expression", "workflow_text"})
START_TIMEOUT = 30.0
ROOT = Path(__file__).resolve().parents[2]
MEMORY_ADDRESS = re.compile(r"0x[0-9a-fA-F]{6,}")
TRACEBACK = re.compile(r"Traceback \(most recent call last\)|^\s*File \"", re.M)


@dataclass(frozen=True)
class Case:
    """One attack: ``kind`` says which entry point gets ``source``."""

    kind: str
    source: str
    variables: Mapping[str, Any] = field(default_factory=dict)
    label: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"a case's kind is one of {sorted(KINDS)}, not {self.kind!r}")

    def line(self) -> str:
        return json.dumps({"kind": self.kind, "source": self.source, "variables": self.variables}) + "\n"

    def __str__(self) -> str:
        shown = self.source
        if len(shown) > 300:
            shown = f"{shown[:150]}…({len(shown)} chars)…{shown[-60:]}"
        return f"{self.label + ': ' if self.label else ''}{self.kind} {shown!r}"


@dataclass(frozen=True)
class Result:
    """What became of a case (see the module docstring for the fields)."""

    case: Case
    outcome: str  # rendered | refused | error | killed
    error_class: str | None = None
    error_classes: tuple[str, ...] = ()  # the refusal's class and its bases, most derived first
    message: str = ""
    length: int | None = None
    seconds: float = 0.0
    cpu_seconds: float | None = None  # unknown for `killed`
    peak_rss_growth_kb: int | None = None
    via: tuple[str, ...] = ()  # classes of the exceptions the refusal was raised from (its context chain)
    located: bool | None = None  # workflow_text refusals: every problem has a file:line
    address_in_output: bool = False
    value_type: str | None = None  # expression results
    detail: str = ""  # a traceback for `error`, how the child died for `killed`
    stderr: str = ""  # `killed`: what the child printed last, its stack if it was stuck

    def summary(self) -> str:
        if self.outcome == "killed":
            return f"killed after {self.seconds:.2f} s: {self.detail}"
        how = {
            "rendered": f"rendered {self.length} chars" if self.length is not None else f"gave a {self.value_type}",
            "refused": f"refused {self.error_class}: {self.message[:300]!r}",
            "error": f"raised {self.error_class}: {self.message[:300]!r}",
        }[self.outcome]
        via = f" (via {', '.join(self.via)})" if self.via else ""
        memory = f"{(self.peak_rss_growth_kb or 0) / 1024:.0f} MiB"
        return f"{how}{via} in {self.seconds:.2f} s, cpu {self.cpu_seconds or 0:.2f} s, peak RSS +{memory}"


def run_cases(cases: Sequence[Case]) -> list[Result]:
    """Run every case in a limited child process; a new child replaces one that dies."""
    results: list[Result] = []
    while len(results) < len(cases):
        with _child() as child:
            for case in cases[len(results):]:
                result = child.run(case)
                results.append(result)
                if result.outcome == "killed":
                    break
    return results


# --------------------------------------------------------------------------- the parent's side


class _Child:
    def __init__(self, process: subprocess.Popen[bytes], stderr: IO[bytes]) -> None:
        self.process = process
        self.stderr = stderr
        self.buffer = b""
        self.closed = False  # its stdout reached end of file: it is dying

    def run(self, case: Case) -> Result:
        started = time.monotonic()
        try:
            assert self.process.stdin is not None
            self.process.stdin.write(case.line().encode())
            self.process.stdin.flush()
        except BrokenPipeError:
            pass  # it died: read_line says how
        line = self.read_line(ANSWER_TIMEOUT)
        if line is None:
            death = self.death()
            return Result(case, "killed", seconds=time.monotonic() - started, detail=death, stderr=self.stderr_tail())
        answer = json.loads(line)
        answer["via"] = tuple(answer.get("via", ()))
        answer["error_classes"] = tuple(answer.get("error_classes", ()))
        return Result(case, **answer)

    def read_line(self, timeout: float) -> str | None:
        assert self.process.stdout is not None
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([self.process.stdout], [], [], remaining)[0]:
                return None
            chunk = os.read(self.process.stdout.fileno(), 1 << 20)
            if not chunk:
                self.closed = True
                return None
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line.decode()

    def death(self) -> str:
        try:
            self.process.wait(timeout=5 if self.closed else 0)
        except subprocess.TimeoutExpired:
            self.process.send_signal(signal.SIGUSR1)  # faulthandler prints where it is stuck
            time.sleep(0.2)
            self.process.kill()
            self.process.wait()
            return f"no answer within {ANSWER_TIMEOUT} s (killed by the parent)"
        code = self.process.returncode
        if code < 0:
            name = signal.Signals(-code).name
            why = {"SIGXCPU": f"over {CASE_CPU_SECONDS - 1}-{CASE_CPU_SECONDS} s of CPU in one case (RLIMIT_CPU)",
                   "SIGSEGV": "segmentation fault (C stack overflow?)"}.get(name, "")
            what = f"{name}{': ' + why if why else ''}"
        else:
            what = f"exit status {code}"
        return f"child died: {what}"

    def stderr_tail(self) -> str:
        """The end of what the child printed, less the runner's own frames in a stack."""
        self.stderr.seek(0)
        lines = self.stderr.read()[-4000:].decode(errors="replace").strip().splitlines()
        return "\n".join(line for line in lines if "attack_runner.py" not in line and "<frozen runpy>" not in line)


@contextmanager
def _child() -> Iterator[_Child]:
    with tempfile.TemporaryFile() as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "tests.support.attack_runner"], cwd=ROOT, stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=stderr, env={**os.environ, "PYTHONFAULTHANDLER": "1"},
        )
        child = _Child(process, stderr)
        try:
            ready = child.read_line(START_TIMEOUT)
            if ready is None:
                raise RuntimeError(f"the attack runner did not start: {child.death()}\n{child.stderr_tail()}")
            yield child
        finally:
            if process.poll() is None:
                process.kill()
            process.wait()
            for pipe in (process.stdin, process.stdout):
                if pipe is not None:
                    pipe.close()


# --------------------------------------------------------------------------- the child's side


def _limit_resources() -> None:
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE_LIMIT, ADDRESS_SPACE_LIMIT))


def _limit_cpu_for_one_case() -> None:
    used = resource.getrusage(resource.RUSAGE_SELF)
    soft = int(used.ru_utime + used.ru_stime) + CASE_CPU_SECONDS
    resource.setrlimit(resource.RLIMIT_CPU, (soft, resource.RLIM_INFINITY))


def _status_kb(key: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def _reset_peak_rss() -> bool:
    """Linux resets VmHWM (peak RSS) on ``5 > /proc/self/clear_refs``; if not allowed, ru_maxrss is used."""
    try:
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")
    except OSError:
        return False
    return True


def _build(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {"$text"}:
            unit, count = value["$text"]
            return unit * count
        if set(value) == {"$list"}:
            item, count = value["$list"]
            return [_build(item)] * count
        return {key: _build(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_build(item) for item in value]
    return value


class _Target:
    """The engine's entry points, imported once the limits are in place."""

    def __init__(self) -> None:
        from engine.dsl.loader import parse_workflow
        from engine.errors import TemplateError, WorkflowError
        from engine.templating.sandbox import RenderLimits, TemplateRenderer

        self._parse_workflow = parse_workflow
        self._renderer, self._limits = TemplateRenderer, RenderLimits
        self.refusal: dict[str, type[Exception]] = {
            "template": TemplateError, "expression": TemplateError, "workflow_text": WorkflowError,
        }

    def warm_up(self) -> None:
        self.run("template", "{% for i in range(3) %}{{ i ~ x }}{% endfor %}", {"x": "a"})
        self.run("expression", "a > 1", {"a": 2})
        for text in ("dsl: orchestrion/v1\nname: w\nstages: []\n", '{"dsl": 1}', "a: [1"):
            try:
                self.run("workflow_text", text, {})
            except self.refusal["workflow_text"]:
                pass

    def run(self, kind: str, source: str, variables: Mapping[str, Any]) -> Any:
        if kind == "workflow_text":
            return self._parse_workflow(source, name="attack.yaml")
        renderer = self._renderer(limits=self._limits())  # a new one for each case, its cache empty
        if kind == "expression":
            return renderer.evaluate(source, variables)
        return renderer.render(source, variables)


def _chain(error: BaseException) -> tuple[str, ...]:
    seen: list[str] = []
    cause = error.__cause__ or error.__context__
    while cause is not None and len(seen) < 10:
        seen.append(type(cause).__name__)
        cause = cause.__cause__ or cause.__context__
    return tuple(seen)


def _rendered(kind: str, value: Any) -> dict[str, Any]:
    if kind == "workflow_text":
        return {"length": None, "value_type": type(value).__name__}
    if isinstance(value, str):
        return {"length": len(value), "address_in_output": bool(MEMORY_ADDRESS.search(value)),
                "value_type": "str"}
    plain = isinstance(value, int | float | bool | list | tuple | dict | type(None))
    # A callable or other object has a repr that shows its memory address once stringified.
    shown = "" if plain else repr(value)[:200]
    length = len(value) if isinstance(value, list | tuple | dict) else None
    return {"length": length, "address_in_output": bool(MEMORY_ADDRESS.search(shown)),
            "value_type": type(value).__name__}


def _refused(kind: str, error: Exception) -> dict[str, Any]:
    answer: dict[str, Any] = {"outcome": "refused", "error_class": type(error).__name__,
                              "error_classes": [base.__name__ for base in type(error).__mro__],
                              "message": str(error)[:5000], "via": _chain(error)}
    if kind == "workflow_text":
        problems = getattr(error, "problems", ())
        answer["located"] = bool(problems) and all(
            problem.location is not None and problem.location.line is not None for problem in problems
        )
    return answer


def _unexpected(error: BaseException) -> dict[str, Any]:
    import traceback

    inner = error.__traceback__.tb_next if error.__traceback__ is not None else None  # from _Target.run down
    frames = traceback.format_exception(error.with_traceback(inner or error.__traceback__), limit=-8)
    return {"outcome": "error", "error_class": type(error).__name__, "message": str(error)[:2000],
            "via": _chain(error), "detail": "".join(frames)[-3000:]}


def _run_one(target: _Target, case: dict[str, Any], clear_refs: bool) -> dict[str, Any]:
    variables = _build(case.get("variables") or {})
    kind = case["kind"]
    baseline_kb = _status_kb("VmRSS") if clear_refs else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if clear_refs:
        _reset_peak_rss()
    _limit_cpu_for_one_case()
    cpu, wall = time.process_time(), time.perf_counter()
    try:
        value = target.run(kind, case["source"], variables)
    except target.refusal[kind] as error:
        answer = _refused(kind, error)
    except BaseException as error:  # anything else is what the tests look for
        answer = _unexpected(error)
    else:
        answer = {"outcome": "rendered", **_rendered(kind, value)}
        del value
    answer["seconds"] = time.perf_counter() - wall
    answer["cpu_seconds"] = time.process_time() - cpu
    peak_kb = _status_kb("VmHWM") if clear_refs else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    answer["peak_rss_growth_kb"] = max(peak_kb - baseline_kb, 0)
    return answer


def main() -> None:
    _limit_resources()
    faulthandler.register(signal.SIGUSR1, all_threads=False)
    protocol = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # stray prints, even from C, go to stderr: stdout carries the answers only
    import gc

    target = _Target()
    target.warm_up()
    gc.collect()
    gc.freeze()  # the imports are never garbage: collecting after each case then takes microseconds, not 50 ms
    baseline_kb = _status_kb("VmPeak")
    if ADDRESS_SPACE_LIMIT // 1024 - baseline_kb < HEADROOM_MIB * 1024:
        sys.exit(f"the runner's baseline VmPeak is {baseline_kb} kB: less than {HEADROOM_MIB} MiB are left "
                 f"under the {ADDRESS_SPACE_LIMIT // 1024} kB limit; measure again and raise BASELINE_VM_PEAK_KB")
    clear_refs = _reset_peak_rss()
    protocol.write(json.dumps({"ready": True, "vm_peak_kb": baseline_kb}) + "\n")
    protocol.flush()
    for line in sys.stdin:
        answer = _run_one(target, json.loads(line), clear_refs)
        gc.collect()  # frames kept alive by cycles would carry one case's memory into the next
        protocol.write(json.dumps(answer) + "\n")
        protocol.flush()


if __name__ == "__main__":
    main()
