"""Orchestrion: a declarative workflow engine for multi-model LLM orchestration.

The names in ``__all__`` are the public API; every other module is private
and may change. Importing ``engine`` configures nothing and starts nothing, and
it is cheap: each name is imported from its module on first use (PEP 562), so
a program that only validates workflows never loads the runtime.

``_EXPORTS`` (name -> module) is the list of public names; a test checks that
``__all__`` and the type checkers' imports below say exactly the same.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    "Addon": "engine.addons",
    "load_addons": "engine.addons",
    "BatchBackend": "engine.batch",
    "BatchItem": "engine.batch",
    "LocalBackend": "engine.batch",
    "RayBackend": "engine.batch_ray",
    "Catalog": "engine.catalog",
    "DEFAULT_MODEL_ALIASES": "engine.catalog",
    "ChatReply": "engine.chat",
    "ChatSession": "engine.chat",
    "Plan": "engine.compiler",
    "compile_workflow": "engine.compiler",
    "EngineConfig": "engine.config",
    "load_config": "engine.config",
    "Engine": "engine.core",
    "PreparedRun": "engine.core",
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
    "RunFailedError": "engine.errors",
    "RunLimitError": "engine.errors",
    "TaskError": "engine.errors",
    "TemplateError": "engine.errors",
    "TemplateLimitError": "engine.errors",
    "TemplateSecurityError": "engine.errors",
    "WorkflowError": "engine.errors",
    "BreakerStateChanged": "engine.events",
    "CacheHit": "engine.events",
    "Event": "engine.events",
    "EventsDropped": "engine.events",
    "MediaSaved": "engine.events",
    "Image": "engine.model.media",
    "Generation": "engine.model.media",
    "Media": "engine.model.media",
    "GateApplied": "engine.events",
    "ModelCalled": "engine.events",
    "PlanCreated": "engine.events",
    "RunFinished": "engine.events",
    "RunStarted": "engine.events",
    "TaskFailed": "engine.events",
    "TaskFellBack": "engine.events",
    "TaskFinished": "engine.events",
    "TaskRetrying": "engine.events",
    "TaskSkipped": "engine.events",
    "TaskStarted": "engine.events",
    "TokenDelta": "engine.events",
    "event_from_dict": "engine.events",
    "to_dot": "engine.graph",
    "to_mermaid": "engine.graph",
    "Message": "engine.model.client",
    "ModelClient": "engine.model.client",
    "ModelRequest": "engine.model.client",
    "ModelResponse": "engine.model.client",
    "TextDelta": "engine.model.client",
    "Usage": "engine.model.client",
    "Price": "engine.model.prices",
    "PlanOutcome": "engine.planner",
    "RunResult": "engine.runtime.results",
    "TaskResult": "engine.runtime.results",
    "Totals": "engine.runtime.results",
    "workflow_json_schema": "engine.schema",
    "OtelTracing": "engine.tracing",
    "Reference": "engine.templating",
    "RenderLimits": "engine.templating",
    "TemplateRenderer": "engine.templating",
    "expression_references": "engine.templating",
    "template_references": "engine.templating",
}

__all__ = [
    "DEFAULT_MODEL_ALIASES",
    "Addon",
    "BatchBackend",
    "BatchItem",
    "BreakerStateChanged",
    "BudgetExceededError",
    "CacheHit",
    "Catalog",
    "CatalogError",
    "ChatReply",
    "ChatSession",
    "ConfigError",
    "Engine",
    "EngineConfig",
    "Event",
    "EventsDropped",
    "FunctionError",
    "GateApplied",
    "Generation",
    "Image",
    "InputError",
    "InvalidOutputError",
    "Limits",
    "LocalBackend",
    "Location",
    "Media",
    "MediaSaved",
    "Message",
    "ModelCalled",
    "ModelClient",
    "ModelError",
    "ModelRequest",
    "ModelResponse",
    "OrchestrionError",
    "OtelTracing",
    "Plan",
    "PlanCreated",
    "PlanOutcome",
    "PlanningError",
    "Policies",
    "PreparedRun",
    "Price",
    "Problem",
    "RayBackend",
    "Reference",
    "RenderLimits",
    "Repeat",
    "RetryPolicy",
    "RunEvents",
    "RunFailedError",
    "RunFinished",
    "RunLimitError",
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
    "load_config",
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


if TYPE_CHECKING:  # what type checkers and editors see ("X as X": an explicit re-export)
    from engine.addons import (
        Addon as Addon,
        load_addons as load_addons,
    )
    from engine.batch import (
        BatchBackend as BatchBackend,
        BatchItem as BatchItem,
        LocalBackend as LocalBackend,
    )
    from engine.batch_ray import (
        RayBackend as RayBackend,
    )
    from engine.catalog import (
        DEFAULT_MODEL_ALIASES as DEFAULT_MODEL_ALIASES,
        Catalog as Catalog,
    )
    from engine.chat import (
        ChatReply as ChatReply,
        ChatSession as ChatSession,
    )
    from engine.compiler import (
        Plan as Plan,
        compile_workflow as compile_workflow,
    )
    from engine.config import (
        EngineConfig as EngineConfig,
        load_config as load_config,
    )
    from engine.core import (
        Engine as Engine,
        PreparedRun as PreparedRun,
        RunEvents as RunEvents,
    )
    from engine.dsl.loader import (
        load_workflow as load_workflow,
        parse_workflow as parse_workflow,
    )
    from engine.dsl.models import (
        Limits as Limits,
        Policies as Policies,
        Repeat as Repeat,
        RetryPolicy as RetryPolicy,
        Stage as Stage,
        Task as Task,
        Workflow as Workflow,
    )
    from engine.errors import (
        BudgetExceededError as BudgetExceededError,
        CatalogError as CatalogError,
        ConfigError as ConfigError,
        FunctionError as FunctionError,
        InputError as InputError,
        InvalidOutputError as InvalidOutputError,
        Location as Location,
        ModelError as ModelError,
        OrchestrionError as OrchestrionError,
        PlanningError as PlanningError,
        Problem as Problem,
        RunFailedError as RunFailedError,
        RunLimitError as RunLimitError,
        TaskError as TaskError,
        TemplateError as TemplateError,
        TemplateLimitError as TemplateLimitError,
        TemplateSecurityError as TemplateSecurityError,
        WorkflowError as WorkflowError,
    )
    from engine.events import (
        BreakerStateChanged as BreakerStateChanged,
        CacheHit as CacheHit,
        Event as Event,
        EventsDropped as EventsDropped,
        GateApplied as GateApplied,
        MediaSaved as MediaSaved,
        ModelCalled as ModelCalled,
        PlanCreated as PlanCreated,
        RunFinished as RunFinished,
        RunStarted as RunStarted,
        TaskFailed as TaskFailed,
        TaskFellBack as TaskFellBack,
        TaskFinished as TaskFinished,
        TaskRetrying as TaskRetrying,
        TaskSkipped as TaskSkipped,
        TaskStarted as TaskStarted,
        TokenDelta as TokenDelta,
        event_from_dict as event_from_dict,
    )
    from engine.graph import (
        to_dot as to_dot,
        to_mermaid as to_mermaid,
    )
    from engine.model.client import (
        Message as Message,
        ModelClient as ModelClient,
        ModelRequest as ModelRequest,
        ModelResponse as ModelResponse,
        TextDelta as TextDelta,
        Usage as Usage,
    )
    from engine.model.media import (
        Generation as Generation,
        Image as Image,
        Media as Media,
    )
    from engine.model.prices import (
        Price as Price,
    )
    from engine.planner import (
        PlanOutcome as PlanOutcome,
    )
    from engine.runtime.results import (
        RunResult as RunResult,
        TaskResult as TaskResult,
        Totals as Totals,
    )
    from engine.schema import (
        workflow_json_schema as workflow_json_schema,
    )
    from engine.templating import (
        Reference as Reference,
        RenderLimits as RenderLimits,
        TemplateRenderer as TemplateRenderer,
        expression_references as expression_references,
        template_references as template_references,
    )
    from engine.tracing import (
        OtelTracing as OtelTracing,
    )
