"""Images and generated media, piece by piece: headers read, limits, token rules, the DSL, the checks."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import anyio
import jsonschema
import pytest

from engine import Engine, EngineConfig, Image, WorkflowError, load_workflow, workflow_json_schema
from engine.model.client import Message, ModelRequest, Usage
from engine.model.media import MAX_IMAGE_BYTES, MediaError, decode_data_url, image_tokens
from engine.model.prices import Price, estimate_usage
from engine.model.tokens import count_request
from engine.providers.fake import solid_png
from engine.testing import FakeModel
from tests.support.media_server import make_gif, make_image, make_jpeg, make_png

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize(("fmt", "media_type"), [("PNG", "image/png"), ("JPEG", "image/jpeg"), ("GIF", "image/gif"),
                                                 ("WEBP", "image/webp")])
def test_an_images_type_and_size_come_from_its_own_header(fmt: str, media_type: str) -> None:
    image = Image.from_bytes(make_image(fmt, 321, 123))
    assert (image.media_type, image.width, image.height) == (media_type, 321, 123)


def test_lossless_and_extended_webp_headers_are_read() -> None:
    from PIL import Image as Pillow

    for options in ({"lossless": True}, {"exif": b"Exif\x00\x00"}):  # VP8L, and VP8X (extended, with metadata)
        out = io.BytesIO()
        Pillow.new("RGB", (77, 33), (1, 2, 3)).save(out, format="WEBP", **options)
        image = Image.from_bytes(out.getvalue())
        assert (image.media_type, image.width, image.height) == ("image/webp", 77, 33)


def test_what_is_not_an_image_is_refused_before_it_is_read_further() -> None:
    with pytest.raises(MediaError, match="not a PNG, JPEG, GIF or WebP"):
        Image.from_bytes(b"%PDF-1.7 ...")
    with pytest.raises(MediaError, match="cut short"):
        Image.from_bytes(make_png(10, 10)[:20])
    with pytest.raises(MediaError, match="above the limit"):
        Image.from_bytes(b"\x89PNG" + bytes(MAX_IMAGE_BYTES))
    with pytest.raises(MediaError, match="not a base64 data URL"):
        decode_data_url("data:image/png,plain")
    with pytest.raises(MediaError, match="above the limit"):
        decode_data_url("data:image/png;base64," + "A" * (MAX_IMAGE_BYTES * 2))
    jpeg = make_jpeg(3, 4)
    assert repr(Image.from_bytes(jpeg, "cat.jpg")) == f"Image(image/jpeg 3x4, {len(jpeg)} bytes, 'cat.jpg')"


def _sized(width: int, height: int) -> Image:
    return Image(b"", "image/png", width, height)


@pytest.mark.parametrize(("size", "openai", "anthropic", "gemini"), [
    ((1000, 1000), 765, 1334, 1032),  # Anthropic's published example; OpenAI: 768x768, 4 tiles; Gemini: 4 tiles
    ((1024, 1024), 765, 1399, 1032),  # OpenAI's published example
    ((2048, 4096), 1105, 1534, 4644),  # OpenAI's published example (768x1536, 6 tiles); Gemini: 18 tiles
    ((512, 512), 255, 350, 258),
    ((200, 200), 255, 54, 258),
])
def test_image_tokens_follow_each_providers_published_rule(size: tuple[int, int], openai: int, anthropic: int,
                                                           gemini: int) -> None:
    image = _sized(*size)
    assert (image_tokens(image, "openai"), image_tokens(image, "anthropic"), image_tokens(image, "gemini")) == (
        openai, anthropic, gemini)
    assert image_tokens(image, None) == max(openai, anthropic, gemini)  # unknown provider: never undercount


async def test_a_requests_images_count_in_its_tokens_and_its_cost_estimate() -> None:
    image = _sized(1000, 1000)
    request = ModelRequest("m", (Message("user", "hi", (image,)),))
    plain = ModelRequest("m", (Message("user", "hi"),))
    by_openai = type("OpenAIish", (), {"image_rule": "openai"})()
    assert (await count_request(request, client=by_openai))[0] == (await count_request(plain))[0] + 765
    assert estimate_usage(request).input_tokens == estimate_usage(plain).input_tokens + 1334  # the largest rule


def test_generated_media_are_priced_per_image_and_per_second() -> None:
    price = Price(input=1.0, output=2.0, image=0.04, video_second=0.5)
    assert price.cost(Usage(1_000_000, 0, images=3)) == pytest.approx(1.0 + 0.12)
    assert price.cost(Usage(video_seconds=8)) == pytest.approx(4.0)


def workflow(task: dict[str, Any], inputs: dict[str, Any] | None = None) -> dict[str, Any]:
    model = {"model": "m"} if "prompt" in task else {}
    return {"dsl": "orchestrion/v1", "name": "w", "inputs": inputs or {},
            "stages": [{"type": "linear", "tasks": [{"id": "t", **model, **task}]}]}


@pytest.mark.parametrize(("task", "inputs", "where", "message"), [
    ({"prompt": "x", "generate": "video", "size": "10x10"}, None, "size", "`size` is for `generate: image`"),
    ({"prompt": "x", "generate": "image", "seconds": 5}, None, "seconds", "`seconds` is for `generate: video`"),
    ({"call": "f", "generate": "image"}, None, "generate", "goes with a `prompt`"),
    ({"prompt": "x", "size": "10x10"}, None, "size", "does not apply to a `prompt` task"),
    ({"call": "f", "images": ["a"]}, None, "images", "does not apply to a `call` task"),
    ({"prompt": "x", "generate": "image", "temperature": 0.2}, None, "temperature",
     "does not apply to a `generate` task"),
    ({"prompt": "x", "generate": "audio"}, None, "generate", "'image' or 'video'"),
    ({"prompt": "x", "generate": "image", "size": "big"}, None, "size", "must match"),
    ({"prompt": "x"}, {"photo": {"type": "image", "format": "png"}}, "format", "an image input takes"),
    ({"prompt": "x"}, {"photo": {"type": "image", "default": "cat.png"}}, "default", "can only be null"),
])
def test_the_dsl_refuses_media_fields_where_they_do_not_apply(task: dict[str, Any], inputs: dict[str, Any] | None,
                                                              where: str, message: str) -> None:
    document = workflow(task, inputs)
    with pytest.raises(WorkflowError) as caught:
        load_workflow(document)
    assert any(message in problem.message and problem.path[-1] == where for problem in caught.value.problems), [
        (problem.path, problem.message) for problem in caught.value.problems]
    schema_errors = list(jsonschema.Draft202012Validator(workflow_json_schema()).iter_errors(document))
    assert schema_errors, "the published JSON Schema lets it through"


def test_the_json_schema_accepts_the_media_tasks_the_models_accept() -> None:
    validator = jsonschema.Draft202012Validator(workflow_json_schema())
    for task, inputs in [({"prompt": "x", "generate": "image", "size": "64x64", "count": 2}, None),
                         ({"prompt": "x", "generate": "video", "seconds": 4, "aspect_ratio": "16:9"}, None),
                         ({"prompt": "x", "images": ["photo"]}, {"photo": {"type": "image", "default": None}})]:
        document = workflow(task, inputs)
        load_workflow(document)
        assert list(validator.iter_errors(document)) == []


def test_a_generation_by_a_model_that_does_not_make_it_fails_validation() -> None:
    engine = Engine(models=FakeModel(generates=["image"]), artifacts=Path("unused"))
    engine.compile(load_workflow(workflow({"prompt": "x", "generate": "image", "model": "fast_ai"})))
    with pytest.raises(WorkflowError) as caught:
        engine.compile(load_workflow(workflow({"prompt": "x", "generate": "video", "model": "fast_ai"})))
    problem, = caught.value.problems
    assert problem.code == "cannot-generate" and "`generates: [video]`" in (problem.hint or "")
    configured = Engine(EngineConfig.model_validate({
        "providers": {"dry": {"kind": "fake"}},
        "models": {"seer": {"provider": "dry", "vision": True}, "painter": {"provider": "dry", "generates": ["image"]},
                   "plain": {"provider": "dry"}}}))
    configured.compile(load_workflow(workflow({"prompt": "x", "images": ["photo"], "model": "seer"},
                                              {"photo": {"type": "image"}})))
    configured.compile(load_workflow(workflow({"prompt": "x", "generate": "image", "model": "painter"})))
    with pytest.raises(WorkflowError, match="does not read images"):
        configured.compile(load_workflow(workflow({"prompt": "x", "images": ["photo"], "model": "plain"},
                                                  {"photo": {"type": "image"}})))


async def test_with_the_fake_model_images_flow_through_a_run(tmp_path: Path) -> None:
    fake = FakeModel(vision={"fast_ai"}, generates=["image", "video"])
    engine = Engine(models=fake, artifacts=tmp_path)
    document = {"dsl": "orchestrion/v1", "name": "m", "inputs": {"photo": {"type": "image", "default": None}},
                "stages": [{"type": "inline", "tasks": [
                    {"id": "art", "model": "thinking_ai", "generate": "image", "prompt": "a {{ 'cat' }}",
                     "size": "12x8"},
                    {"id": "clip", "model": "thinking_ai", "generate": "video", "prompt": "a film"},
                    {"id": "look", "model": "fast_ai", "prompt": "describe", "images": ["photo", "[art, art]"]}]}],
                "outputs": {"look": "{{ look }}"}}
    result = await engine.run(document, {"photo": solid_png(3, 3, (9, 9, 9))})
    assert result.status == "succeeded", result.error
    assert result.outputs["look"] == "[fast_ai] describe [images: image/png 3x3, image/png 12x8, image/png 12x8]"
    assert fake.calls_to("thinking_ai")[0].prompt == "a cat"
    assert (await anyio.Path(result.tasks["clip"].output["path"]).read_bytes()).startswith(b"\x00\x00\x00\x18ftyp")
    skipped = await engine.run(document)  # the optional image absent: the other two still go
    assert skipped.outputs["look"].endswith("[images: image/png 12x8, image/png 12x8]")


async def test_the_embedded_model_refuses_images_with_a_clear_error() -> None:
    from engine.providers.llama_cpp import _text_only

    request = ModelRequest("fast_ai", (Message("user", "hi", (Image.from_bytes(make_gif(2, 2)),)),))
    with pytest.raises(Exception, match="reads and writes text only"):
        _text_only(request, "local")


@pytest.mark.parametrize("expression", ["'/etc/passwd'", "{'path': '/etc/hostname'}", "'https://example.com/a.png'",
                                        "{'path': photo_path}"])
async def test_a_tasks_images_are_never_read_from_a_path_a_workflow_names(expression: str, tmp_path: Path) -> None:
    """A workflow may come from the network or the planner: `images:` take image inputs and generated files
    only, so no string (nor a made-up output) makes the engine read a file of the host."""
    outside = tmp_path / "outside.png"
    outside.write_bytes(solid_png(2, 2, (0, 0, 0)))
    engine = Engine(models=FakeModel(vision=True), artifacts=tmp_path / "artifacts")
    document = workflow({"prompt": "x", "images": [expression], "model": "fast_ai"}, {"photo_path": {"type": "string"}})
    result = await engine.run(document, {"photo_path": str(outside)})
    assert result.status == "failed"
    assert "image input (`type: image`) or a `generate: image` task's output" in str(result.error) or \
        "is not a file this engine generated" in str(result.error)


def test_validate_checks_what_models_can_do_only_with_a_configuration(tmp_path: Path, monkeypatch: Any,
                                                                       capsys: Any) -> None:
    from engine.cli import main

    monkeypatch.chdir(tmp_path)
    flow = tmp_path / "look.yaml"
    flow.write_text(json.dumps(workflow({"prompt": "x", "images": ["photo"], "model": "seer"},
                                        {"photo": {"type": "image"}})))
    assert main(["validate", str(flow), "--model", "seer"]) == 0  # names only: no configuration
    (tmp_path / "orchestrion.yaml").write_text("providers: {dry: {kind: fake}}\nmodels: {seer: {provider: dry}}\n")
    assert main(["validate", str(flow)]) == 1
    printed = capsys.readouterr()
    assert "does not read images" in printed.out + printed.err
    (tmp_path / "orchestrion.yaml").write_text(
        "providers: {dry: {kind: fake}}\nmodels: {seer: {provider: dry, vision: true}}\n")
    assert main(["validate", str(flow)]) == 0


@pytest.mark.parametrize(("limits", "image", "says"), [
    ("ANTHROPIC", Image(b"x" * 10, "image/png", 9000, 10), "limit of 8000 pixels a side"),
    ("ANTHROPIC", Image(b"x" * (6 * 1024 * 1024), "image/png", 10, 10), "limit of 5 MB per image"),
    ("GEMINI", Image(b"x" * 10, "image/gif", 10, 10), "does not take image/gif"),
    ("OPENAI", Image(b"x" * (21 * 1024 * 1024), "image/png", 10, 10), "limit of 20 MB per image"),
])
def test_each_vendors_image_limits_are_checked_before_sending(limits: str, image: Image, says: str) -> None:
    from engine import ModelError
    from engine.providers import images as vendor

    request = ModelRequest("m", (Message("user", "x", (image,)),))
    with pytest.raises(ModelError, match=says) as refused:
        vendor.check_images(request, getattr(vendor, limits), "m")
    assert refused.value.kind == "bad_request"  # a fallback chain moves on to the next model


async def test_a_generations_price_is_reserved_against_the_runs_cost_limit(tmp_path: Path) -> None:
    fake = FakeModel(generates=["image"])
    engine = Engine(models=fake, artifacts=tmp_path, prices={"fast_ai": Price(image=0.04)})
    document = {**workflow({"prompt": "a cat", "generate": "image", "model": "fast_ai", "count": 3}),
                "limits": {"max_cost_usd": 0.10}}
    refused = await engine.run(document)
    assert refused.status == "failed" and refused.tasks["t"].error_kind == "budget"
    assert fake.calls == []  # three images at $0.04 would pass $0.10: refused before anything is asked
    document["stages"][0]["tasks"][0]["count"] = 2
    paid = await engine.run(document)
    assert paid.status == "succeeded" and paid.totals.cost_usd == pytest.approx(0.08)


def test_a_video_task_waits_900_s_unless_told() -> None:
    engine = Engine(models=FakeModel(generates=["image", "video"]), artifacts=Path("unused"))
    video = engine.compile(load_workflow(workflow({"prompt": "x", "generate": "video", "model": "fast_ai"})))
    told = engine.compile(load_workflow(workflow({"prompt": "x", "generate": "video", "model": "fast_ai",
                                                  "timeout": 60})))
    image = engine.compile(load_workflow(workflow({"prompt": "x", "generate": "image", "model": "fast_ai"})))
    assert [plan.nodes["t"].policies.timeout for plan in (video, told, image)] == [900.0, 60.0, 120.0]  # type: ignore[index,union-attr]
