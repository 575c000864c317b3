"""A catalog whose models can do what the shipped media templates ask: ``image_analysis_ai`` reads
images, ``image_ai`` and ``video_ai`` make them (an engine configured with such models knows it)."""

from __future__ import annotations

from engine import Catalog

VISION = frozenset({"image_analysis_ai"})
GENERATORS = {"image": frozenset({"image_ai"}), "video": frozenset({"video_ai"})}


def able_catalog() -> Catalog:
    return Catalog.default(vision=VISION, generators=GENERATORS)
