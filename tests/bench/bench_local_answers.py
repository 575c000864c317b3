"""How often the embedded model answers simple factual questions right, per prompt format.

Run: ``python -m tests.bench.bench_local_answers [--answers] [--only NAME ...]`` (needs
``orchestrion[local]``). Not part of the test run. Each question of ``data/questions.json`` goes
through ``engine.run`` on a one-task workflow (greedy decoding: temperature 0, at most 32 tokens), on
the packaged Gemma 3 270M base model, once per format:

- ``default: Engine()``: no configuration (``prompt_format: auto``, which is ``completion`` for the
  packaged model, since its GGUF has no chat template);
- ``chat``: ``prompt_format: chat`` (llama-cpp-python's ``gemma`` chat turns), configured;
- ``completion``: ``prompt_format: completion`` with the shipped transcript (``Question:/Answer:``,
  stops at the next ``Question:`` or a blank line), configured;
- the completion variants tried against it, on a provider built with another ``Transcript``:
  ``Q:/A:`` labels, one or three examples before the question, instruction-style headers, and the
  shipped labels with a stop at the first newline.

An answer is right when one of the question's expected words occurs in it (case-insensitive, on word
boundaries); no question contains one of its own expected words, so an echo of the question never
counts. Prints the accuracy of each format and the median (min-max) seconds per question; each
format's first question is run once before, so loading the model is not counted. ``--answers`` prints
every answer. About 1 minute on 2 quiet cores, a third of it for ``chat``, whose answers run to the
token limit (llama.cpp uses every core: when other work shares them, it can take ten times longer).

Last measured (2 quiet cores): default and completion 28/42 (67 %), median 0.08 s; chat 0/42 (0 %),
0.38 s; Q:/A: 27/42; one-shot 23/42; three-shot 27/42; ### headers 22/42; stop at newline 28/42.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio

from engine import Engine
from engine.config import EngineConfig, LlamaCppProviderConfig
from engine.providers.llama_cpp import TRANSCRIPT, LlamaCppProvider, Transcript

QUESTIONS = Path(__file__).parent / "data" / "questions.json"
MAX_TOKENS = 32


@dataclass(frozen=True)
class Format:
    name: str
    prompt_format: str  # the provider's setting
    transcript: Transcript | None = None  # a completion variant; None: the shipped one, from the configuration


FORMATS = [
    Format("default: Engine()", "auto"),
    Format("chat", "chat"),
    Format("completion", "completion"),
    Format("completion Q:/A:", "completion", Transcript("Q:", "A:", stop=("\nQ:", "\n\n"))),
    Format("completion one-shot", "completion",
           Transcript(examples=(("How many wheels does a bicycle have?", "Two."),))),
    Format("completion three-shot", "completion",
           Transcript(examples=(("How many wheels does a bicycle have?", "Two."),
                                ("What colour is coal?", "Black."),
                                ("Who discovered gravity?", "Isaac Newton.")))),
    Format("completion ### Instruction/Response", "completion",
           Transcript("### Instruction:\n", "### Response:\n", stop=("\n###", "\n\n"))),
    Format("completion stop at newline", "completion", Transcript(stop=("\n",))),
]


def workflow(question: str) -> dict[str, Any]:
    return {"dsl": "orchestrion/v1", "name": "bench", "defaults": {"model": "fast_ai", "temperature": 0,
                                                                  "max_tokens": MAX_TOKENS},
            "stages": [{"type": "inline", "tasks": [{"id": "a", "prompt": question}]}]}


def right(answer: str, expected: list[str]) -> bool:
    return any(re.search(rf"\b{re.escape(word)}\b", answer, re.IGNORECASE) for word in expected)


def engine_for(case: Format) -> Engine:
    if case.prompt_format == "auto":  # no configuration at all: what a new user gets
        return Engine()
    config = LlamaCppProviderConfig(kind="llama_cpp", prompt_format=case.prompt_format)  # type: ignore[arg-type]
    if case.transcript is None:  # the configured path: what a user's orchestrion.yaml gets
        return Engine(EngineConfig(providers={"local": config}, default_provider="local"))
    return Engine(models=LlamaCppProvider("local", config, case.transcript))


def load_questions() -> list[dict[str, Any]]:
    questions: list[dict[str, Any]] = json.loads(QUESTIONS.read_text())
    for item in questions:  # an echo of the question must never count as an answer
        assert not right(item["question"], item["expected"]), f"gives its answer away: {item['question']}"
    return questions


async def measure(case: Format, questions: list[dict[str, Any]], show: bool) -> tuple[int, list[float]]:
    engine = engine_for(case)
    await engine.run(workflow(questions[0]["question"]))  # loads the model
    correct, times = 0, []
    for item in questions:
        started = time.perf_counter()
        result = await engine.run(workflow(item["question"]))
        times.append(time.perf_counter() - started)
        assert result.status == "succeeded", result.error
        answer = str(result.tasks["a"].output)
        ok = right(answer, item["expected"])
        correct += ok
        if show:
            print(f"    {'ok ' if ok else '-- '} {item['question']:<62} {answer!r}")
    await engine.aclose()
    return correct, times


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--answers", action="store_true", help="print every answer")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="only these formats (by name)")
    arguments = parser.parse_args()
    questions = load_questions()
    cases = [case for case in FORMATS if not arguments.only or case.name in arguments.only]
    print(f"{len(questions)} questions, greedy, max_tokens {MAX_TOKENS}; shipped transcript: {TRANSCRIPT}")
    rows = []
    for case in cases:
        if arguments.answers:
            print(f"== {case.name}")
        correct, times = await measure(case, questions, arguments.answers)
        rows.append((case.name, correct, times))
    print(f"{'format':<38} {'right':>12}   seconds per question")
    for name, correct, times in rows:
        print(f"{name:<38} {correct:>3}/{len(questions)} ({correct / len(questions):4.0%})   median "
              f"{statistics.median(times):.2f} (min {min(times):.2f}, max {max(times):.2f})")


if __name__ == "__main__":
    anyio.run(main)
