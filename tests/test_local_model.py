"""The embedded local model (llama.cpp with Gemma 3 270M), for real: in process, and through
``python -m llama_cpp.server`` on 127.0.0.1 with the openai provider. The prompt formats' choice
and rendering are also checked on a stand-in for ``llama_cpp.Llama``, without the model."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import anyio
import jsonschema
import numpy
import pytest

from engine import Engine, ModelRequest
from engine.config import EngineConfig, HttpProviderConfig, LlamaCppProviderConfig, ModelConfig
from engine.errors import ModelError
from engine.model.client import Message, ModelResponse, TextDelta
from engine.providers.llama_cpp import (
    TRANSCRIPT,
    AnswerStream,
    LlamaCppProvider,
    Transcript,
    choose_format,
    default_model_path,
)
from engine.testing import capture_events

ROOT = Path(__file__).resolve().parent.parent

# The real model: loading it, or starting its server (120 s allowed), counts against the first test.
pytestmark = [pytest.mark.anyio, pytest.mark.timeout(180)]

CITY = {"type": "object", "required": ["city", "country"],
        "properties": {"city": {"type": "string"}, "country": {"type": "string"}}}


def one_task(**task: Any) -> dict[str, Any]:
    return {"dsl": "orchestrion/v1", "name": "local", "defaults": {"model": "fast_ai", "max_tokens": 24},
            "stages": [{"type": "inline", "tasks": [{"id": "a", **task}]}]}


@pytest.fixture(scope="module")
def local() -> LlamaCppProvider:
    return LlamaCppProvider("local", LlamaCppProviderConfig(kind="llama_cpp"))


async def test_engine_without_configuration_generates_with_the_local_model() -> None:
    engine = Engine()  # no configuration: every alias is the embedded model
    with capture_events(engine) as events:
        result = await engine.run(one_task(prompt="Name three colours."))
    task = result.tasks["a"]
    assert result.status == "succeeded" and task.output.strip()
    assert 0 < task.output_tokens <= 24 and task.input_tokens > 5
    deltas = "".join(event.text for event in events if event.type == "token_delta")
    assert deltas == task.output  # streamed piece by piece, from a worker thread


async def test_the_packaged_model_answers_a_question_without_echoing_the_prompt() -> None:
    engine = Engine()  # the default: prompt_format auto, which is completion for the packaged base model
    result = await engine.run(one_task(prompt="What is the capital of France?", temperature=0))
    answer = result.tasks["a"].output
    assert result.status == "succeeded" and "paris" in answer.lower()
    assert "Question" not in answer and "Answer" not in answer and "capital of France?" not in answer
    assert answer == answer.strip() and len(answer) < 60  # a short answer, not a ramble to max_tokens


async def test_hello_local_runs_and_answers_rather_than_echoes() -> None:
    result = await Engine().run(ROOT / "examples" / "hello_local.yaml")
    assert result.status == "succeeded", result.error
    poem, fact, card = (result.tasks[name].output for name in ("poem", "fact", "card"))
    for text, prompt in [(poem, "Write a two-line poem about"), (fact, "State one fact about")]:
        assert text.strip() and prompt.lower() not in text.lower()
        assert not any(scaffolding in text for scaffolding in ("Question:", "Answer:", "<start_of_turn>"))
    assert any(word in (poem + fact).lower() for word in ("ocean", "sea", "water", "wave"))  # on its topic
    assert isinstance(card["title"], str) and result.outputs["title"] == card["title"]  # the schema held


@pytest.mark.parametrize("prompt_format", ["completion", "chat"])
async def test_schema_constrained_output_always_parses(prompt_format: str) -> None:
    provider = LlamaCppProvider("local", LlamaCppProviderConfig(kind="llama_cpp",
                                                                prompt_format=prompt_format))  # type: ignore[arg-type]
    engine = Engine(models=provider)
    with capture_events(engine) as events:  # a listener: the answer streams, so the grammar must hold there too
        streamed = await engine.run(one_task(prompt="Give a city and its country.", max_tokens=48,
                                             output={"schema": CITY}))
    completed = await Engine(models=provider, stream_tokens=False).run(
        one_task(prompt="Give a city and its country.", max_tokens=48, output={"schema": CITY}))
    assert provider.prompt_format == prompt_format
    assert any(event.type == "token_delta" for event in events)
    for result in (streamed, completed):
        output = result.tasks["a"].output
        assert result.status == "succeeded" and result.tasks["a"].attempts == 1  # no repair was needed
        jsonschema.validate(output, CITY)
        assert output["city"].strip() and output["country"].strip()


async def test_streaming_in_completion_format_joins_to_the_answer(local: LlamaCppProvider) -> None:
    request = ModelRequest("fast_ai", (Message("system", "Answer in one word."),
                                       Message("user", "What colour is the sky on a clear day?")),
                           temperature=0, max_tokens=16)
    pieces = [piece async for piece in local.stream(request)]
    assert local.prompt_format == "completion"  # auto, for the packaged model: its GGUF has no chat template
    deltas, final = pieces[:-1], pieces[-1]
    assert deltas and all(isinstance(delta, TextDelta) and delta.text for delta in deltas)
    assert isinstance(final, ModelResponse) and final.finish_reason in ("stop", "length")
    assert "".join(delta.text for delta in deltas) == final.text == final.text.strip()
    assert "blue" in final.text.lower() and "Answer" not in final.text
    assert final.usage.input_tokens == await local.count_tokens(request) and final.usage.output_tokens > 0
    assert (await local.complete(request)).text == final.text  # the same answer either way


async def test_token_counts_are_exact(local: LlamaCppProvider) -> None:
    for messages in [(Message("user", "Say hi"),),
                     (Message("system", "Be brief."), Message("user", "Name a colour.")),
                     (Message("user", "a"), Message("assistant", "b"), Message("user", "c"))]:
        request = ModelRequest("fast_ai", messages, max_tokens=2)
        response = await local.complete(request)
        assert await local.count_tokens(request) == response.usage.input_tokens


async def test_calls_stay_off_the_event_loop(local: LlamaCppProvider) -> None:
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await anyio.sleep(0.01)
            ticks += 1

    async with anyio.create_task_group() as group:
        group.start_soon(ticker)
        await local.complete(ModelRequest("fast_ai", (Message("user", "Count to ten."),), max_tokens=48))
        group.cancel_scope.cancel()
    assert ticks > 3  # the loop kept running while the model generated


async def test_an_over_long_prompt_is_a_context_error_in_completion_format() -> None:
    provider = LlamaCppProvider("local", LlamaCppProviderConfig(kind="llama_cpp", n_ctx=256))
    request = ModelRequest("fast_ai", (Message("user", "word " * 400),), max_tokens=8)
    with pytest.raises(ModelError) as complete:
        await provider.complete(request)
    with pytest.raises(ModelError) as stream:
        _ = [piece async for piece in provider.stream(request)]
    assert complete.value.kind == stream.value.kind == "context_length"


# -- choosing and rendering the prompt format, on a stand-in for llama_cpp.Llama -----------------------

class FakeLlama:
    """What the provider uses of ``llama_cpp.Llama``: a GGUF's metadata, a tokenizer (one token per
    character), and the two completion calls, which record what they are given."""

    metadata: ClassVar[dict[str, str]] = {}

    def __init__(self, **settings: Any) -> None:
        self.settings = settings
        self.chat_format: str | None = settings.get("chat_format")
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.generated: list[str] = []  # what create_completion generated before it was stopped

    def token_bos(self) -> int:
        return 2

    def token_eos(self) -> int:
        return 1

    def detokenize(self, tokens: list[int], special: bool = False) -> bytes:
        return b"".join({1: b"<eos>", 2: b"<bos>"}.get(token, bytes([token])) for token in tokens)

    def tokenize(self, text: bytes, add_bos: bool = True, special: bool = False) -> list[int]:
        return ([2] if add_bos else []) + list(text)

    def create_completion(self, **arguments: Any) -> Iterator[dict[str, Any]]:
        self.calls.append(("completion", arguments))
        assert arguments["stream"]  # stop sequences are applied as the pieces come
        for piece in ["\n\n", " Answer", ":", " Paris", "\n\n", "Question", ":", " Why?"]:
            self.generated.append(piece)
            yield {"choices": [{"text": piece, "finish_reason": None}]}
        yield {"choices": [{"text": "", "finish_reason": "length"}]}

    def create_chat_completion(self, **arguments: Any) -> dict[str, Any]:
        self.calls.append(("chat", arguments))
        return {"choices": [{"message": {"content": "Paris"}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 7, "completion_tokens": 1}}


class TemplatedLlama(FakeLlama):
    """An instruction-tuned GGUF, whose chat template, like Gemma 2's, has no system role."""

    metadata: ClassVar[dict[str, str]] = {"tokenizer.chat_template": (
        "{% for m in messages %}{% if m.role == 'system' %}{{ raise_exception('System role not supported') }}"
        "{% endif %}<{{ m.role }}>{{ m.content }}\n{% endfor %}<model>")}


def fake_provider(monkeypatch: pytest.MonkeyPatch, llama: type[FakeLlama], prompt_format: str) -> LlamaCppProvider:
    import llama_cpp

    monkeypatch.setattr(llama_cpp, "Llama", llama)
    config = LlamaCppProviderConfig(kind="llama_cpp", model_path="model.gguf",
                                    prompt_format=prompt_format)  # type: ignore[arg-type]
    return LlamaCppProvider("local", config)


CAPITAL = ModelRequest("fast_ai", (Message("system", "Be brief."), Message("user", "What is the capital of France?")),
                       max_tokens=8)


def test_the_format_follows_the_gguf_unless_configured() -> None:
    template = {"tokenizer.chat_template": "{{ messages }}"}
    assert choose_format("auto", {}) == "completion"  # a pretrained base model, like the packaged one
    assert choose_format("auto", template) == "chat"
    assert choose_format("chat", {}) == "chat" and choose_format("completion", template) == "completion"
    assert LlamaCppProviderConfig(kind="llama_cpp").prompt_format == "auto"
    with pytest.raises(ValueError, match="prompt_format"):
        LlamaCppProviderConfig(kind="llama_cpp", prompt_format="instruct")  # type: ignore[arg-type]


def test_the_transcript_puts_system_text_first_and_ends_with_the_answer_label() -> None:
    messages = (Message("system", "Be brief."), Message("user", "Name a colour."), Message("assistant", "Red"),
                Message("user", "Another one?"))
    assert TRANSCRIPT.render(messages) == ("Be brief.\n\nQuestion: Name a colour.\nAnswer: Red\n\n"
                                           "Question: Another one?\nAnswer:")
    assert TRANSCRIPT.render((Message("user", "What is 2+2?"),)) == "Question: What is 2+2?\nAnswer:"
    shot = Transcript("Q:", "A:", examples=(("Sky?", "Blue."),))
    assert shot.render((Message("user", "Grass?"),)) == "Q: Sky?\nA: Blue.\n\nQ: Grass?\nA:"


def test_the_answer_drops_the_scaffolding_however_it_streams() -> None:
    cases = [([" Paris", "\n"], "Paris"), ([" Ans", "wer:", " The", " Sun", " "], "The Sun"),
             (["\n\n", "Waves", " roll", "\n", "and", " fall", "\n\n", "Then"], "Waves roll\nand fall"),
             ([" 10", "\n", "Ques", "tion", ":", " Count"], "10"), ([" 10", "\nQues"], "10"),
             (["\n", "Question", ": Why?"], ""), (["\n", "Question"], ""), ([" Q", "uebec"], "Quebec"),
             (["  "], ""), ([" A"], "A")]
    for pieces, answer in cases:
        stream = AnswerStream(TRANSCRIPT.answer, TRANSCRIPT.stop)
        out = [stream.feed(piece) for piece in pieces] + [stream.finish()]
        assert "".join(out) == stream.text == answer == TRANSCRIPT.answer_of("".join(pieces)), pieces
    assert AnswerStream("Answer:").feed(' {"a": 1}\n\n') == '{"a": 1}'  # no stops: only whitespace goes


def test_a_base_model_is_prompted_with_the_transcript(monkeypatch: pytest.MonkeyPatch) -> None:
    provider = fake_provider(monkeypatch, FakeLlama, "auto")
    response = provider._complete_blocking(CAPITAL)
    llama = provider._llama
    (kind, arguments), = llama.calls
    assert kind == "completion" and provider.prompt_format == "completion"
    sent = bytes(arguments["prompt"][1:]).decode()  # after the BOS
    assert sent == "Be brief.\n\nQuestion: What is the capital of France?\nAnswer:"
    assert "stop" not in arguments and "grammar" not in arguments
    first, = arguments["logits_processor"]  # the answer may not begin with the end of text or the next question
    prompt, labels = arguments["prompt"], [1, ord(" "), ord("A"), ord("Q")]  # EOS, and how labels begin
    for generated, banned in [("", True), ("\n\n", True), (" Answer:", True), (" Paris", False), ("\nQ", False)]:
        scores = first(prompt + list(generated.encode()), numpy.zeros(128))
        assert [token for token in range(128) if scores[token] < 0] == (labels if banned else [])
    # the blank line before the answer does not end it, the one after does, and the generation stops there
    assert response.text == "Paris" and response.finish_reason == "stop" and "Question" not in llama.generated
    assert response.usage.input_tokens == provider._count_tokens(CAPITAL) == len(arguments["prompt"])
    schema = ModelRequest("fast_ai", CAPITAL.messages, output_schema=CITY)
    llama.generated.clear()
    response = provider._complete_blocking(schema)
    arguments = llama.calls[-1][1]
    assert "city" in arguments["grammar"]._grammar  # the schema's grammar; and no stop: the grammar ends it
    assert response.text == "Paris\n\nQuestion: Why?" and response.finish_reason == "length"


def test_configured_chat_keeps_gemmas_turns(monkeypatch: pytest.MonkeyPatch) -> None:
    provider = fake_provider(monkeypatch, FakeLlama, "chat")
    provider._complete_blocking(CAPITAL)
    llama = provider._llama
    (kind, arguments), = llama.calls
    assert kind == "chat" and llama.chat_format == "gemma"  # not llama-cpp-python's llama-2 fallback
    assert arguments["messages"] == [{"role": "user", "content": "Be brief.\n\nWhat is the capital of France?"}]
    gemma = "<start_of_turn>user\nBe brief.\n\nWhat is the capital of France?<end_of_turn>\n<start_of_turn>model\n"
    assert provider._count_tokens(CAPITAL) == 1 + len(gemma.encode())


def test_a_gguf_with_a_chat_template_is_prompted_with_it(monkeypatch: pytest.MonkeyPatch) -> None:
    provider = fake_provider(monkeypatch, TemplatedLlama, "auto")
    provider._complete_blocking(CAPITAL)
    llama = provider._llama
    (kind, arguments), = llama.calls
    assert kind == "chat" and llama.chat_format == "chat_template.default"
    # the template refuses a system turn, so its text goes into the first user turn
    assert arguments["messages"] == [{"role": "user", "content": "Be brief.\n\nWhat is the capital of France?"}]
    rendered = "<user>Be brief.\n\nWhat is the capital of France?\n<model>"
    assert provider._count_tokens(CAPITAL) == len(rendered.encode())  # the template adds its own BOS, if any
    plain = ModelRequest("fast_ai", (Message("user", "Hi"),))
    assert provider._chat_prompt(plain)[1] == "<user>Hi\n<model>"


# -- the same model through llama.cpp's OpenAI-compatible server ------------------------------------

@pytest.fixture(scope="module")
def llama_server() -> Iterator[str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", default_model_path(), "--host", "127.0.0.1",
         "--port", str(port), "--chat_format", "gemma", "--n_ctx", "2048"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and process.poll() is None:
            with socket.socket() as client:
                if client.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.2)
        assert process.poll() is None, "llama_cpp.server exited"
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
async def test_the_openai_provider_against_the_llama_cpp_server(llama_server: str, stream: bool) -> None:
    server = HttpProviderConfig(kind="openai", base_url=llama_server, structured_output="json_object")
    config = EngineConfig(providers={"llama": server},
                          models={"fast_ai": ModelConfig(provider="llama", model="gemma")})
    engine = Engine(config, stream_tokens=stream)
    try:
        with capture_events(engine) as events:
            text = await engine.run(one_task(prompt="Name three colours."))
            structured = await engine.run(one_task(prompt="Give a city and its country.", max_tokens=48,
                                                   output={"schema": CITY}))
    finally:
        await engine.aclose()
    assert text.status == "succeeded" and text.tasks["a"].output.strip()
    assert text.tasks["a"].input_tokens > 5 and text.tasks["a"].output_tokens > 0
    if not stream:  # exact usage from the server; its streams carry none, so the engine estimates high
        assert text.tasks["a"].output_tokens <= 24
    assert structured.status == "succeeded", structured.error
    assert set(structured.tasks["a"].output) >= {"city", "country"}
    assert bool([e for e in events if e.type == "token_delta"]) == stream
