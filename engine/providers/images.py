"""What each provider accepts of images, checked before a request is sent, and the media a
generation answers with, read from a provider's base64 or downloaded.

Limits as the vendors publish them: OpenAI takes PNG, JPEG, WebP and GIF up to 20 MB
each; Anthropic the same types up to 5 MB and 8,000 pixels a side; Gemini PNG, JPEG and
WebP (no GIF) inline, up to 20 MB for the whole request. A request past a limit is a
``bad_request`` naming the limit, so a fallback chain moves on to a model that takes it.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

from engine.errors import ModelError
from engine.model.client import ModelRequest
from engine.model.media import Media

MB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class ImageLimits:
    vendor: str
    types: tuple[str, ...]
    max_bytes: int  # per image
    max_side: int | None = None  # pixels
    max_request_bytes: int | None = None  # all the images of one request


OPENAI = ImageLimits("OpenAI", ("image/png", "image/jpeg", "image/webp", "image/gif"), 20 * MB)
ANTHROPIC = ImageLimits("Anthropic", ("image/png", "image/jpeg", "image/webp", "image/gif"), 5 * MB, 8000)
GEMINI = ImageLimits("Gemini", ("image/png", "image/jpeg", "image/webp"), 20 * MB, max_request_bytes=20 * MB)


def check_images(request: ModelRequest, limits: ImageLimits, model: str) -> None:
    """ModelError ``bad_request`` for the first image the vendor would refuse, naming the limit."""
    total = 0
    for message in request.messages:
        for image in message.images:
            about = f"{image.name or 'an image'} ({image.media_type} {image.width}x{image.height}, " \
                    f"{len(image.data):,} bytes)"
            if image.media_type not in limits.types:
                raise ModelError("bad_request", f"{limits.vendor} ({model}) does not take {image.media_type} images: "
                                 f"{about}; it takes {', '.join(limits.types)}", model=model)
            if len(image.data) > limits.max_bytes:
                raise ModelError("bad_request", f"{about} is above {limits.vendor}'s limit of "
                                 f"{limits.max_bytes // MB} MB per image ({model})", model=model)
            if limits.max_side is not None and max(image.width, image.height) > limits.max_side:
                raise ModelError("bad_request", f"{about} is above {limits.vendor}'s limit of "
                                 f"{limits.max_side} pixels a side ({model})", model=model)
            total += len(image.data)
    if limits.max_request_bytes is not None and total > limits.max_request_bytes:
        raise ModelError("bad_request", f"the request's images ({total:,} bytes) are above {limits.vendor}'s limit "
                         f"of {limits.max_request_bytes // MB} MB of inline data per request ({model})", model=model)


def media_from_base64(data: object, media_type: str, model: str) -> Media:
    """A generated file sent as base64 (a server_error if it is not)."""
    if not isinstance(data, str):
        raise ModelError("server_error", f"{model} sent a generated file without its data", model=model)
    try:
        return Media(base64.b64decode(data, validate=True), media_type)
    except (binascii.Error, ValueError):
        raise ModelError("server_error", f"{model} sent a generated file whose base64 is not valid",
                         model=model) from None


def refuse_generation(request: ModelRequest, vendor: str, model: str, supported: tuple[str, ...] = ()) -> None:
    """A bad_request for a generation this provider does not make."""
    assert request.generate is not None
    makes = f" (it makes {', '.join(supported)})" if supported else ""
    raise ModelError("bad_request", f"{vendor} ({model}) cannot generate {request.generate.media}{makes}",
                     model=model)
