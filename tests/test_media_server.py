"""The media test server, driven with raw httpx: every route, its auth, and its faults."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator
from typing import Any

import av
import httpx
import pytest

from tests.support.media_server import (
    MediaServer,
    data_url,
    describe_image,
    make_gif,
    make_jpeg,
    make_png,
    running_media_server,
)

OPENAI = {"Authorization": "Bearer sk-test"}
ANTHROPIC = {"x-api-key": "sk-ant", "anthropic-version": "2023-06-01"}
GEMINI = {"x-goog-api-key": "g-key"}
PNG, JPEG, GIF = make_png(64, 48), make_jpeg(10, 10), make_gif(7, 5)
SAW = "saw 2 image(s): image/png 64x48, image/jpeg 10x10; text: what are these?"


@pytest.fixture
def server() -> Iterator[MediaServer]:
    with running_media_server() as server:
        yield server


@pytest.fixture
def http(server: MediaServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=5) as client:
        yield client


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def sse(response: httpx.Response) -> list[Any]:
    return [json.loads(line[6:]) for line in response.text.splitlines()
            if line.startswith("data: ") and line != "data: [DONE]"]


def openai_body(**extra: Any) -> dict[str, Any]:
    return {"model": "gpt-4o", "messages": [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [
            {"type": "text", "text": "what are these?"},
            {"type": "image_url", "image_url": {"url": data_url(PNG)}},
            {"type": "image_url", "image_url": {"url": data_url(JPEG), "detail": "low"}}]}], **extra}


def anthropic_body(**extra: Any) -> dict[str, Any]:
    return {"model": "claude-x", "max_tokens": 100, "messages": [{"role": "user", "content": [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": b64(PNG)}},
        {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": b64(JPEG)}},
        {"type": "text", "text": "what are these?"}]}], **extra}


def gemini_body(**extra: Any) -> dict[str, Any]:
    return {"contents": [{"role": "user", "parts": [
        {"inline_data": {"mime_type": "image/png", "data": b64(PNG)}},
        {"inlineData": {"mimeType": "image/jpeg", "data": b64(JPEG)}},
        {"text": "what are these?"}]}], **extra}


# ── Vision ────────────────────────────────────────────────────────────────────────────────────────────────────────

def test_openai_vision_json_and_stream(server: MediaServer, http: httpx.Client) -> None:
    answer = http.post("/v1/chat/completions", headers=OPENAI, json=openai_body()).json()
    assert answer["choices"][0]["message"]["content"] == SAW
    assert answer["usage"]["completion_tokens"] == len(SAW.split())
    assert answer["usage"]["prompt_tokens"] == 5 + 2 * 85  # "be brief" + "what are these?" + 2 images

    streamed = http.post("/v1/chat/completions", headers=OPENAI,
                         json=openai_body(stream=True, stream_options={"include_usage": True}))
    assert streamed.headers["content-type"] == "text/event-stream"
    assert streamed.text.rstrip().endswith("data: [DONE]")
    chunks = sse(streamed)
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"]) == SAW
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == len(SAW.split())
    assert [(i["route"], i["declared"], i["format"]) for i in server.images_seen[:2]] == [
        ("chat", "image/png", "image/png"), ("chat", "image/jpeg", "image/jpeg")]
    assert server.requests[0]["headers"]["authorization"] == "Bearer sk-test"
    assert server.requests[0]["body"]["model"] == "gpt-4o"


def test_openai_rejects_image_urls_that_are_not_data(http: httpx.Client) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]}]}
    response = http.post("/v1/chat/completions", headers=OPENAI, json=body)
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"
    plain = http.post("/v1/chat/completions", headers=OPENAI,
                      json={"model": "m", "messages": [{"role": "user", "content": "hi"}]})
    assert plain.json()["choices"][0]["message"]["content"] == "saw 0 image(s); text: hi"


def test_anthropic_vision_json_and_stream(http: httpx.Client) -> None:
    answer = http.post("/v1/messages", headers=ANTHROPIC, json=anthropic_body()).json()
    assert answer["content"] == [{"type": "text", "text": SAW}]
    assert answer["stop_reason"] == "end_turn" and answer["model"] == "claude-x"
    assert answer["usage"] == {"input_tokens": 3 + 2 * 85, "output_tokens": len(SAW.split())}

    streamed = http.post("/v1/messages", headers=ANTHROPIC, json=anthropic_body(stream=True))
    events = sse(streamed)
    assert [e["type"] for e in events] == ["message_start", "content_block_start", "content_block_delta",
                                           "content_block_delta", "content_block_stop", "message_delta",
                                           "message_stop"]
    assert "".join(e["delta"]["text"] for e in events if e["type"] == "content_block_delta") == SAW
    assert events[5]["usage"]["output_tokens"] == len(SAW.split())
    assert "event: message_stop" in streamed.text


def test_anthropic_checks_media_type_and_required_fields(http: httpx.Client) -> None:
    wrong = anthropic_body()
    wrong["messages"][0]["content"][1]["source"]["media_type"] = "image/png"  # the JPEG, declared PNG
    response = http.post("/v1/messages", headers=ANTHROPIC, json=wrong)
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"
    no_max = anthropic_body()
    del no_max["max_tokens"]
    assert http.post("/v1/messages", headers=ANTHROPIC, json=no_max).status_code == 400
    assert http.post("/v1/messages", headers={"x-api-key": "k"}, json=anthropic_body()).status_code == 400


def test_gemini_vision_json_and_stream(http: httpx.Client) -> None:
    answer = http.post("/v1beta/models/gemini-2.5-flash:generateContent", headers=GEMINI, json=gemini_body()).json()
    candidate = answer["candidates"][0]
    assert candidate["content"]["parts"] == [{"text": SAW}] and candidate["finishReason"] == "STOP"
    assert answer["usageMetadata"]["candidatesTokenCount"] == len(SAW.split())

    streamed = http.post("/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse", headers=GEMINI,
                         json=gemini_body())
    chunks = sse(streamed)
    assert "".join(p["text"] for c in chunks for p in c["candidates"][0]["content"]["parts"]) == SAW
    assert "usageMetadata" in chunks[-1]


def test_gemini_image_output_depends_on_the_prompt(http: httpx.Client) -> None:
    def draw(prompt: str) -> bytes:
        body = {"contents": [{"parts": [{"text": prompt}]}],
                "generationConfig": {"responseModalities": ["TEXT", "IMAGE"]}}
        answer = http.post("/v1beta/models/gemini-2.5-flash-image:generateContent", headers=GEMINI, json=body).json()
        parts = answer["candidates"][0]["content"]["parts"]
        image = next(p["inlineData"] for p in parts if "inlineData" in p)
        assert image["mimeType"] == "image/png"
        return base64.b64decode(image["data"])

    cat, dog = draw("a cat"), draw("a dog")
    assert describe_image(cat) == ("image/png", 64, 64)
    assert cat != dog and cat == draw("a cat")


# ── Images API ────────────────────────────────────────────────────────────────────────────────────────────────────

def test_images_api_b64_and_url(server: MediaServer, http: httpx.Client) -> None:
    answer = http.post("/v1/images/generations", headers=OPENAI,
                       json={"model": "gpt-image-1", "prompt": "a red fox", "n": 2, "size": "1024x512"}).json()
    assert len(answer["data"]) == 2 and answer["usage"]["total_tokens"] > 0
    images = [base64.b64decode(d["b64_json"]) for d in answer["data"]]
    assert [describe_image(i) for i in images] == [("image/png", 256, 128)] * 2  # capped, aspect kept
    assert images[0] != images[1]
    assert server.requested_sizes == [(1024, 512)]

    by_url = http.post("/v1/images/generations", headers=OPENAI,
                       json={"model": "dall-e-3", "prompt": "x", "size": "64x32", "response_format": "url"}).json()
    url = by_url["data"][0]["url"]
    assert url.startswith(server.url + "/files/")
    fetched = httpx.get(url)
    assert fetched.headers["content-type"] == "image/png"
    assert describe_image(fetched.content) == ("image/png", 64, 32)
    assert http.post("/v1/images/generations", headers=OPENAI,
                     json={"prompt": "x", "size": "big"}).status_code == 400


# ── Video operations ──────────────────────────────────────────────────────────────────────────────────────────────

def start_video(http: httpx.Client, prompt: str = "a boat") -> str:
    response = http.post("/v1beta/models/veo-3.0-generate-001:predictLongRunning", headers=GEMINI,
                         json={"instances": [{"prompt": prompt}], "parameters": {"aspectRatio": "16:9"}})
    name: str = response.json()["name"]
    assert name.startswith("models/veo-3.0-generate-001/operations/")
    return name


def poll(http: httpx.Client, name: str) -> httpx.Response:
    return http.get(f"/v1beta/{name}", headers=GEMINI)


def test_video_operation_completes_after_n_polls(server: MediaServer, http: httpx.Client) -> None:
    name = start_video(http)
    assert [poll(http, name).json()["done"] for _ in range(2)] == [False, False]
    done = poll(http, name).json()
    assert done["done"] is True and done["name"] == name
    uri = done["response"]["generateVideoResponse"]["generatedSamples"][0]["video"]["uri"]
    assert http.get(uri).status_code == 401  # the download needs the key too
    video = http.get(uri, headers=GEMINI)
    assert video.headers["content-type"] == "video/mp4"
    with av.open(io.BytesIO(video.content), mode="r") as container:
        frames = list(container.decode(video=0))
    assert len(frames) > 0 and (frames[0].width, frames[0].height) == (64, 64)
    assert http.get(uri, headers=GEMINI).content == video.content  # encoded once


def test_video_cancel(server: MediaServer, http: httpx.Client) -> None:
    name = start_video(http)
    assert http.post(f"/v1beta/{name}:cancel", headers=GEMINI, json={}).json() == {}
    answer = poll(http, name).json()
    assert answer["done"] is True and answer["error"]["code"] == 1 and "response" not in answer
    assert server.cancelled == [name.rsplit("/", 1)[1]]


def test_poll500_and_operation_error(server: MediaServer, http: httpx.Client) -> None:
    server.polls_until_done = 1
    server.faults = ["poll500", "operation_error"]
    name = start_video(http)  # takes poll500: the next poll fails once
    failed = poll(http, name)  # takes operation_error
    assert failed.status_code == 500 and failed.json()["error"]["status"] == "INTERNAL"
    answer = poll(http, name).json()
    assert answer["done"] is True and answer["error"] == {"code": 13, "message": "internal error"}


def test_faults_for_a_route_kind(server: MediaServer, http: httpx.Client) -> None:
    server.faults_for["poll"] = ["500"]
    name = start_video(http)
    assert poll(http, name).status_code == 500
    assert poll(http, name).status_code == 200
    assert [r["fault"] for r in server.requests] == ["ok", "500", "ok"]
    assert [r["kind"] for r in server.requests] == ["predict", "poll", "poll"]


# ── Auth and faults ───────────────────────────────────────────────────────────────────────────────────────────────

def test_missing_auth_is_a_401_in_each_providers_shape(server: MediaServer, http: httpx.Client) -> None:
    openai = http.post("/v1/chat/completions", json=openai_body())
    anthropic = http.post("/v1/messages", headers={"anthropic-version": "2023-06-01"}, json=anthropic_body())
    gemini = http.post("/v1beta/models/g:generateContent", json=gemini_body())
    assert [r.status_code for r in (openai, anthropic, gemini)] == [401] * 3
    assert openai.json()["error"]["code"] == "invalid_api_key"
    assert anthropic.json()["error"]["type"] == "authentication_error"
    assert gemini.json()["error"]["status"] == "UNAUTHENTICATED"
    wrong_header = http.post("/v1beta/models/g:generateContent", headers=OPENAI, json=gemini_body())
    assert wrong_header.status_code == 401
    assert [r["fault"] for r in server.requests] == ["401"] * 4


def test_500_429_and_hang(server: MediaServer, http: httpx.Client) -> None:
    server.faults = ["500", "429", "500", "hang"]
    server.hang_seconds = 0.5
    failed = http.post("/v1/messages", headers=ANTHROPIC, json=anthropic_body())
    assert failed.status_code == 500 and failed.json()["error"]["type"] == "api_error"
    limited = http.post("/v1/chat/completions", headers=OPENAI, json=openai_body())
    assert limited.status_code == 429 and limited.headers["retry-after"] == "1"
    images = http.post("/v1/images/generations", headers=OPENAI, json={"prompt": "x"})
    assert images.status_code == 500 and images.json()["error"]["type"] == "server_error"
    with pytest.raises(httpx.ReadTimeout):
        http.post("/v1/chat/completions", headers=OPENAI, json=openai_body(), timeout=0.1)
    assert http.post("/v1/chat/completions", headers=OPENAI, json=openai_body()).status_code == 200


def test_gif_input(http: httpx.Client) -> None:
    body = {"contents": [{"parts": [{"inline_data": {"mime_type": "image/gif", "data": b64(GIF)}}]}]}
    answer = http.post("/v1beta/models/g:generateContent", headers=GEMINI, json=body).json()
    assert answer["candidates"][0]["content"]["parts"][0]["text"] == "saw 1 image(s): image/gif 7x5; text: "


def test_reset_503_unknown_route_and_bad_image_data(server: MediaServer, http: httpx.Client) -> None:
    server.faults = ["reset", "503"]
    with pytest.raises(httpx.TransportError):
        http.post("/v1beta/models/g:generateContent", headers=GEMINI, json=gemini_body())
    overloaded = http.post("/v1beta/models/g:generateContent", headers=GEMINI, json=gemini_body())
    assert overloaded.status_code == 503 and overloaded.json()["error"]["status"] == "UNAVAILABLE"
    assert http.get("/v1/nothing", headers=OPENAI).status_code == 404
    truncated = {"model": "m", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": data_url(PNG[:40], "image/png")}}]}]}
    assert http.post("/v1/chat/completions", headers=OPENAI, json=truncated).status_code == 400
