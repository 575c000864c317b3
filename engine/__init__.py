"""Orchestrion: a declarative workflow engine for multi-model LLM orchestration.

The names in ``__all__`` are the public API; every other module is private
and may change. Importing ``engine`` configures nothing and starts nothing, and
it is cheap: each name is imported from its module on first use (PEP 562), so
a program that only validates workflows never loads the runtime.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    "Addon": "engine.addons",
    "load_addons": "engine.addons",
    "Catalog": "engine.catalog",
    "DEFAULT_MODEL_ALIASES": "engine.catalog",
    "Binding": "engine.compiler",
    "Node": "engine.compiler",
    "NodeId": "engine.compiler",
    "NodePolicies": "engine.compiler",
    "Plan": "engine.compiler",
    "RetrySpec": "engine.compiler",
    "compile_workflow": "engine.compiler",
    "Engine": "engine.core",
    "RunEvents": "engine.core",
    "load_workflow": "engine.dsl.loader",
    "parse_workflow": "engine.dsl.loader",
    "Limits": "engine.dsl.models",
    "Policies": "engine.dsl.models",
    "Repeat": "engine.dsl.models",
    "RetryPolicy": "engine.dsl.models",
    "Stage": "engine.dsl.models",
    "Task": "engine.dsl.models",
    "Workflow": "engine.dsl.models",
    "BudgetExceededError": "engine.errors",
    "CatalogError": "engine.errors",
    "ConfigError": "engine.errors",
    "FunctionError": "engine.errors",
    "InputError": "engine.errors",
    "InvalidOutputError": "engine.errors",
    "Location": "engine.errors",
    "ModelError": "engine.errors",
    "OrchestrionError": "engine.errors",
    "PlanningError": "engine.errors",
    "Problem": "engine.errors",
    "TaskError": "engine.errors",
    "TemplateError": "engine.errors",
    "TemplateLimitError": "engine.errors",
    "TemplateSecurityError": "engine.errors",
    "WorkflowError": "engine.errors",
    "to_dot": "engine.graph",
    "to_mermaid": "engine.graph",
    "Price": "engine.runtime.budget",
    "BreakerStateChanged": "engine.runtime.events",
    "PlanCreated": "engine.runtime.events",
    "Event": "engine.runtime.events",
    "EventsDropped": "engine.runtime.events",
    "GateApplied": "engine.runtime.events",
    "RunFinished": "engine.runtime.events",
    "RunStarted": "engine.runtime.events",
    "TaskFailed": "engine.runtime.events",
    "TaskFellBack": "engine.runtime.events",
    "TaskFinished": "engine.runtime.events",
    "TaskRetrying": "engine.runtime.events",
    "TaskSkipped": "engine.runtime.events",
    "TaskStarted": "engine.runtime.events",
    "TokenDelta": "engine.runtime.events",
    "event_from_dict": "engine.runtime.events",
    "Message": "engine.runtime.model",
    "ModelClient": "engine.runtime.model",
    "ModelRequest": "engine.runtime.model",
    "ModelResponse": "engine.runtime.model",
    "TextDelta": "engine.runtime.model",
    "Usage": "engine.runtime.model",
    "RunFailedError": "engine.runtime.results",
    "RunResult": "engine.runtime.results",
    "TaskResult": "engine.runtime.results",
    "Totals": "engine.runtime.results",
    "workflow_json_schema": "engine.schema",
    "Reference": "engine.templating",
    "RenderLimits": "engine.templating",
    "TemplateRenderer": "engine.templating",
    "expression_references": "engine.templating",
    "template_references": "engine.templating",
}

__all__ = [
    "DEFAULT_MODEL_ALIASES",
    "Addon",
    "Binding",
    "BreakerStateChanged",
    "BudgetExceededError",
    "Catalog",
    "CatalogError",
    "ConfigError",
    "Engine",
    "Event",
    "EventsDropped",
    "FunctionError",
    "GateApplied",
    "InputError",
    "InvalidOutputError",
    "Limits",
    "Location",
    "Message",
    "ModelClient",
    "ModelError",
    "ModelRequest",
    "ModelResponse",
    "Node",
    "NodeId",
    "NodePolicies",
    "OrchestrionError",
    "Plan",
    "PlanCreated",
    "PlanningError",
    "Policies",
    "Price",
    "Problem",
    "Reference",
    "RenderLimits",
    "Repeat",
    "RetryPolicy",
    "RetrySpec",
    "RunEvents",
    "RunFailedError",
    "RunFinished",
    "RunResult",
    "RunStarted",
    "Stage",
    "Task",
    "TaskError",
    "TaskFailed",
    "TaskFellBack",
    "TaskFinished",
    "TaskResult",
    "TaskRetrying",
    "TaskSkipped",
    "TaskStarted",
    "TemplateError",
    "TemplateLimitError",
    "TemplateRenderer",
    "TemplateSecurityError",
    "TextDelta",
    "TokenDelta",
    "Totals",
    "Usage",
    "Workflow",
    "WorkflowError",
    "__version__",
    "compile_workflow",
    "event_from_dict",
    "expression_references",
    "load_addons",
    "load_workflow",
    "parse_workflow",
    "template_references",
    "to_dot",
    "to_mermaid",
    "workflow_json_schema",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'engine' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


if TYPE_CHECKING:  # what type checkers and editors see
    from engine.addons import (
        Addon,
        load_addons,
    )
    from engine.catalog import (
        DEFAULT_MODEL_ALIASES,
        Catalog,
    )
    from engine.compiler import (
        Binding,
        Node,
        NodeId,
        NodePolicies,
        Plan,
        RetrySpec,
        compile_workflow,
    )
    from engine.core import (
        Engine,
        RunEvents,
    )
    from engine.dsl.loader import (
        load_workflow,
        parse_workflow,
    )
    from engine.dsl.models import (
        Limits,
        Policies,
        Repeat,
        RetryPolicy,
        Stage,
        Task,
        Workflow,
    )
    from engine.errors import (
        BudgetExceededError,
        CatalogError,
        ConfigError,
        FunctionError,
        InputError,
        InvalidOutputError,
        Location,
        ModelError,
        OrchestrionError,
        PlanningError,
        Problem,
        TaskError,
        TemplateError,
        TemplateLimitError,
        TemplateSecurityError,
        WorkflowError,
    )
    from engine.graph import (
        to_dot,
        to_mermaid,
    )
    from engine.runtime.budget import (
        Price,
    )
    from engine.runtime.events import (
        BreakerStateChanged,
        Event,
        EventsDropped,
        GateApplied,
        PlanCreated,
        RunFinished,
        RunStarted,
        TaskFailed,
        TaskFellBack,
        TaskFinished,
        TaskRetrying,
        TaskSkipped,
        TaskStarted,
        TokenDelta,
        event_from_dict,
    )
    from engine.runtime.model import (
        Message,
        ModelClient,
        ModelRequest,
        ModelResponse,
        TextDelta,
        Usage,
    )
    from engine.runtime.results import (
        RunFailedError,
        RunResult,
        TaskResult,
        Totals,
    )
    from engine.schema import (
        workflow_json_schema,
    )
    from engine.templating import (
        Reference,
        RenderLimits,
        TemplateRenderer,
        expression_references,
        template_references,
    )
