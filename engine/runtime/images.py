"""Images in a run: inputs read as images, images a prompt task sends, media a generation wrote.

An image input (``{type: image}``) of a top-level run may be given as an ``Image``, bytes,
a ``data:`` URL, an ``http(s)`` URL (fetched, bounded), or a file's path: the caller is the
application or the command line, who may read its own files (the HTTP adapter takes data:
URLs only). It is read once, before the run starts, and checked (``engine.model.media``).
What a run keeps of it (the run store, events) is a file's path: an image given as bytes or
a URL is first written under the run's artefact folder, so a resumed run reads the same bytes.

Generated media are written under that folder too, named by their content, and a task's
output names them. A task's ``images:`` take only images: an image input, or a generated
file inside the artefact folder. A string there is refused, never read as a path, so a
workflow (which may come from the network or the planner) cannot read a file of the host.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import anyio

from engine.dsl.models import is_image_input
from engine.errors import InputError, TaskError
from engine.model.media import MAX_IMAGE_BYTES, Image, Media, MediaError, decode_data_url, sniff

FETCH_TIMEOUT = 30.0  # seconds to fetch an image given by URL


async def load_image_inputs(declared: Mapping[str, Mapping[str, Any]], values: dict[str, Any],
                            folder: Path | None) -> dict[str, Any]:
    """``values`` with each image input read as an ``Image`` (and written to ``folder`` if it has no file
    of its own); InputError naming every input that is not a readable image."""
    problems, loaded = [], dict(values)
    for name, schema in declared.items():
        if not is_image_input(schema) or values.get(name) is None:
            continue
        try:
            image = await load_image(values[name], f"input {name!r}")
        except MediaError as error:
            problems.append(str(error))
            continue
        if image.path is None and folder is not None:
            image = await anyio.to_thread.run_sync(_keep, image, folder / "inputs", name)
        loaded[name] = image
    if problems:
        raise InputError(sorted(problems))
    return loaded


async def load_image(value: Any, what: str) -> Image:
    """An ``Image`` from what a caller or a task's output gives; MediaError says why not."""
    if isinstance(value, Image):
        return value
    if isinstance(value, bytes | bytearray):
        return Image.from_bytes(bytes(value), f"{what} (bytes)")
    if isinstance(value, Mapping) and isinstance(value.get("path"), str):  # a `generate: image` output
        return await _read_file(Path(value["path"]), what)
    if not isinstance(value, str):
        raise MediaError(f"{what}: an image is a path, a data: or https URL, or bytes, not a {type(value).__name__}")
    if value.startswith("data:"):
        return Image.from_bytes(decode_data_url(value, what), f"{what} (a data URL)")
    if value.startswith(("https://", "http://")):
        return await _fetch(value, what)
    return await _read_file(Path(value), what)


async def _read_file(path: Path, what: str) -> Image:
    def read() -> Image:
        try:
            size = path.stat().st_size
            if size > MAX_IMAGE_BYTES:
                raise MediaError(f"{what}: {path} is {size:,} bytes, above the limit of {MAX_IMAGE_BYTES:,} per image")
            return Image.from_bytes(path.read_bytes(), str(path), str(path.resolve()))
        except OSError as error:
            raise MediaError(f"{what}: cannot read {path}: {error.strerror or error}") from None

    return await anyio.to_thread.run_sync(read)


async def _fetch(url: str, what: str) -> Image:
    import httpx

    chunks, size = [], 0
    try:
        async with httpx.AsyncClient(timeout=FETCH_TIMEOUT, follow_redirects=True) as client, \
                client.stream("GET", url) as response:
            if response.status_code >= 400:
                raise MediaError(f"{what}: fetching {url} answered HTTP {response.status_code}")
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > MAX_IMAGE_BYTES:
                    raise MediaError(f"{what}: {url} is larger than the limit of {MAX_IMAGE_BYTES:,} bytes per image")
                chunks.append(chunk)
    except httpx.HTTPError as error:
        raise MediaError(f"{what}: cannot fetch {url}: {type(error).__name__}") from None
    return Image.from_bytes(b"".join(chunks), url)


def _keep(image: Image, folder: Path, name: str) -> Image:
    path = _write(folder, name, image.data, image.suffix)
    return Image(image.data, image.media_type, image.width, image.height, image.name, str(path))


def _write(folder: Path, stem: str, data: bytes, suffix: str) -> Path:
    """``folder/stem-<hash of data><suffix>``: the same bytes land in the same file, once."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{stem}-{hashlib.sha256(data).hexdigest()[:16]}{suffix}"
    if not path.exists():
        partial = path.with_suffix(path.suffix + ".part")
        partial.write_bytes(data)
        partial.replace(path)  # never a half-written file under the final name
    return path.resolve()


async def images_for(values: Sequence[Any], task_id: str, artifacts: Path | None) -> tuple[Image, ...]:
    """The images a prompt task's ``images:`` expressions gave (a list counts each; null counts none): image
    inputs, or files a ``generate:`` task wrote under ``artifacts``. Anything else is a TaskError."""
    found: list[Image] = []
    for value in values:
        for item in value if isinstance(value, list | tuple) else (value,):
            if item is None:
                continue
            try:
                found.append(await _task_image(item, artifacts, f"task {task_id!r}: an image"))
            except MediaError as error:
                raise TaskError(str(error), task_id=task_id) from None
    return tuple(found)


async def _task_image(value: Any, artifacts: Path | None, what: str) -> Image:
    if isinstance(value, Image):
        return value
    path = value.get("path") if isinstance(value, Mapping) else None
    if not isinstance(path, str):
        raise MediaError(f"{what} is an image input (`type: image`) or a `generate: image` task's output, "
                         f"not a {type(value).__name__}")
    def inside() -> bool:  # resolved (symbolic links followed) off the event loop
        return artifacts is not None and Path(path).resolve().is_relative_to(artifacts.resolve())

    if not await anyio.to_thread.run_sync(inside):
        raise MediaError(f"{what}: {path} is not a file this engine generated (under its artefact folder)")
    return await _read_file(Path(path), what)


async def save_media(media: Sequence[Media], folder: Path, task_id: str, cost_usd: float) -> list[dict[str, Any]]:
    """Write generated media under ``folder``; what the task's output says of each file."""
    def write() -> list[dict[str, Any]]:
        files = []
        for item in media:
            path = _write(folder, task_id, item.data, item.suffix)
            entry: dict[str, Any] = {"path": str(path), "media_type": item.media_type, "bytes": len(item.data),
                                     "cost_usd": cost_usd / len(media)}
            if item.media_type.startswith("image/"):
                with contextlib.suppress(MediaError):  # a type whose size we do not read: kept as it came
                    _, entry["width"], entry["height"] = sniff(item.data)
            files.append(entry)
        return files

    return await anyio.to_thread.run_sync(write)


def plain_inputs(values: Mapping[str, Any]) -> dict[str, Any]:
    """The inputs as JSON: an image as its file's path (a data URL if it has none)."""
    return {name: (value.path or value.data_url()) if isinstance(value, Image) else value
            for name, value in values.items()}
