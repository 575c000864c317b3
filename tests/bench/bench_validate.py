"""How long validating a 1,000-task workflow takes: parse, validate, compile.

Run: ``python -m tests.bench.bench_validate`` (not part of the test run; the
machines are shared and noisy, so it prints medians and min-max of several runs
and the share of each phase, and asserts nothing about time).
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from typing import Any

from jsonschema import Draft202012Validator

from engine import Catalog, compile_workflow, load_workflow, parse_workflow, workflow_json_schema
from engine.dsl.source import parse_document

STAGES, WIDTH, REPEATS = 10, 100, 7


def workflow_document(stages: int = STAGES, width: int = WIDTH) -> dict[str, Any]:
    """Alternating linear/inline stages; each task reads a task of the previous stage."""
    document: dict[str, Any] = {"dsl": "orchestrion/v1", "name": "big", "inputs": {"topic": {"type": "string"}},
                                "defaults": {"model": "fast_ai"}, "stages": []}
    for stage in range(stages):
        tasks = []
        for index in range(width):
            source = f"{{{{ t{stage - 1}_{index} }}}}" if stage else "{{ topic }}"
            tasks.append({"id": f"t{stage}_{index}", "prompt": f"Step {stage}.{index} using {source}",
                          "when": "topic != ''" if index % 10 == 0 else None})
            tasks[-1] = {key: value for key, value in tasks[-1].items() if value is not None}
        document["stages"].append({"type": "linear" if stage % 2 == 0 else "inline", "tasks": tasks})
    return document


def measure(function: Callable[[], object]) -> list[float]:
    samples = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        function()
        samples.append(time.perf_counter() - start)
    return samples


def report(label: str, samples: list[float], floor: float | None = None) -> None:
    median = statistics.median(samples)
    ratio = f"  {median / floor:5.1f}x jsonschema" if floor else ""
    print(f"{label:<38} median {median * 1000:7.1f} ms  (min {min(samples) * 1000:6.1f}, "
          f"max {max(samples) * 1000:6.1f}){ratio}")


def main() -> None:
    document = workflow_document()
    text = json.dumps(document, indent=1)
    catalog = Catalog.default()
    validator = Draft202012Validator(workflow_json_schema())
    data = parse_document(text).data
    floor = statistics.median(measure(lambda: validator.validate(data)))
    print(f"{STAGES * WIDTH} tasks, {len(text) // 1024} KiB of JSON, {REPEATS} runs each")
    report("jsonschema validation alone", measure(lambda: validator.validate(data)))
    report("parse JSON text", measure(lambda: parse_document(text)), floor)
    report("pydantic validation of a dict", measure(lambda: load_workflow(document)), floor)
    workflow = load_workflow(document)
    report("compile (cold reference cache)", measure(lambda: _cold_compile(workflow, catalog)), floor)
    report("compile (warm reference cache)", measure(lambda: compile_workflow(workflow, catalog)), floor)
    report("validate JSON text: parse+load+compile", measure(lambda: _cold_validate(text, catalog)), floor)
    yaml_text = _to_yaml(document)
    report(f"validate YAML text ({len(yaml_text) // 1024} KiB)", measure(lambda: _cold_validate(yaml_text, catalog)),
           floor)


def _cold_compile(workflow: Any, catalog: Catalog) -> None:
    from engine.templating.references import _references

    _references.cache_clear()
    compile_workflow(workflow, catalog)


def _cold_validate(text: str, catalog: Catalog) -> None:
    from engine.templating.references import _references

    _references.cache_clear()
    compile_workflow(parse_workflow(text), catalog)


def _to_yaml(document: dict[str, Any]) -> str:
    import io

    from ruamel.yaml import YAML

    stream = io.StringIO()
    YAML(typ="safe", pure=True).dump(document, stream)
    return stream.getvalue()


if __name__ == "__main__":
    main()
