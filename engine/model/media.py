"""Images and generated media on the model seam: what a message carries and what a model makes.

An ``Image`` is bytes whose type and size were read from their own header (PNG,
JPEG, GIF, WebP), never from a file name or a declared type, and checked against
``MAX_IMAGE_BYTES`` before anything else reads them. Nothing here decodes pixels:
the header is enough to check a provider's limits and to count the image's tokens
by each provider's published rule (``image_tokens``), so the gates still hold.

A ``Generation`` asks a model for images or a video instead of text; the answer's
``Media`` are the files' bytes, which the runtime writes under the run's
artefact directory.
"""

from __future__ import annotations

import base64
import binascii
import math
import struct
from dataclasses import dataclass
from typing import Literal

MAX_IMAGE_BYTES = 20 * 1024 * 1024  # the engine's cap on one image, before any provider's own
SUFFIXES = {"image/png": ".png", "image/jpeg": ".jpg", "image/gif": ".gif", "image/webp": ".webp",
            "video/mp4": ".mp4", "video/webm": ".webm", "video/quicktime": ".mov"}


class MediaError(ValueError):
    """Bytes that are not an image this engine reads, or past a limit."""


@dataclass(frozen=True, slots=True, eq=False)
class Image:
    """An image to send with a message: its bytes, their type and size as their header says."""

    data: bytes
    media_type: str
    width: int
    height: int
    name: str = ""  # where it came from (a file's path, "a data URL"), for messages; never its content
    path: str | None = None  # a file holding exactly these bytes, if there is one (kept by the run store)

    @classmethod
    def from_bytes(cls, data: bytes, name: str = "bytes", path: str | None = None) -> Image:
        """The image in ``data``; MediaError if it is too large or not a PNG, JPEG, GIF or WebP."""
        if len(data) > MAX_IMAGE_BYTES:
            raise MediaError(f"{name}: {len(data):,} bytes, above the limit of {MAX_IMAGE_BYTES:,} bytes per image")
        media_type, width, height = sniff(data, name)
        return cls(data, media_type, width, height, name, path)

    def base64(self) -> str:
        return base64.b64encode(self.data).decode("ascii")

    def data_url(self) -> str:
        return f"data:{self.media_type};base64,{self.base64()}"

    @property
    def suffix(self) -> str:
        return SUFFIXES[self.media_type]

    def __repr__(self) -> str:
        return f"Image({self.media_type} {self.width}x{self.height}, {len(self.data):,} bytes, {self.name!r})"

    __str__ = __repr__  # a template that prints an image shows what it is, not its bytes


def decode_data_url(url: str, name: str = "a data URL") -> bytes:
    """The bytes of a ``data:<type>;base64,...`` URL (MediaError if it is not one, or too large)."""
    header, comma, payload = url.partition(",")
    if not comma or not header.startswith("data:") or not header.endswith(";base64"):
        raise MediaError(f"{name}: not a base64 data URL (data:image/png;base64,...)")
    if len(payload) > MAX_IMAGE_BYTES * 4 // 3 + 4:  # before decoding: the bound applies to what allocates
        raise MediaError(f"{name}: above the limit of {MAX_IMAGE_BYTES:,} bytes per image")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise MediaError(f"{name}: the data URL's base64 is not valid") from None


def sniff(data: bytes, name: str = "bytes") -> tuple[str, int, int]:
    """(media type, width, height) from the header of a PNG, JPEG, GIF or WebP."""
    try:
        if data.startswith(b"\x89PNG\r\n\x1a\n") and data[12:16] == b"IHDR":
            width, height = struct.unpack(">II", data[16:24])
            return _sized("image/png", width, height, name)
        if data.startswith((b"GIF87a", b"GIF89a")):
            width, height = struct.unpack("<HH", data[6:10])
            return _sized("image/gif", width, height, name)
        if data.startswith(b"RIFF") and data[8:12] == b"WEBP":
            return _sized("image/webp", *_webp_size(data), name)
        if data.startswith(b"\xff\xd8"):
            return _sized("image/jpeg", *_jpeg_size(data), name)
    except (struct.error, IndexError):
        raise MediaError(f"{name}: the image's header is cut short") from None
    raise MediaError(f"{name}: not a PNG, JPEG, GIF or WebP image (its first bytes are {data[:8]!r})")


def _sized(media_type: str, width: int, height: int, name: str) -> tuple[str, int, int]:
    if width <= 0 or height <= 0:
        raise MediaError(f"{name}: a {media_type} of {width}x{height} pixels")
    return media_type, width, height


def _webp_size(data: bytes) -> tuple[int, int]:
    chunk = data[12:16]
    if chunk == b"VP8X":
        return int.from_bytes(data[24:27], "little") + 1, int.from_bytes(data[27:30], "little") + 1
    if chunk == b"VP8L":
        bits = int.from_bytes(data[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8 ":
        width, height = struct.unpack("<HH", data[26:30])
        return width & 0x3FFF, height & 0x3FFF
    raise struct.error("unknown WebP chunk")


_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # start-of-frame: the size follows


def _jpeg_size(data: bytes) -> tuple[int, int]:
    """Walk the JPEG's segments to its start-of-frame, which holds the size."""
    index = 2
    while index + 9 < len(data):
        if data[index] != 0xFF:
            raise struct.error("not a JPEG segment")
        marker = data[index + 1]
        if marker == 0xFF:  # fill byte
            index += 1
            continue
        length = struct.unpack(">H", data[index + 2:index + 4])[0]
        if marker in _SOF_MARKERS:
            height, width = struct.unpack(">HH", data[index + 5:index + 9])
            return width, height
        index += 2 + length
    raise struct.error("no start-of-frame segment")


# --- tokens -------------------------------------------------------------------------------------------

ImageRule = Literal["openai", "anthropic", "gemini"]


def image_tokens(image: Image, rule: ImageRule | None) -> int:
    """The tokens ``image`` counts as, by its provider's published rule; by the largest of them when
    the provider is unknown (a gate must never undercount)."""
    width, height = image.width, image.height
    if rule == "openai":
        return _openai_tokens(width, height)
    if rule == "anthropic":
        return _anthropic_tokens(width, height)
    if rule == "gemini":
        return _gemini_tokens(width, height)
    return max(_openai_tokens(width, height), _anthropic_tokens(width, height), _gemini_tokens(width, height))


def _openai_tokens(width: int, height: int) -> int:
    """High detail: fit in 2048x2048, then the shorter side down to 768; 170 per 512-pixel tile, plus 85."""
    scale = min(1.0, 2048 / max(width, height))
    scale *= min(1.0, 768 / (min(width, height) * scale))
    return 85 + 170 * math.ceil(width * scale / 512) * math.ceil(height * scale / 512)


def _anthropic_tokens(width: int, height: int) -> int:
    """width x height / 750, after scaling to at most 1568 pixels on the long side and 1.15 megapixels."""
    scale = min(1.0, 1568 / max(width, height), math.sqrt(1_150_000 / (width * height)))
    return math.ceil(width * scale * height * scale / 750)


def _gemini_tokens(width: int, height: int) -> int:
    """258 for an image within 384x384; a larger one is cut into 768x768 tiles of 258 each."""
    if width <= 384 and height <= 384:
        return 258
    return 258 * math.ceil(width / 768) * math.ceil(height / 768)


# --- generation -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Generation:
    """What a ``generate:`` task asks for: images or a video, and how many, how large, how long."""

    media: Literal["image", "video"]
    count: int = 1
    size: str | None = None  # "1024x1024"
    seconds: int | None = None  # a video's length
    aspect_ratio: str | None = None  # "16:9" (video)

    def estimate(self) -> tuple[int, float]:
        """(images, video seconds) a call may produce at most, for the budget's reservation."""
        if self.media == "image":
            return self.count, 0.0
        return 0, float(self.count * (self.seconds or DEFAULT_VIDEO_SECONDS))


DEFAULT_VIDEO_SECONDS = 8  # Veo's default length


@dataclass(frozen=True, slots=True, eq=False)
class Media:
    """A file a model made: its bytes and media type (its size in pixels when the header says)."""

    data: bytes
    media_type: str

    @property
    def suffix(self) -> str:
        return SUFFIXES.get(self.media_type, ".bin")

    def __repr__(self) -> str:
        return f"Media({self.media_type}, {len(self.data):,} bytes)"
