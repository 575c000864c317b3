"""Sandboxed Jinja: rendering within limits, and static reference extraction."""

from engine.templating.references import Reference, expression_references, template_references
from engine.templating.sandbox import RenderLimits, TemplateRenderer

__all__ = ["Reference", "RenderLimits", "TemplateRenderer", "expression_references", "template_references"]
