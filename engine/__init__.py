"""Orchestrion: a declarative workflow engine for multi-model LLM orchestration.

The names in ``__all__`` are the public API; every other module is private
and may change. Importing ``engine`` configures nothing and starts nothing.
"""

from engine.addons import Addon, load_addons
from engine.catalog import DEFAULT_MODEL_ALIASES, Catalog
from engine.compiler import Binding, Node, NodeId, NodePolicies, Plan, RetrySpec, compile_workflow
from engine.dsl.loader import load_workflow, parse_workflow
from engine.dsl.models import Limits, Policies, Repeat, RetryPolicy, Stage, Task, Workflow
from engine.errors import (
    CatalogError,
    Location,
    OrchestrionError,
    Problem,
    TemplateError,
    TemplateLimitError,
    TemplateSecurityError,
    WorkflowError,
)
from engine.graph import to_dot, to_mermaid
from engine.schema import workflow_json_schema
from engine.templating import Reference, RenderLimits, TemplateRenderer, expression_references, template_references

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_MODEL_ALIASES",
    "Addon",
    "Binding",
    "Catalog",
    "CatalogError",
    "Limits",
    "Location",
    "Node",
    "NodeId",
    "NodePolicies",
    "OrchestrionError",
    "Plan",
    "Policies",
    "Problem",
    "Reference",
    "RenderLimits",
    "Repeat",
    "RetryPolicy",
    "RetrySpec",
    "Stage",
    "Task",
    "TemplateError",
    "TemplateLimitError",
    "TemplateRenderer",
    "TemplateSecurityError",
    "Workflow",
    "WorkflowError",
    "__version__",
    "compile_workflow",
    "expression_references",
    "load_addons",
    "load_workflow",
    "parse_workflow",
    "template_references",
    "to_dot",
    "to_mermaid",
    "workflow_json_schema",
]
