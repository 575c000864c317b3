"""The HTTP adapter (``orchestrion[server]``): ``create_app(engine)`` and ``orchestrion serve``.

Routes: the seed systems' (``/chat``, ``/workflow``, ``/template/{name}``,
``/templates``, ``/models``, ``/addons``, ``/health``, ``/stats``), ``/runs``
with live events (SSE and WebSocket), an OpenAI-compatible ``/v1``, and the
run viewer at ``/``. See ``engine.server.app``.
"""

from __future__ import annotations

try:
    import fastapi  # noqa: F401
except ImportError as error:  # pragma: no cover - depends on the installed extras
    raise ImportError("the HTTP adapter needs its extra: pip install 'orchestrion[server]'") from error

from engine.server.app import create_app
from engine.server.settings import ServerSettings

__all__ = ["ServerSettings", "create_app"]
