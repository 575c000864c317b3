"""Images over HTTP: an image input in a request is a ``data:`` URL, decoded here.

The engine reads an image input given as a path or a URL (its caller is the
application, reading its own files); a request from the network must never make
the server read one of its files or fetch a URL for it, so anything but a data:
URL is refused with a 422 naming the input. Forms and clients see an image input
as a string that holds a data: URL (``public_schema``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from engine.dsl.models import Workflow, is_image_input
from engine.errors import InputError
from engine.model.media import Image, MediaError, decode_data_url

NOT_A_DATA_URL = ("an image sent over HTTP is a data: URL (data:image/png;base64,...): the server reads no path "
                  "and fetches no URL for a request")


def network_inputs(workflow: Workflow, inputs: Mapping[str, Any]) -> dict[str, Any]:
    """``inputs`` with each image input's data: URL decoded into an Image; InputError for anything else."""
    values, problems = dict(inputs), []
    for name, schema in workflow.inputs.items():
        if is_image_input(schema) and values.get(name) is not None:
            try:
                values[name] = network_image(values[name], f"input {name!r}")
            except MediaError as error:
                problems.append(str(error))
    if problems:
        raise InputError(sorted(problems))
    return values


def network_image(value: Any, what: str) -> Image:
    if not isinstance(value, str) or not value.startswith("data:"):
        raise MediaError(f"{what}: {NOT_A_DATA_URL}")
    return Image.from_bytes(decode_data_url(value, what), f"{what} (a data URL)")


def public_schema(schema: Mapping[str, Any]) -> dict[str, Any]:
    """An input's JSON Schema as a client sends it: an image input is a string holding a data: URL."""
    if not is_image_input(schema):
        return dict(schema)
    optional = "default" in schema
    public: dict[str, Any] = {"type": ["string", "null"] if optional else "string", "pattern": "^data:image/",
                              "contentMediaType": "image/*", "format": "data-url",
                              "description": schema.get("description") or "An image, as a data: URL"}
    if optional:
        public["default"] = None
    return public
