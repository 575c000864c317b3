"""The Anthropic and Gemini providers against real HTTP servers on 127.0.0.1 speaking each wire format.

Each test scripts the server's replies (status, headers, a JSON body or a
server-sent event stream) and asserts both what the provider sent and what
it made of the answer. Errors go through engine/providers/http.py.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from contextlib import aclosing
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from engine import Engine, Message, ModelError, ModelRequest, ModelResponse, TextDelta, Usage
from engine.providers.anthropic import AnthropicProvider
from engine.providers.gemini import GeminiProvider
from engine.providers.settings import HttpProviderConfig

KEY = "sk-test-secret"
SCHEMA = {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}


@dataclass
class Reply:
    status: int = 200
    body: Any = None  # JSON
    headers: dict[str, str] = field(default_factory=dict)
    sse: list[str] | None = None  # the lines of an event stream


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]  # lower-cased names
    body: Any


class WireServer:
    """A standard-library HTTP server that records requests and answers from a script."""

    def __init__(self) -> None:
        self.requests: list[Seen] = []
        self.script: list[Reply] | Callable[[Seen], Reply] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length)
                seen = Seen("POST", self.path, {k.lower(): v for k, v in self.headers.items()},
                            json.loads(raw) if raw else None)
                server.requests.append(seen)
                reply = server.script(seen) if callable(server.script) else server.script.pop(0)
                if reply.sse is not None:
                    payload = ("\n".join(reply.sse) + "\n\n").encode()
                    content_type = "text/event-stream"
                else:
                    payload = json.dumps(reply.body).encode()
                    content_type = "application/json"
                self.send_response(reply.status)
                self.send_header("content-type", content_type)
                self.send_header("content-length", str(len(payload)))
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.01,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


@pytest.fixture
def server() -> Iterator[WireServer]:
    wire = WireServer()
    try:
        yield wire
    finally:
        wire.close()


def anthropic(server: WireServer, models: dict[str, str] | None = None) -> AnthropicProvider:
    config = HttpProviderConfig(kind="anthropic", base_url=server.url, api_key=KEY)
    return AnthropicProvider("claude", config, models if models is not None else {"fast_ai": "claude-haiku-4-5"})


def gemini(server: WireServer, models: dict[str, str] | None = None) -> GeminiProvider:
    config = HttpProviderConfig(kind="gemini", base_url=server.url, api_key=KEY)
    return GeminiProvider("google", config, models if models is not None else {"fast_ai": "gemini-2.5-flash"})


def request(*, temperature: float | None = 0.2, max_tokens: int | None = 300,
            schema: dict[str, Any] | None = None) -> ModelRequest:
    messages = (Message("system", "Be brief."), Message("system", "Answer in English."), Message("user", "Hi?"),
                Message("assistant", "Hello."), Message("user", "Say hello again."))
    return ModelRequest("fast_ai", messages, temperature, max_tokens, schema)


def sse(events: list[dict[str, Any]], *, named: bool = True) -> list[str]:
    """Event-stream lines: ``event: <type>`` (Anthropic names its events), ``data: <json>``, a blank line."""
    lines: list[str] = []
    for event in events:
        if named:
            lines.append(f"event: {event['type']}")
        lines += [f"data: {json.dumps(event)}", ""]
    return lines


async def collect(provider: AnthropicProvider | GeminiProvider, req: ModelRequest
                  ) -> tuple[list[str], list[ModelResponse]]:
    deltas: list[str] = []
    finals: list[ModelResponse] = []
    async for piece in provider.stream(req):
        if isinstance(piece, TextDelta):
            assert not finals, "a delta after the final response"
            deltas.append(piece.text)
        else:
            finals.append(piece)
    return deltas, finals


# ---------------------------------------------------------------------------------------------- Anthropic

ANTHROPIC_MESSAGE = {
    "id": "msg_01XFDUDYJgAACzvnptvVoYEL", "type": "message", "role": "assistant", "model": "claude-haiku-4-5-20251001",
    "content": [{"type": "thinking", "thinking": "The user greets.", "signature": "abc"},
                {"type": "text", "text": "Hello"}, {"type": "text", "text": " again!"}],
    "stop_reason": "end_turn", "stop_sequence": None,
    "usage": {"input_tokens": 12, "output_tokens": 6, "cache_read_input_tokens": 100,
              "cache_creation_input_tokens": 20},
}


def anthropic_stream(texts: list[str], *, error: dict[str, Any] | None = None) -> list[str]:
    events: list[dict[str, Any]] = [
        {"type": "message_start", "message": {
            "id": "msg_1", "type": "message", "role": "assistant", "content": [], "model": "claude-haiku-4-5-20251001",
            "stop_reason": None, "stop_sequence": None,
            "usage": {"input_tokens": 25, "output_tokens": 1, "cache_read_input_tokens": 10,
                      "cache_creation_input_tokens": 0}}},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "ping"},
    ]
    for index, text in enumerate(texts):
        events.append({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}})
        if error is not None and index == 0:
            events.append({"type": "error", "error": error})
    events += [
        {"type": "content_block_stop", "index": 0},
        {"type": "message_delta", "delta": {"stop_reason": "max_tokens", "stop_sequence": None},
         "usage": {"output_tokens": 15}},
        {"type": "message_stop"},
    ]
    return sse(events)


@pytest.mark.anyio
async def test_anthropic_completion(server: WireServer) -> None:
    server.script = [Reply(body=ANTHROPIC_MESSAGE)]
    async with aclosing(anthropic(server)) as provider:
        response = await provider.complete(request())
    assert response == ModelResponse("Hello again!", Usage(132, 6, 100), "claude-haiku-4-5-20251001", "end_turn")
    [seen] = server.requests
    assert seen.path == "/v1/messages"
    assert seen.headers["x-api-key"] == KEY
    assert seen.headers["anthropic-version"] == "2023-06-01"
    assert "authorization" not in seen.headers
    assert seen.body == {
        "model": "claude-haiku-4-5", "max_tokens": 300, "temperature": 0.2,
        "system": "Be brief.\n\nAnswer in English.",
        "messages": [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."},
                     {"role": "user", "content": "Say hello again."}],
    }


@pytest.mark.anyio
async def test_anthropic_defaults_max_tokens_and_leaves_out_what_is_unset(server: WireServer) -> None:
    server.script = [Reply(body=ANTHROPIC_MESSAGE)]
    async with aclosing(anthropic(server, models={})) as provider:
        await provider.complete(ModelRequest("claude-sonnet-4-5", (Message("user", "hi"),)))
    body = server.requests[0].body
    assert body == {"model": "claude-sonnet-4-5", "max_tokens": 4096, "messages": [{"role": "user", "content": "hi"}]}


@pytest.mark.anyio
async def test_anthropic_structured_output_keeps_the_schema_in_the_system_message(server: WireServer) -> None:
    server.script = [Reply(body={**ANTHROPIC_MESSAGE, "content": [{"type": "text", "text": '{"answer": "hi"}'}]})]
    async with aclosing(anthropic(server)) as provider:
        response = await provider.complete(request(schema=SCHEMA))
    assert json.loads(response.text) == {"answer": "hi"}
    body = server.requests[0].body
    assert body["system"] == "Be brief.\n\nAnswer in English."
    assert not {"response_format", "output_format", "tools"} & body.keys()


@pytest.mark.anyio
async def test_anthropic_stream(server: WireServer) -> None:
    server.script = [Reply(sse=anthropic_stream(["Hel", "lo", " there"]))]
    async with aclosing(anthropic(server)) as provider:
        deltas, finals = await collect(provider, request())
    assert deltas == ["Hel", "lo", " there"]
    assert finals == [ModelResponse("Hello there", Usage(35, 15, 10), "claude-haiku-4-5-20251001", "max_tokens")]
    body = server.requests[0].body
    assert body["stream"] is True
    assert body["system"] == "Be brief.\n\nAnswer in English."


@pytest.mark.anyio
@pytest.mark.parametrize(("error_type", "kind"), [
    ("overloaded_error", "rate_limit"), ("rate_limit_error", "rate_limit"), ("api_error", "server_error"),
    ("invalid_request_error", "bad_request"),
])
async def test_anthropic_error_event_mid_stream(server: WireServer, error_type: str, kind: str) -> None:
    server.script = [Reply(sse=anthropic_stream(["Hel", "lo"], error={"type": error_type, "message": "Overloaded"}))]
    deltas: list[str] = []
    async with aclosing(anthropic(server)) as provider:
        with pytest.raises(ModelError) as caught:
            async for piece in provider.stream(request()):
                assert isinstance(piece, TextDelta), "no final response after an error event"
                deltas.append(piece.text)
    assert deltas == ["Hel"]
    assert caught.value.kind == kind
    assert error_type in str(caught.value) and "Overloaded" in str(caught.value)
    assert KEY not in str(caught.value)


@pytest.mark.anyio
async def test_anthropic_end_to_end(server: WireServer) -> None:
    def answer(seen: Seen) -> Reply:
        if seen.body.get("stream"):
            return Reply(sse=anthropic_stream(["Hi", " from Claude"]))
        return Reply(body={**ANTHROPIC_MESSAGE, "content": [{"type": "text", "text": "Hi from Claude"}]})

    server.script = answer
    async with aclosing(anthropic(server)) as provider:
        result = await Engine(models={"fast_ai": provider}).run(WORKFLOW)
    assert result.status == "succeeded", result
    assert result.outputs["a"] == "Hi from Claude"
    assert result.tasks["a"].input_tokens in {132, 35}  # whether the engine completes or streams
    [seen] = server.requests
    assert seen.body["messages"][-1] == {"role": "user", "content": "hi"}


# ---------------------------------------------------------------------------------------------- Gemini

GEMINI_RESPONSE = {
    "candidates": [{
        "content": {"parts": [{"text": "Thinking about it", "thought": True}, {"text": "Hello"}, {"text": " again!"}],
                    "role": "model"},
        "finishReason": "STOP", "index": 0,
    }],
    "usageMetadata": {"promptTokenCount": 40, "candidatesTokenCount": 5, "thoughtsTokenCount": 3,
                      "cachedContentTokenCount": 32, "totalTokenCount": 48},
    "modelVersion": "gemini-2.5-flash-001", "responseId": "abc",
}


def gemini_stream(texts: list[str]) -> list[str]:
    chunks: list[dict[str, Any]] = []
    for index, text in enumerate(texts):
        chunk: dict[str, Any] = {
            "candidates": [{"content": {"parts": [{"text": text}], "role": "model"}, "index": 0}],
            "usageMetadata": {"promptTokenCount": 9, "totalTokenCount": 9}, "modelVersion": "gemini-2.5-flash-001",
        }
        if index == len(texts) - 1:
            chunk["candidates"][0]["finishReason"] = "MAX_TOKENS"
            chunk["usageMetadata"] = {"promptTokenCount": 9, "candidatesTokenCount": 4, "totalTokenCount": 13}
        chunks.append(chunk)
    return sse(chunks, named=False)


@pytest.mark.anyio
async def test_gemini_completion(server: WireServer) -> None:
    server.script = [Reply(body=GEMINI_RESPONSE)]
    async with aclosing(gemini(server)) as provider:
        response = await provider.complete(request())
    assert response == ModelResponse("Hello again!", Usage(40, 8, 32), "gemini-2.5-flash-001", "STOP")
    [seen] = server.requests
    assert seen.path == "/v1beta/models/gemini-2.5-flash:generateContent"
    assert seen.headers["x-goog-api-key"] == KEY
    assert "authorization" not in seen.headers and "key=" not in seen.path
    assert seen.body == {
        "contents": [{"role": "user", "parts": [{"text": "Hi?"}]}, {"role": "model", "parts": [{"text": "Hello."}]},
                     {"role": "user", "parts": [{"text": "Say hello again."}]}],
        "systemInstruction": {"parts": [{"text": "Be brief.\n\nAnswer in English."}]},
        "generationConfig": {"temperature": 0.2, "maxOutputTokens": 300},
    }


@pytest.mark.anyio
async def test_gemini_leaves_out_what_is_unset(server: WireServer) -> None:
    server.script = [Reply(body=GEMINI_RESPONSE)]
    async with aclosing(gemini(server, models={})) as provider:
        await provider.complete(ModelRequest("models/gemini-2.5-pro", (Message("user", "hi"),)))
    [seen] = server.requests
    assert seen.path == "/v1beta/models/gemini-2.5-pro:generateContent"
    assert seen.body == {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}


@pytest.mark.anyio
async def test_gemini_structured_output(server: WireServer) -> None:
    answer = {**GEMINI_RESPONSE, "candidates": [{"content": {"parts": [{"text": '{"answer": "hi"}'}]},
                                                 "finishReason": "STOP"}]}
    server.script = [Reply(body=answer)]
    async with aclosing(gemini(server)) as provider:
        response = await provider.complete(request(schema=SCHEMA, temperature=None, max_tokens=None))
    assert json.loads(response.text) == {"answer": "hi"}
    assert server.requests[0].body["generationConfig"] == {"responseMimeType": "application/json",
                                                           "responseJsonSchema": SCHEMA}


@pytest.mark.anyio
async def test_gemini_stream(server: WireServer) -> None:
    server.script = [Reply(sse=gemini_stream(["Hel", "lo", " there"]))]
    async with aclosing(gemini(server)) as provider:
        deltas, finals = await collect(provider, request())
    assert deltas == ["Hel", "lo", " there"]
    assert finals == [ModelResponse("Hello there", Usage(9, 4, 0), "gemini-2.5-flash-001", "MAX_TOKENS")]
    [seen] = server.requests
    assert seen.path == "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
    assert seen.headers["x-goog-api-key"] == KEY
    assert seen.body["generationConfig"] == {"temperature": 0.2, "maxOutputTokens": 300}


BLOCKED = {"promptFeedback": {"blockReason": "PROHIBITED_CONTENT"},
           "usageMetadata": {"promptTokenCount": 7, "totalTokenCount": 7}, "modelVersion": "gemini-2.5-flash-001"}


@pytest.mark.anyio
async def test_gemini_blocked_prompt(server: WireServer) -> None:
    server.script = [Reply(body=BLOCKED)]
    async with aclosing(gemini(server)) as provider:
        with pytest.raises(ModelError) as caught:
            await provider.complete(request())
    assert caught.value.kind == "bad_request"
    assert "PROHIBITED_CONTENT" in str(caught.value) and KEY not in str(caught.value)


@pytest.mark.anyio
async def test_gemini_blocked_prompt_streamed(server: WireServer) -> None:
    server.script = [Reply(sse=sse([BLOCKED], named=False))]
    async with aclosing(gemini(server)) as provider:
        with pytest.raises(ModelError) as caught:
            await collect(provider, request())
    assert caught.value.kind == "bad_request"
    assert "PROHIBITED_CONTENT" in str(caught.value)


@pytest.mark.anyio
async def test_gemini_error_object_mid_stream(server: WireServer) -> None:
    error = {"error": {"code": 503, "message": "The model is overloaded.", "status": "UNAVAILABLE"}}
    server.script = [Reply(sse=[*gemini_stream(["Hel"])[:-2], "", f"data: {json.dumps(error)}", ""])]
    async with aclosing(gemini(server)) as provider:
        with pytest.raises(ModelError) as caught:
            await collect(provider, request())
    assert caught.value.kind == "server_error"
    assert "overloaded" in str(caught.value)


@pytest.mark.anyio
async def test_gemini_end_to_end(server: WireServer) -> None:
    def answer(seen: Seen) -> Reply:
        if "streamGenerateContent" in seen.path:
            return Reply(sse=gemini_stream(["Hi", " from Gemini"]))
        return Reply(body={**GEMINI_RESPONSE, "candidates": [{"content": {"parts": [{"text": "Hi from Gemini"}]},
                                                             "finishReason": "STOP"}]})

    server.script = answer
    async with aclosing(gemini(server)) as provider:
        result = await Engine(models={"fast_ai": provider}).run(WORKFLOW)
    assert result.status == "succeeded", result
    assert result.outputs["a"] == "Hi from Gemini"
    assert result.tasks["a"].input_tokens in {40, 9}  # whether the engine completes or streams
    [seen] = server.requests
    assert seen.body["contents"][-1] == {"role": "user", "parts": [{"text": "hi"}]}


# ---------------------------------------------------------------------------------------------- both: errors

WORKFLOW = {"dsl": "orchestrion/v1", "name": "w", "defaults": {"model": "fast_ai"},
            "stages": [{"type": "inline", "tasks": [{"id": "a", "prompt": "hi"}]}]}

PROVIDERS = {"anthropic": anthropic, "gemini": gemini}


def vendor_error(vendor: str, status: int, message: str, kind: str) -> dict[str, Any]:
    if vendor == "anthropic":
        return {"type": "error", "error": {"type": kind, "message": message}}
    return {"error": {"code": status, "message": message, "status": kind.upper()}}


ERRORS = [  # status, headers, message, vendor error type, expected kind, expected retry_after
    (429, {"retry-after": "7"}, "Number of request tokens has exceeded your rate limit", "rate_limit_error",
     "rate_limit", 7.0),
    (529, {}, "Overloaded", "overloaded_error", "rate_limit", None),
    (500, {}, "Internal server error", "api_error", "server_error", None),
    (503, {}, "The model is overloaded. Please try again later.", "unavailable", "server_error", None),
    (401, {}, "invalid x-api-key", "authentication_error", "auth", None),
    (403, {}, "Your API key does not have permission", "permission_error", "auth", None),
    (404, {}, "model: claude-nope", "not_found_error", "not_found", None),
    (400, {}, "prompt is too long: 212345 tokens > 200000 maximum", "invalid_request_error", "context_length", None),
    (400, {}, "The input token count (1200000) exceeds the maximum number of tokens allowed (1048576).",
     "invalid_argument", "context_length", None),
    (400, {}, "temperature: range: 0..1", "invalid_request_error", "bad_request", None),
]


@pytest.mark.anyio
@pytest.mark.parametrize("vendor", sorted(PROVIDERS))
@pytest.mark.parametrize("streamed", [False, True], ids=["complete", "stream"])
@pytest.mark.parametrize(("status", "headers", "message", "error_type", "kind", "retry_after"), ERRORS,
                         ids=[f"{e[0]}-{e[4]}" for e in ERRORS])
async def test_http_errors_are_mapped(server: WireServer, vendor: str, streamed: bool, status: int,
                                      headers: dict[str, str], message: str, error_type: str, kind: str,
                                      retry_after: float | None) -> None:
    server.script = [Reply(status, vendor_error(vendor, status, message, error_type), headers)]
    async with aclosing(PROVIDERS[vendor](server)) as provider:
        with pytest.raises(ModelError) as caught:
            if streamed:
                await collect(provider, request())
            else:
                await provider.complete(request())
    error = caught.value
    assert (error.kind, error.retry_after) == (kind, retry_after)
    assert f"HTTP {status}" in str(error) and message[:20] in str(error)
    assert KEY not in str(error) and KEY not in repr(error)
    assert error.model in {"claude-haiku-4-5", "gemini-2.5-flash"}


@pytest.mark.anyio
@pytest.mark.parametrize("vendor", sorted(PROVIDERS))
async def test_connection_refused(vendor: str) -> None:
    wire = WireServer()
    wire.close()  # nothing listens on the port any more
    async with aclosing(PROVIDERS[vendor](wire)) as provider:
        with pytest.raises(ModelError) as caught:
            await provider.complete(request())
    assert caught.value.kind == "connection"
    assert KEY not in str(caught.value)


@pytest.mark.anyio
@pytest.mark.parametrize("vendor", sorted(PROVIDERS))
async def test_malformed_answer_is_a_server_error(server: WireServer, vendor: str) -> None:
    server.script = [Reply(body={"unexpected": True})]
    async with aclosing(PROVIDERS[vendor](server)) as provider:
        with pytest.raises(ModelError) as caught:
            await provider.complete(request())
    assert caught.value.kind == "server_error"


@pytest.mark.parametrize("vendor", sorted(PROVIDERS))
def test_repr_never_shows_the_key(vendor: str) -> None:
    config = HttpProviderConfig(kind=vendor, api_key=KEY)  # type: ignore[arg-type]
    provider = AnthropicProvider("p", config, {}) if vendor == "anthropic" else GeminiProvider("p", config, {})
    assert KEY not in repr(provider) and KEY not in str(provider)
    assert repr(provider) == f"{type(provider).__name__}('p')"


@pytest.mark.anyio
@pytest.mark.parametrize("vendor", ["anthropic", "gemini"])
async def test_a_plain_json_answer_to_a_stream_request_is_one_chunk(server: WireServer, vendor: str) -> None:
    """A server (or proxy) that ignores the stream request and answers with plain JSON, by its content type."""
    server.script = [Reply(body=ANTHROPIC_MESSAGE if vendor == "anthropic" else GEMINI_RESPONSE)]
    make = anthropic if vendor == "anthropic" else gemini
    async with aclosing(make(server)) as provider:
        deltas, finals = await collect(provider, request())
    assert deltas == ["Hello again!"]
    assert [final.text for final in finals] == ["Hello again!"] and finals[0].usage.input_tokens > 0
