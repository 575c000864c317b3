"""The OpenAI-compatible face, called with the official `openai` client against a real server:
/v1/models, chat completions on an alias and on a workflow, streamed and not, refusals and errors."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.lowlevel
import httpx
import openai
import pytest

from engine import Engine, ModelError
from engine.model.client import ModelRequest, ModelResponse, TextDelta, Usage
from engine.model.prices import Price
from engine.server import ServerSettings, create_app
from engine.testing import FakeModel
from tests.support.live_server import serving

pytestmark = pytest.mark.anyio

TOKEN = "a" * 32


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # uvicorn runs on asyncio only


@asynccontextmanager
async def server(models: Any = None, settings: ServerSettings | None = None,
                 **options: Any) -> AsyncIterator[tuple[str, openai.AsyncOpenAI]]:
    """A served engine, and an OpenAI client of it (no retries: a test sees each answer as it is)."""
    engine = Engine(models=models if models is not None else FakeModel(), **options)
    async with serving(create_app(engine, settings)) as url, \
            openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=TOKEN, max_retries=0) as client:
        yield url, client


def run_id(completion_id: str) -> str:
    assert completion_id.startswith("chatcmpl-")
    return completion_id.removeprefix("chatcmpl-")


async def get_json(url: str, path: str) -> Any:
    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}) as http:
        response = await http.get(path)
    assert response.status_code == 200, response.text
    return response.json()


async def streamed(client: openai.AsyncOpenAI, **request: Any) -> tuple[list[Any], str]:
    """Every chunk of a streamed completion, and its content joined."""
    chunks = [chunk async for chunk in await client.chat.completions.create(stream=True, **request)]
    content = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    return chunks, content


# -- models --------------------------------------------------------------------------------------------------

async def test_models_lists_every_alias_and_every_template_as_a_workflow() -> None:
    async with server() as (_, client):
        listed = [model async for model in client.models.list()]
        ids = {model.id for model in listed}
        assert {"fast_ai", "thinking_ai", "router"} <= ids
        assert {"workflow:research_report", "workflow:chat"} <= ids
        assert {model.owned_by for model in listed} == {"orchestrion"}
        assert (await client.models.retrieve("workflow:research_report")).id == "workflow:research_report"
        with pytest.raises(openai.NotFoundError):
            await client.models.retrieve("no_such_model")


# -- a model alias -------------------------------------------------------------------------------------------

async def test_an_alias_answers_with_the_conversation_as_inputs_and_usage_from_the_run() -> None:
    fake = FakeModel()
    async with server(fake) as (url, client):
        completion = await client.chat.completions.create(
            model="fast_ai", temperature=0.3, max_completion_tokens=50,
            messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello"}])
        assert completion.object == "chat.completion" and completion.model == "fast_ai"
        choice = completion.choices[0]
        assert choice.message.role == "assistant" and choice.message.content == "[fast_ai] hello"
        assert choice.finish_reason == "stop"
        asked = fake.calls_to("fast_ai")[-1]
        assert [(m.role, m.content) for m in asked.messages] == [("system", "Be brief."), ("user", "hello")]
        assert asked.temperature == 0.3 and asked.max_tokens == 50
        run = await get_json(url, f"/runs/{run_id(completion.id)}")
        assert run["status"] == "succeeded" and run["workflow"] == "openai.chat"
        assert completion.usage is not None
        assert completion.usage.prompt_tokens == run["totals"]["input_tokens"] > 0
        assert completion.usage.completion_tokens == run["totals"]["output_tokens"] > 0
        assert completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens
        runs = await get_json(url, "/runs")
        assert run_id(completion.id) in {row["run_id"] for row in runs["runs"]}


async def test_earlier_turns_and_text_parts_reach_the_model_as_a_transcript() -> None:
    fake = FakeModel()
    async with server(fake) as (_, client):
        completion = await client.chat.completions.create(model="fast_ai", messages=[
            {"role": "user", "content": "my name is Ada"},
            {"role": "assistant", "content": "hello Ada"},
            {"role": "user", "content": [{"type": "text", "text": "what is"}, {"type": "text", "text": "my name?"}]},
        ])
        assert fake.calls_to("fast_ai")[-1].prompt == (
            "Conversation so far:\nuser: my name is Ada\nassistant: hello Ada\n\nwhat is\nmy name?")
        assert completion.choices[0].message.content == "[fast_ai] " + fake.calls_to("fast_ai")[-1].prompt


async def test_user_text_is_never_rendered_as_a_template() -> None:
    fake = FakeModel()
    async with server(fake) as (_, client):
        completion = await client.chat.completions.create(model="fast_ai", messages=[
            {"role": "system", "content": "{{ 6*7 }}"},
            {"role": "user", "content": "{{ 7*7 }} {% if 1 %}x{% endif %}"}])
        assert completion.choices[0].message.content == "[fast_ai] {{ 7*7 }} {% if 1 %}x{% endif %}"
        assert fake.calls_to("fast_ai")[-1].messages[0].content == "{{ 6*7 }}"


async def test_a_streamed_alias_call_forwards_the_deltas_and_ends_with_usage() -> None:
    fake = FakeModel(chunk_size=3)
    request: dict[str, Any] = {"model": "fast_ai", "messages": [{"role": "user", "content": "a streamed answer"}]}
    async with server(fake) as (_, client):
        whole = await client.chat.completions.create(**request)
        chunks, content = await streamed(client, stream_options={"include_usage": True}, **request)
    assert content == whole.choices[0].message.content == "[fast_ai] a streamed answer"
    assert chunks[0].choices[0].delta.role == "assistant"
    deltas = [chunk.choices[0].delta.content for chunk in chunks if chunk.choices and chunk.choices[0].delta.content]
    assert len(deltas) == len(range(0, len(content), 3))  # each of the model's pieces, as it came
    assert [chunk.choices[0].finish_reason for chunk in chunks if chunk.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert whole.usage is not None and chunks[-1].usage.total_tokens == whole.usage.total_tokens
    assert all(chunk.usage is None for chunk in chunks[:-1])
    assert len({chunk.id for chunk in chunks}) == 1 and chunks[0].id != whole.id  # one run per call


class Held:
    """A model that streams its first piece, then waits for the test to let it finish."""

    def __init__(self) -> None:
        self.release = anyio.Event()

    async def complete(self, request: ModelRequest) -> ModelResponse:
        raise AssertionError("streamed calls only")

    async def stream(self, request: ModelRequest) -> AsyncIterator[TextDelta | ModelResponse]:
        yield TextDelta("first ")
        await self.release.wait()
        yield TextDelta("second")
        yield ModelResponse("first second", Usage(3, 2), model="held")


async def test_deltas_reach_the_client_while_the_model_is_still_answering() -> None:
    model = Held()
    async with server(model) as (_, client):
        chunks = await client.chat.completions.create(model="fast_ai", stream=True,
                                                      messages=[{"role": "user", "content": "go"}])
        pieces = []
        with anyio.fail_after(5):  # the model is still answering: only a live delta can arrive
            async for chunk in chunks:
                if chunk.choices and chunk.choices[0].delta.content:
                    pieces.append(chunk.choices[0].delta.content)
                    if len(pieces) == 1:
                        assert pieces == ["first "]
                        model.release.set()
    assert "".join(pieces) == "first second"


async def first_delta(chunks: Any) -> Any:
    """The first chunk with content, read from a live stream."""
    async for chunk in chunks:
        if chunk.choices and chunk.choices[0].delta.content:
            return chunk
    raise AssertionError("the stream ended without content")


async def test_a_client_that_leaves_a_stream_cancels_its_run() -> None:
    async with server(Held()) as (url, client):
        chunks = await client.chat.completions.create(model="fast_ai", stream=True,
                                                      messages=[{"role": "user", "content": "go"}])
        with anyio.fail_after(5):
            chunk = await first_delta(chunks)
            await chunks.close()
            while (await get_json(url, f"/runs/{run_id(chunk.id)}"))["status"] != "cancelled":  # noqa: ASYNC110
                await anyio.sleep(0.05)  # (polled over HTTP, as a client would: there is no event to wait on)


async def test_a_caller_at_its_capacity_is_told_to_wait() -> None:
    model = Held()
    async with server(model, ServerSettings(max_runs_per_token=1)) as (url, client):
        chunks = await client.chat.completions.create(model="fast_ai", stream=True,
                                                      messages=[{"role": "user", "content": "go"}])
        with anyio.fail_after(5):
            await first_delta(chunks)
            with pytest.raises(openai.RateLimitError):
                await client.chat.completions.create(model="fast_ai", messages=[{"role": "user", "content": "x"}])
            model.release.set()
            async for _ in chunks:
                pass
        assert len((await get_json(url, "/runs"))["runs"]) == 1  # the refused call recorded nothing


async def test_an_answer_cut_at_its_token_cap_finishes_with_length() -> None:
    fake = FakeModel({"fast_ai": ModelResponse("cut sh", Usage(4, 2), finish_reason="length")})
    request: dict[str, Any] = {"model": "fast_ai", "max_tokens": 2, "messages": [{"role": "user", "content": "x"}]}
    async with server(fake) as (_, client):
        whole = await client.chat.completions.create(**request)
        chunks, content = await streamed(client, **request)
    assert whole.choices[0].finish_reason == "length" and whole.choices[0].message.content == content == "cut sh"
    assert [chunk.choices[0].finish_reason for chunk in chunks if chunk.choices][-1] == "length"


async def test_streamed_and_not_record_the_same_usage_and_cost() -> None:
    request: dict[str, Any] = {"model": "fast_ai", "messages": [{"role": "system", "content": "Be exact."},
                                                               {"role": "user", "content": "count the tokens"}]}
    async with server(FakeModel(chunk_size=2), prices={"fast_ai": Price(input=3.0, output=15.0)}) as (url, client):
        whole = await client.chat.completions.create(**request)
        chunks, _ = await streamed(client, stream_options={"include_usage": True}, **request)
        plain = (await get_json(url, f"/runs/{run_id(whole.id)}"))["totals"]
        streamed_totals = (await get_json(url, f"/runs/{run_id(chunks[0].id)}"))["totals"]
    assert plain["cost_usd"] > 0
    assert {key: plain[key] for key in ("input_tokens", "output_tokens", "cost_usd")} == \
           {key: streamed_totals[key] for key in ("input_tokens", "output_tokens", "cost_usd")}
    assert chunks[-1].usage is not None and chunks[-1].usage.prompt_tokens == plain["input_tokens"]


# -- a workflow ----------------------------------------------------------------------------------------------

async def test_a_workflow_answers_with_its_outputs_streamed_or_not() -> None:
    async with server() as (url, client):
        messages = [{"role": "user", "content": "solar power"}]
        whole = await client.chat.completions.create(model="workflow:research_report", messages=messages)
        chunks, content = await streamed(client, model="workflow:research_report", messages=messages,
                                         stream_options={"include_usage": True})
        runs = {row["run_id"]: row for row in (await get_json(url, "/runs?workflow=research_report"))["runs"]}
        detail = await get_json(url, f"/runs/{run_id(whole.id)}")
    answer = whole.choices[0].message.content
    assert answer is not None and json.loads(answer) == detail["outputs"]  # two outputs: a JSON object
    assert set(json.loads(answer)) == {"report", "confidence"}
    assert content == answer
    assert {run_id(whole.id), run_id(chunks[0].id)} <= runs.keys()
    assert whole.usage is not None and whole.usage.prompt_tokens == detail["totals"]["input_tokens"] > 0
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == whole.usage.total_tokens
    assert "Research solar power for business executives" in detail["tasks"]["research"]["output"]


async def test_a_json_object_message_gives_the_workflow_its_inputs() -> None:
    fake = FakeModel()
    async with server(fake) as (_, client):
        await client.chat.completions.create(model="workflow:research_report", messages=[
            {"role": "user", "content": json.dumps({"topic": "tidal {{ power }}", "audience": "children"})}])
    assert "Research tidal {{ power }} for children" in fake.calls_to("thinking_ai")[0].prompt


async def test_earlier_turns_go_to_a_workflows_history_and_one_output_is_its_text() -> None:
    fake = FakeModel()
    async with server(fake) as (_, client):
        completion = await client.chat.completions.create(model="workflow:chat", messages=[
            {"role": "system", "content": "You help."}, {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello"}, {"role": "user", "content": "hello again"}])
    outputs = json.loads(completion.choices[0].message.content or "")
    assert outputs["answer"] == ("[thinking_ai] Conversation so far:\nsystem: You help.\nuser: hi\n"
                                 "assistant: hello\n\nhello again")


async def test_inputs_that_do_not_fit_are_refused_saying_what_the_workflow_takes() -> None:
    async with server() as (_, client):
        with pytest.raises(openai.UnprocessableEntityError) as typed:
            await client.chat.completions.create(model="workflow:research_report",
                                                 messages=[{"role": "user", "content": '{"topic": 5}'}])
        assert "topic" in typed.value.message and "It takes: topic (string, required)" in typed.value.message
        with pytest.raises(openai.UnprocessableEntityError) as history:
            await client.chat.completions.create(model="workflow:research_report", messages=[
                {"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                {"role": "user", "content": "c"}])
        assert "'history'" in history.value.message


# -- refusals and errors -----------------------------------------------------------------------------------------

async def test_an_unknown_model_or_workflow_is_not_found() -> None:
    async with server() as (_, client):
        for model in ("fast_aj", "workflow:no_such_template"):
            with pytest.raises(openai.NotFoundError) as error:
                await client.chat.completions.create(model=model, messages=[{"role": "user", "content": "x"}])
            assert model in error.value.message
            assert isinstance(error.value.body, dict) and error.value.body["type"] == "model_not_found"


@pytest.mark.parametrize(("field", "asked"), [
    ("n", {"n": 2}),
    ("tools", {"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}),
    ("logprobs", {"logprobs": True}),
    ("response_format", {"response_format": {"type": "json_object"}}),
    ("stop", {"stop": ["\n"]}),
    ("frobnicate", {"extra_body": {"frobnicate": 1}}),
    ("image_url", {"messages": [{"role": "user", "content": [
        {"type": "text", "text": "what is this?"}, {"type": "image_url", "image_url": {"url": "http://x/y.png"}}]}]}),
    ("'tool'", {"messages": [{"role": "tool", "content": "42", "tool_call_id": "c"}]}),
    ("temperature", {"model": "workflow:research_report", "temperature": 0.2}),
    ("stream_options", {"stream_options": {"include_usage": True}}),
])
async def test_a_field_that_would_not_be_honoured_is_refused_by_name(field: str, asked: dict[str, Any]) -> None:
    fake = FakeModel()
    async with server(fake) as (url, client):
        with pytest.raises(openai.BadRequestError) as error:
            await client.chat.completions.create(**{"model": "fast_ai",
                                                    "messages": [{"role": "user", "content": "x"}], **asked})
        assert field in error.value.message
        assert (await get_json(url, "/runs"))["runs"] == [] and fake.calls == []  # nothing ran


async def test_fields_that_only_identify_the_caller_are_accepted() -> None:
    async with server() as (_, client):
        completion = await client.chat.completions.create(
            model="fast_ai", user="u-1", n=1, metadata={"team": "a"}, presence_penalty=0,
            messages=[{"role": "developer", "content": "Be kind."}, {"role": "user", "content": "x"}])
    assert completion.choices[0].message.content == "[fast_ai] x"


class Breaks:
    """A model that streams part of an answer, then fails for good."""

    async def complete(self, request: ModelRequest) -> ModelResponse:
        raise ModelError("bad_request", "the provider refused the request")

    async def stream(self, request: ModelRequest) -> AsyncIterator[TextDelta | ModelResponse]:
        yield TextDelta("half an ")
        raise ModelError("bad_request", "the provider refused the rest")


async def test_a_model_failure_mid_stream_reaches_the_client_as_an_error() -> None:
    async with server(Breaks()) as (url, client):
        stream = await client.chat.completions.create(model="fast_ai", stream=True,
                                                      messages=[{"role": "user", "content": "x"}])
        pieces = []
        with pytest.raises(openai.APIError) as error:
            async for chunk in stream:
                pieces.append(chunk.choices[0].delta.content or "")
        assert "".join(pieces) == "half an "
        assert "reply" in error.value.message and "refused the rest" in error.value.message
        assert isinstance(error.value.body, dict) and error.value.body["type"] == "run_failed"
        with pytest.raises(openai.APIStatusError) as whole:
            await client.chat.completions.create(model="fast_ai", messages=[{"role": "user", "content": "x"}])
        assert whole.value.status_code == 502 and "'reply'" in whole.value.message
        assert whole.value.response.headers["x-should-retry"] == "false"  # the engine retried already
        runs = (await get_json(url, "/runs"))["runs"]
        assert [row["status"] for row in runs] == ["failed", "failed"]


class Retried:
    """A model whose first stream breaks after a piece; asked again, it answers ``second`` whole."""

    def __init__(self, second: str) -> None:
        self.second, self.streams = second, 0

    async def complete(self, request: ModelRequest) -> ModelResponse:
        raise AssertionError("streamed calls only")

    async def stream(self, request: ModelRequest) -> AsyncIterator[TextDelta | ModelResponse]:
        self.streams += 1
        if self.streams == 1:
            yield TextDelta("half ")
            raise ModelError("server_error", "the connection broke")
        yield TextDelta(self.second)
        yield ModelResponse(self.second, Usage(2, 2), model="retried")


async def no_sleep(seconds: float) -> None:
    await anyio.lowlevel.checkpoint()


async def test_a_retry_after_part_of_an_answer_went_out_sends_only_what_fits_after_it() -> None:
    request: dict[str, Any] = {"model": "fast_ai", "messages": [{"role": "user", "content": "x"}]}
    async with server(Retried("half an answer"), sleep=no_sleep) as (_, client):
        _, content = await streamed(client, **request)
    assert content == "half an answer"  # not "half half an answer"
    async with server(Retried("another answer"), sleep=no_sleep) as (_, client):
        pieces = []
        with pytest.raises(openai.APIError) as error:
            async for chunk in await client.chat.completions.create(stream=True, **request):
                pieces.append(chunk.choices[0].delta.content or "")
    assert "".join(pieces) == "half "  # what went out is not the answer: the client is told
    assert isinstance(error.value.body, dict) and error.value.body["type"] == "stream_diverged"


async def test_a_bearer_token_is_required_when_the_server_has_tokens() -> None:
    async with server(settings=ServerSettings(tokens=(TOKEN,))) as (url, client):
        assert "fast_ai" in {model.id async for model in client.models.list()}
        async with openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="b" * 32, max_retries=0) as wrong:
            with pytest.raises(openai.AuthenticationError):
                await wrong.models.list()
            with pytest.raises(openai.AuthenticationError):
                await wrong.chat.completions.create(model="fast_ai", messages=[{"role": "user", "content": "x"}])
        completion = await client.chat.completions.create(model="fast_ai", messages=[{"role": "user", "content": "x"}])
        assert completion.choices[0].message.content == "[fast_ai] x"


async def test_a_form_encoded_body_is_read_as_json_and_errors_keep_one_shape() -> None:
    async with server() as (url, _), httpx.AsyncClient(base_url=url) as http:
        body = json.dumps({"model": "fast_ai", "messages": [{"role": "user", "content": "x"}]})
        answer = await http.post("/v1/chat/completions", content=body,
                                 headers={"Content-Type": "application/x-www-form-urlencoded"})
        assert answer.status_code == 200 and answer.json()["choices"][0]["message"]["content"] == "[fast_ai] x"
        assert answer.headers["location"] == f"/runs/{run_id(answer.json()['id'])}"
        refused = await http.post("/v1/chat/completions", json={"model": "fast_ai", "messages": []})
        assert refused.status_code == 422 and refused.json()["error"]["type"] == "invalid_request"
