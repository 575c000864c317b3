"""The seam between Orchestrion and models: requests, responses, usage, token counts and prices.

Everything above it (the call pipeline, the runtime, the planner) talks to
models only through ``ModelClient``; providers implement it. It imports
nothing of the engine but the error tree.
"""

from engine.model.client import Message, ModelClient, ModelRequest, ModelResponse, TextDelta, Usage, build_request

__all__ = ["Message", "ModelClient", "ModelRequest", "ModelResponse", "TextDelta", "Usage", "build_request"]
