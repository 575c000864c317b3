"""Images in and out, end to end, against a real loopback server speaking each provider's wire format.

Vision messages go out as OpenAI ``image_url`` data URLs, Anthropic base64 blocks and Gemini
``inline_data`` (the server decodes each image with Pillow and says what it saw); generated
images come back from OpenAI's images API and Gemini's image models; a video from a Veo-style
long-running operation, polled, downloaded and decoded with PyAV.
"""

from __future__ import annotations

import functools
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import openai
import pytest

from engine import Engine, EngineConfig, Image, MediaSaved, TaskFellBack, WorkflowError, load_workflow
from engine.errors import InputError
from tests.support.media_server import MediaServer, data_url, describe_image, make_gif, make_png, running_media_server

pytestmark = pytest.mark.anyio

KEYS = {"openai": "sk-openai-loopback-0001", "anthropic": "sk-ant-loopback-0002", "gemini": "g-loopback-0003"}


@pytest.fixture(scope="module")
def media() -> Iterator[MediaServer]:
    with running_media_server() as server:
        yield server


@pytest.fixture(autouse=True)
def fresh(media: MediaServer) -> None:
    media.faults.clear()
    media.faults_for.clear()
    media.polls_until_done = 3


def config(media: MediaServer, **extra: Any) -> EngineConfig:
    return EngineConfig.model_validate({
        "providers": {
            "oa": {"kind": "openai", "base_url": media.openai_url, "api_key": KEYS["openai"]},
            "an": {"kind": "anthropic", "base_url": media.anthropic_url, "api_key": KEYS["anthropic"]},
            "gm": {"kind": "gemini", "base_url": media.gemini_url, "api_key": KEYS["gemini"], "poll_interval": 0.02},
        },
        "models": {
            "eyes_openai": {"provider": "oa", "model": "gpt-4o", "vision": True},
            "eyes_claude": {"provider": "an", "model": "claude-sonnet-4-5", "vision": True},
            "eyes_gemini": {"provider": "gm", "model": "gemini-2.5-flash", "vision": True},
            "writer": {"provider": "oa", "model": "gpt-4o-mini"},
            "painter": {"provider": "oa", "model": "gpt-image-1", "generates": ["image"], "image_price": 0.04},
            "gemini_painter": {"provider": "gm", "model": "gemini-2.5-flash-image", "generates": ["image"],
                               "image_price": 0.039},
            "director": {"provider": "gm", "model": "veo-3.0-generate-001", "generates": ["video"],
                         "video_price": 0.4},
        },
        **extra,
    })


async def no_sleep(seconds: float) -> None:
    await anyio.lowlevel.checkpoint()


async def build(config: EngineConfig | None = None, **options: Any) -> Engine:
    """An Engine made off the event loop (its HTTP clients load the system's certificates)."""
    return await anyio.to_thread.run_sync(functools.partial(Engine, config, **options))


async def engine_for(media: MediaServer, tmp_path: Path, **extra: Any) -> Engine:
    return await build(config(media, **extra), artifacts=tmp_path / "artifacts", sleep=no_sleep)


def look(model: str | list[str], *, images: str = "[photo]") -> dict[str, Any]:
    return {"dsl": "orchestrion/v1", "name": "look", "inputs": {"photo": {"type": "image"}},
            "stages": [{"type": "linear", "tasks": [
                {"id": "seen", "model": model, "prompt": "What is in the picture?", "images": [images[1:-1]]}]}],
            "outputs": {"seen": "{{ seen }}"}}


@pytest.mark.parametrize(("alias", "route"), [("eyes_openai", "chat"), ("eyes_claude", "messages"),
                                              ("eyes_gemini", "generate")])
@pytest.mark.parametrize("streamed", [False, True])
async def test_an_image_input_reaches_each_provider_in_its_wire_format(
        media: MediaServer, tmp_path: Path, alias: str, route: str, streamed: bool) -> None:
    picture = tmp_path / "photo.png"
    picture.write_bytes(make_png(64, 48))
    engine = await engine_for(media, tmp_path)
    before = len(media.requests_of(route))
    events: list[Any] = []
    result = await engine.run(look(alias), {"photo": str(picture)}, on_event=events.append if streamed else None)
    assert result.status == "succeeded", result.error
    assert result.outputs["seen"] == "saw 1 image(s): image/png 64x48; text: What is in the picture?"
    assert len(media.requests_of(route)) == before + 1
    sent = media.requests_of(route)[-1]
    assert sent["body"].get("stream", False) == streamed or route == "generate"
    await engine.aclose()


async def test_every_way_of_giving_an_image_is_read_and_checked(media: MediaServer, tmp_path: Path) -> None:
    jpeg_server = _static_server(tmp_path / "www")
    (tmp_path / "www" / "cat.png").write_bytes(make_png(20, 10))
    engine = await engine_for(media, tmp_path)
    given = [Image.from_bytes(make_png(5, 5)), make_png(6, 6), data_url(make_png(7, 7)),
             f"{jpeg_server}/cat.png"]
    seen = [(await engine.run(look("eyes_openai"), {"photo": value})).outputs["seen"] for value in given]
    assert [answer.split(";")[0] for answer in seen] == [
        "saw 1 image(s): image/png 5x5", "saw 1 image(s): image/png 6x6", "saw 1 image(s): image/png 7x7",
        "saw 1 image(s): image/png 20x10"]
    for bad, why in [(b"not an image", "not a PNG, JPEG, GIF or WebP"), (str(tmp_path / "missing.png"), "cannot read"),
                     ("data:image/png;base64,@@@", "base64 is not valid"), (42, "not a int")]:
        with pytest.raises(InputError, match=why):
            await engine.run(look("eyes_openai"), {"photo": bad})
    await engine.aclose()


def _static_server(folder: Path) -> str:
    folder.mkdir()
    handler = functools.partial(_QuietFiles, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}"


class _QuietFiles(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass


async def test_a_model_that_refuses_the_image_type_hands_it_to_the_next_of_the_chain(
        media: MediaServer, tmp_path: Path) -> None:
    engine = await engine_for(media, tmp_path)
    before = len(media.requests_of("generate"))
    events: list[Any] = []
    result = await engine.run(look(["eyes_gemini", "eyes_openai"]), {"photo": make_gif(9, 9)}, on_event=events.append)
    assert result.status == "succeeded"
    assert result.outputs["seen"].startswith("saw 1 image(s): image/gif 9x9")
    assert len(media.requests_of("generate")) == before  # refused before sending: nothing reached Gemini
    fell = [event for event in events if isinstance(event, TaskFellBack)]
    assert len(fell) == 1 and "does not take image/gif" in fell[0].error and "image/png" in fell[0].error
    alone = await engine.run(look("eyes_gemini"), {"photo": make_gif(9, 9)})
    assert alone.status == "failed" and "Gemini (gemini-2.5-flash) does not take image/gif" in str(alone.error)
    await engine.aclose()


async def test_the_gates_count_an_image_by_its_providers_rule(media: MediaServer, tmp_path: Path) -> None:
    # A 4000x4000 image: OpenAI's tiles count it 765 tokens, Gemini's 36 tiles of 258 (9,288).
    engine = await engine_for(media, tmp_path, gates=[{"above": 2000, "deny": True}])
    big = await anyio.to_thread.run_sync(make_png, 4000, 4000)  # Pillow takes a while: off the loop
    openai = await engine.run(look("eyes_openai"), {"photo": big})
    gemini = await engine.run(look("eyes_gemini"), {"photo": big})
    assert openai.status == "succeeded"
    assert gemini.status == "failed" and gemini.tasks["seen"].error_kind == "denied"
    await engine.aclose()


def test_images_to_a_model_without_vision_fail_validation_and_say_why(media: MediaServer, tmp_path: Path) -> None:
    engine = Engine(config(media), artifacts=tmp_path)
    with pytest.raises(WorkflowError) as caught:
        engine.compile(load_workflow(look(["eyes_openai", "writer"])))
    problem, = caught.value.problems
    assert problem.code == "no-vision" and "'writer'" in problem.message
    assert "Gemma 3 270M" in (problem.hint or "") and "eyes_openai" in (problem.hint or "")
    embedded = Engine(artifacts=tmp_path)  # the default: every alias on the local text model
    with pytest.raises(WorkflowError, match="does not read images"):
        embedded.compile(load_workflow(look("image_analysis_ai")))


def paint(model: str, **fields: Any) -> dict[str, Any]:
    return {"dsl": "orchestrion/v1", "name": "paint", "stages": [{"type": "inline", "tasks": [
        {"id": "art", "model": model, "generate": "image", "prompt": "A blue bottle on a beach", **fields}]}],
        "outputs": {"art": "{{ art }}"}}


async def test_the_images_api_makes_files_in_the_runs_artefact_folder(media: MediaServer, tmp_path: Path) -> None:
    engine = await engine_for(media, tmp_path)
    events: list[Any] = []
    result = await engine.run(paint("painter", count=2, size="128x96"), on_event=events.append)
    assert result.status == "succeeded", result.error
    files = result.tasks["art"].output
    assert isinstance(files, list) and len(files) == 2
    for file in files:
        path = Path(file["path"])
        assert path.parent == (tmp_path / "artifacts" / result.run_id).resolve()
        assert describe_image(await anyio.Path(path).read_bytes()) == ("image/png", 128, 96)  # decoded by Pillow
        assert file["media_type"] == "image/png" and (file["width"], file["height"]) == (128, 96)
    assert files[0]["path"] != files[1]["path"]
    assert media.requests_of("images")[-1]["body"] == {"model": "gpt-image-1", "prompt": "A blue bottle on a beach",
                                                       "n": 2, "size": "128x96"}
    assert result.tasks["art"].cost_usd == pytest.approx(0.08)  # 2 images at $0.04, and its tokens cost nothing
    saved = [event for event in events if isinstance(event, MediaSaved)]
    assert [event.path for event in saved] == [file["path"] for file in files]
    assert sum(event.cost_usd for event in saved) == pytest.approx(0.08)
    await engine.aclose()


async def test_a_gemini_image_model_makes_one_image_a_call(media: MediaServer, tmp_path: Path) -> None:
    engine = await engine_for(media, tmp_path)
    result = await engine.run(paint("gemini_painter", size="1024x1024"))
    assert result.status == "succeeded", result.error
    file = result.tasks["art"].output
    assert describe_image(await anyio.Path(file["path"]).read_bytes())[0] == "image/png"
    sent = media.requests_of("generate")[-1]["body"]
    assert sent["generationConfig"] == {"responseModalities": ["TEXT", "IMAGE"], "imageConfig": {"aspectRatio": "1:1"}}
    refused = await engine.run(paint("gemini_painter", size="1000x300"))
    assert refused.status == "failed" and "aspect ratios" in str(refused.error)
    await engine.aclose()


def film(**fields: Any) -> dict[str, Any]:
    return {"dsl": "orchestrion/v1", "name": "film", "stages": [{"type": "inline", "tasks": [
        {"id": "clip", "model": "director", "generate": "video", "prompt": "A bottle floating at sea", **fields}]}]}


async def test_a_video_operation_is_polled_downloaded_and_decoded(media: MediaServer, tmp_path: Path) -> None:
    import av

    engine = await engine_for(media, tmp_path)
    before = len(media.requests_of("poll"))
    result = await engine.run(film(seconds=6, aspect_ratio="16:9"))
    assert result.status == "succeeded", result.error
    clip = result.tasks["clip"].output
    assert clip["media_type"] == "video/mp4" and Path(clip["path"]).suffix == ".mp4"
    with av.open(clip["path"]) as container:
        frames = sum(1 for _ in container.decode(video=0))
    assert frames > 0
    assert len(media.requests_of("poll")) - before == 3
    started = media.requests_of("predict")[-1]
    assert started["body"] == {"instances": [{"prompt": "A bottle floating at sea"}],
                               "parameters": {"aspectRatio": "16:9", "durationSeconds": 6}}
    download = media.requests_of("video")[-1]
    assert download["headers"]["x-goog-api-key"] == KEYS["gemini"]  # the provider's own origin
    assert result.tasks["clip"].cost_usd == pytest.approx(6 * 0.4)
    await engine.aclose()


async def test_a_failed_poll_is_polled_again_not_paid_for_twice(media: MediaServer, tmp_path: Path) -> None:
    engine = await engine_for(media, tmp_path)
    predicts = len(media.requests_of("predict"))
    media.faults_for["poll"] = ["500"]
    result = await engine.run(film())
    assert result.status == "succeeded", result.error
    assert len(media.requests_of("predict")) == predicts + 1  # one operation
    await engine.aclose()


async def test_an_operation_that_fails_is_an_error_the_retry_policy_decides(media: MediaServer, tmp_path: Path) -> None:
    engine = await engine_for(media, tmp_path)
    media.faults_for["predict"] = ["operation_error"]
    once = await engine.run(film(retry=None))
    assert once.status == "failed"
    assert once.tasks["clip"].error_kind == "server_error" and "internal error" in str(once.error)
    media.faults_for["predict"] = ["operation_error"]
    retried = await engine.run(film())
    assert retried.status == "succeeded" and retried.tasks["clip"].attempts == 2
    await engine.aclose()


async def test_cancelling_a_run_cancels_its_video_operation(media: MediaServer, tmp_path: Path) -> None:
    engine = await engine_for(media, tmp_path)
    media.polls_until_done = 10_000
    cancels = len(media.cancelled)
    polls = len(media.requests_of("poll"))
    with anyio.move_on_after(30):
        async with anyio.create_task_group() as group:
            group.start_soon(engine.run, film())
            for _ in range(3000):  # until the operation has been polled twice
                if len(media.requests_of("poll")) >= polls + 2:
                    break
                await anyio.sleep(0.01)
            group.cancel_scope.cancel()
    assert len(media.cancelled) == cancels + 1
    operation = media.requests_of("predict")[-1]
    assert operation["kind"] == "predict"
    await engine.aclose()


async def test_a_generated_image_is_passed_to_a_later_task(media: MediaServer, tmp_path: Path) -> None:
    workflow = {"dsl": "orchestrion/v1", "name": "paint_then_look", "stages": [{"type": "inline", "tasks": [
        {"id": "art", "model": "painter", "generate": "image", "prompt": "A bottle", "size": "64x64"},
        {"id": "review", "model": "eyes_claude", "prompt": "Review this product image", "images": ["art"]}]}],
        "outputs": {"review": "{{ review }}"}}
    engine = await engine_for(media, tmp_path)
    result = await engine.run(workflow)
    assert result.status == "succeeded", result.error
    assert result.outputs["review"] == "saw 1 image(s): image/png 64x64; text: Review this product image"
    await engine.aclose()


@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # aiosqlite runs on asyncio
async def test_with_a_store_an_image_given_as_bytes_is_kept_as_a_file_and_a_resume_reads_it(
        media: MediaServer, tmp_path: Path) -> None:
    workflow = look("eyes_openai")
    workflow["defaults"] = {"retry": None}
    engine = await build(config(media), artifacts=tmp_path / "artifacts", store=f"sqlite+aiosqlite:///{tmp_path}/runs.db")
    media.faults_for["chat"] = ["500"]
    failed = await engine.run(workflow, {"photo": make_png(11, 12)})
    assert failed.status == "failed"
    store = await engine.run_store()
    assert store is not None
    stored = await store.load_run(failed.run_id)
    assert stored is not None
    kept = Path(stored.run.inputs["photo"])
    assert kept.parent == (tmp_path / "artifacts" / failed.run_id / "inputs").resolve()
    assert describe_image(await anyio.Path(kept).read_bytes()) == ("image/png", 11, 12)
    resumed = await engine.resume(failed.run_id)
    assert resumed.status == "succeeded"
    assert resumed.outputs["seen"].startswith("saw 1 image(s): image/png 11x12")
    await engine.aclose()


def seed_config(media: MediaServer, **extra: Any) -> EngineConfig:
    """The seed's aliases: text on the OpenAI-compatible server; image analysis on Gemini; images from the
    images API; videos from Veo."""
    base = config(media)
    models = {
        **{name: model.model_dump() for name, model in base.models.items()},
        "image_analysis_ai": {"provider": "gm", "model": "gemini-2.5-pro", "vision": True},
        "image_ai": {"provider": "oa", "model": "gpt-image-1", "generates": ["image"], "image_price": 0.04},
        "video_ai": {"provider": "gm", "model": "veo-3.1-generate-preview", "generates": ["video"],
                     "video_price": 0.4},
    }
    return EngineConfig.model_validate({**base.model_dump(), "models": models, "default_provider": "oa",
                                        **extra})


async def test_a_chat_message_with_an_image_goes_to_the_vision_alias_with_its_reason(
        media: MediaServer, tmp_path: Path) -> None:
    engine = await build(seed_config(media), artifacts=tmp_path, sleep=no_sleep)
    reply = await engine.chat("What does this label say?", image=make_png(40, 30), session_id="s1")
    assert reply.ok, reply.result.error
    assert reply.category == "V"
    assert reply.answer == "saw 1 image(s): image/png 40x30; text: What does this label say?"
    outputs = reply.result.outputs
    assert outputs["routed_by"] == "content"
    assert outputs["reason"] == "the message carries 1 image(s) (image/png 40x30), so V, whose model reads images"
    assert media.requests_of("generate")[-1]["path"] == "/v1beta/models/gemini-2.5-pro:generateContent"
    text_only = await engine.chat("Hello there", session_id="s1")  # the next turn, without an image
    assert text_only.ok and text_only.category != "V"
    assert "What does this label say?" in media.requests_of("chat")[-1]["body"]["messages"][-1]["content"]
    await engine.aclose()


async def test_on_the_embedded_model_a_chat_image_fails_saying_it_reads_text_only(tmp_path: Path) -> None:
    engine = await build(artifacts=tmp_path)
    reply = await engine.chat("What is this?", image=make_png(4, 4))
    assert not reply.ok
    assert "image_analysis_ai" in str(reply.result.error) and "image_analysis" in str(reply.result.error)
    with pytest.raises(WorkflowError, match="reads and writes text only"):
        engine.compile(engine.catalog.load_workflow("image_analysis"))


async def test_the_marketing_template_with_media_makes_copy_an_image_and_a_video(
        media: MediaServer, tmp_path: Path) -> None:
    import av

    engine = await build(seed_config(media), artifacts=tmp_path, sleep=no_sleep)
    campaign = engine.catalog.load_workflow("marketing_campaign")
    result = await engine.run(campaign, {"product": "eco-friendly water bottles", "media": True})
    assert result.status == "succeeded", result.error
    outputs = result.outputs
    assert "eco-friendly water bottles" in outputs["brief"] and outputs["posts"]["twitter"]
    image, video = outputs["image"], outputs["video"]
    assert describe_image(await anyio.Path(image["path"]).read_bytes())[0] == "image/png"
    with av.open(video["path"]) as container:
        assert sum(1 for _ in container.decode(video=0)) > 0
    assert result.tasks["visuals"].cost_usd == pytest.approx(0.04 + 8 * 0.4)
    assert result.totals.cost_usd >= 0.04 + 8 * 0.4
    plain = await engine.run(campaign, {"product": "lamps"})
    assert plain.status == "succeeded" and plain.outputs["image"] is None and plain.tasks["visuals"].status == "skipped"
    await engine.aclose()


async def test_the_seeds_campaign_request_is_planned_with_media_and_runs(media: MediaServer, tmp_path: Path) -> None:
    engine = await build(seed_config(media, planner={"mode": "guided"}), artifacts=tmp_path, sleep=no_sleep)
    request = ("Create a complete marketing campaign for eco-friendly water bottles including social media posts, "
               "product images, and a promotional video")
    outcome = await engine.plan_outcome(request)
    assert outcome.choice is not None and outcome.choice.name == "marketing_campaign"
    assert outcome.choice.inputs["media"] is True and "'images'" in outcome.choice.reason
    result = await engine.run(outcome.document or {})
    assert result.status == "succeeded", result.error
    assert result.outputs["image"]["media_type"] == "image/png"
    assert result.outputs["video"]["media_type"] == "video/mp4"
    await engine.aclose()


@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # uvicorn runs on asyncio
async def test_over_http_an_image_is_a_data_url_and_nothing_else_is_read(media: MediaServer, tmp_path: Path) -> None:
    import httpx

    from engine.server import create_app
    from tests.support.live_server import serving

    secret = tmp_path / "secret.png"
    secret.write_bytes(make_png(3, 3))
    engine = await build(seed_config(media), artifacts=tmp_path / "artifacts", sleep=no_sleep)
    async with serving(create_app(engine)) as base, httpx.AsyncClient(base_url=base, timeout=30) as client:
        described = (await client.get("/templates/image_analysis")).json()
        assert described["inputs"]["properties"]["image"]["format"] == "data-url"
        given = {"message": "What is this?", "image": data_url(make_png(30, 20))}
        answer = await client.post("/template/image_analysis", json=given)
        assert answer.status_code == 200, answer.text
        assert answer.json()["outputs"]["answer"] == "saw 1 image(s): image/png 30x20; text: What is this?"
        for value in (str(secret), f"{media.url}/files/x.png", {"path": str(secret)}):
            refused = await client.post("/template/image_analysis", json={**given, "image": value})
            assert refused.status_code == 422, refused.text
            assert "data: URL" in refused.text and "reads no path" in refused.text
        chat = await client.post("/chat", json={"message": "Describe it", "image": data_url(make_png(8, 8))})
        assert chat.status_code == 200 and chat.json()["category"] == "V", chat.text
        assert chat.json()["answer"].startswith("saw 1 image(s): image/png 8x8")
        sneaky = {"dsl": "orchestrion/v1", "name": "sneaky", "stages": [{"type": "inline", "tasks": [
            {"id": "t", "model": "eyes_openai", "prompt": "x", "images": [f"{{'path': '{secret}'}}"]}]}]}
        run = await client.post("/workflow", json={"workflow": sneaky})
        assert run.json()["status"] == "failed" and "not a file this engine generated" in run.text
    seen = [r for r in media.requests_of("chat") if "images" in str(r["body"]) and "3x3" in str(r["body"])]
    assert seen == []
    await engine.aclose()


@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # uvicorn runs on asyncio
async def test_the_openai_face_takes_image_parts_as_data_urls(media: MediaServer, tmp_path: Path) -> None:
    from engine.server import create_app
    from tests.support.live_server import serving

    engine = await build(seed_config(media), artifacts=tmp_path / "artifacts", sleep=no_sleep)
    picture = {"type": "image_url", "image_url": {"url": data_url(make_png(12, 34))}}
    async with serving(create_app(engine)) as base:
        client = openai.AsyncOpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)
        asked = [{"role": "user", "content": [{"type": "text", "text": "What is it?"}, picture]}]
        answer = await client.chat.completions.create(model="eyes_claude", messages=asked)  # type: ignore[arg-type]
        assert answer.choices[0].message.content == "saw 1 image(s): image/png 12x34; text: What is it?"
        template = await client.chat.completions.create(model="workflow:image_analysis", messages=asked)  # type: ignore[arg-type]
        assert template.choices[0].message.content == "saw 1 image(s): image/png 12x34; text: What is it?"
        by_url = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": f"{media.url}/a.png"}}]}]
        with pytest.raises(openai.BadRequestError, match="data: URL"):
            await client.chat.completions.create(model="eyes_claude", messages=by_url)  # type: ignore[arg-type]
        with pytest.raises(openai.UnprocessableEntityError) as refused:
            await client.chat.completions.create(model="writer", messages=asked)  # type: ignore[arg-type]
        assert "does not read images" in str(refused.value.body)
        await client.close()
    await engine.aclose()


async def test_a_gate_never_switches_an_image_call_to_a_model_that_cannot_read_it(
        media: MediaServer, tmp_path: Path) -> None:
    engine = await engine_for(media, tmp_path, gates=[{"above": 500, "use": "writer"}])
    before = len(media.requests_of("chat"))
    result = await engine.run(look(["eyes_claude", "eyes_openai"]), {"photo": make_png(1000, 1000)})
    assert result.status == "failed"
    assert "the gate above 500 tokens sends this call to writer, which cannot read images" in str(result.error)
    assert len(media.requests_of("chat")) == before  # nothing sent to the text model
    text_only = {"dsl": "orchestrion/v1", "name": "t", "stages": [{"type": "inline", "tasks": [
        {"id": "a", "model": "eyes_openai", "prompt": "word " * 600}]}], "outputs": {"a": "{{ a }}"}}
    switched = await engine.run(text_only)  # a call without images is switched as before
    assert switched.status == "succeeded" and switched.tasks["a"].model == "writer"
    await engine.aclose()


async def test_a_download_sends_the_key_to_the_providers_own_host_only(media: MediaServer) -> None:
    """A generated file on another host is fetched without the provider's headers, and over https only."""
    from engine import ModelError
    from engine.providers.http import HttpClientPool, download

    with running_media_server() as other:
        made = other.requests_of("file")
        pool = await anyio.to_thread.run_sync(
            lambda: HttpClientPool(media.url, {"x-goog-api-key": KEYS["gemini"]}, 10, 5, 4))
        with pytest.raises(ModelError, match="only https is fetched"):
            await download(pool, f"{other.url}/files/anything.png", "m")
        assert other.requests_of("file") == made  # not asked at all: no request, no key
        await pool.aclose()
        # The provider's own host redirecting to another one: the redirect is not followed with the key.
        redirect = _redirect_server(f"{other.url}/files/anything.png")
        pool = await anyio.to_thread.run_sync(
            lambda: HttpClientPool(redirect, {"x-goog-api-key": KEYS["gemini"]}, 10, 5, 4))
        with pytest.raises(ModelError, match="only https is fetched"):
            await download(pool, f"{redirect}/v1beta/files/x:download", "m")
        assert other.requests_of("file") == made
        await pool.aclose()


def _redirect_server(location: str) -> str:
    class Redirect(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(302)
            self.send_header("Location", location)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Redirect)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}"
