"""Routing: decide a category from a model's classification, or from keywords when it is unsure.

Registered in every engine as the function ``orchestrion.route``, so workflows route in the DSL::

    - id: guess                       # the model's opinion, as structured output
      model: router
      critical: false                 # if the model fails, the keywords decide
      prompt: "Classify: {{ question }}"
      output: {schema: {type: object, required: [category, confidence], properties: {
                 category: {enum: [finance, technical, general]}, confidence: {type: number}}}}
    - id: route
      call: orchestrion.route
      with: {text: "{{ question }}", model: "{{ guess }}", threshold: 0.6, default: general,
             rules: {finance: [invest, stock], technical: [python, code], general: []}}
    - id: finance
      when: route.category == 'finance'

Every decision says why: the message's content (an image goes to
``image_category`` when one is given: the seed's "if it contains an image, use
the image model"), the model and its confidence, the keywords that matched, or
that nothing did and the default applies.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any


def route(
    text: str,
    rules: Mapping[str, Sequence[str]],
    default: str,
    model: Mapping[str, Any] | None = None,
    threshold: float = 0.6,
    *,
    images: Any = None,
    image_category: str | None = None,
) -> dict[str, Any]:
    """The category for ``text``: ``image_category`` if the message carries ``images`` (an image, or a list),
    else the model's if it is confident enough, else by keywords, else ``default``."""
    carried = [image for image in (images if isinstance(images, list | tuple) else [images]) if image is not None]
    if carried and image_category is not None:
        what = ", ".join(str(getattr(image, "media_type", "an image")) + _size(image) for image in carried)
        return {"category": image_category, "confidence": 1.0, "by": "content",
                "reason": f"the message carries {len(carried)} image(s) ({what}), so {image_category}, "
                          "whose model reads images"}
    categories = set(rules) | {default}
    if isinstance(model, Mapping):
        category, confidence = model.get("category"), model.get("confidence")
        if category in categories and isinstance(confidence, int | float) and confidence >= threshold:
            return {"category": category, "confidence": float(confidence), "by": "model",
                    "reason": f"the model chose {category} with confidence {confidence:.2f} (threshold {threshold})"}
        why = (f"the model's answer ({category}, confidence {confidence}) is below the threshold {threshold} "
               "or not a known category")
    else:
        why = "the model gave no answer"
    scores = {name: _matches(text, words) for name, words in rules.items()}
    best = max(scores, key=lambda name: (len(scores[name]), name == default), default=default)
    if not scores or not scores[best]:
        return {"category": default, "confidence": 0.0, "by": "default", "matched": [],
                "reason": f"{why}; no keyword matched, so {default}"}
    matched = scores[best]
    total = sum(len(found) for found in scores.values())
    return {"category": best, "confidence": round(len(matched) / total, 3), "by": "keywords", "matched": matched,
            "reason": f"{why}; keywords matched for {best}: {', '.join(matched)}"}


def _size(image: Any) -> str:
    width, height = getattr(image, "width", None), getattr(image, "height", None)
    return f" {width}x{height}" if width and height else ""


def _matches(text: str, words: Sequence[str]) -> list[str]:
    lowered = text.lower()
    return [word for word in words if re.search(rf"\b{re.escape(word.lower())}\b", lowered)]


def identity(value: Any = None) -> Any:
    """Its argument: names a value in the DSL (in a repeated stage, a task placed before the producer
    reads the previous round's value, which is how a loop remembers)."""
    return value


def append(items: Sequence[Any] | None, item: Any) -> list[Any]:
    """``items`` (null in a loop's first round) with ``item`` added: a loop's history."""
    return [*(items or []), item]


BUILTIN_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "orchestrion.route": route, "orchestrion.identity": identity, "orchestrion.append": append,
}
