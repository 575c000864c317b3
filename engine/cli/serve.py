"""``orchestrion serve``: the HTTP adapter under uvicorn, with a drain on SIGTERM.

On SIGTERM or Ctrl-C the server takes no new runs, ends every event stream
with a ``shutdown`` event (else uvicorn waits on open streams forever), lets
running runs finish for ``--drain`` seconds and cancels the rest, which stay
checkpointed in the store (``orchestrion resume`` goes on with them).
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import sys
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, TextIO

from engine.cli.options import add_options, build_engine

if TYPE_CHECKING:
    import uvicorn

    from engine.server.hub import RunHub

LOOPBACK = frozenset({"127.0.0.1", "::1", "localhost"})


def add_parser(commands: Any) -> None:
    serve = commands.add_parser("serve", help="serve templates, workflows, chat and runs over HTTP "
                                              "(needs orchestrion[server])")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    serve.add_argument("--tokens-file", type=Path, metavar="FILE",
                       help="bearer tokens, one per line (also $ORCHESTRION_API_TOKENS, comma-separated); "
                            "without any, no authentication")
    serve.add_argument("--max-body", type=int, default=1 << 20, metavar="BYTES",
                       help="larger request bodies get 413 (default: 1 MiB)")
    serve.add_argument("--max-runs", type=int, default=32, metavar="N",
                       help="runs in flight per token; one more gets 429 (default: 32)")
    serve.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                       help="an origin browsers may call from (default: CORS off)")
    serve.add_argument("--drain", type=float, default=30.0, metavar="SECONDS",
                       help="on shutdown, how long running runs may finish before they are cancelled (default: 30)")
    serve.add_argument("--dry-run", action="store_true",
                       help="answer every model alias with a fake model that echoes the prompt; nothing is sent")
    add_options(serve, "addons", "templates", "config", "store")
    serve.set_defaults(handler=serve_command)


def serve_command(args: argparse.Namespace, out: TextIO) -> int:
    try:
        import uvicorn

        from engine.server import ServerSettings, create_app
    except ImportError:
        print("orchestrion: serving needs its extra: pip install 'orchestrion[server]'", file=sys.stderr)
        return 2
    settings = ServerSettings.from_environment(
        args.tokens_file, max_body_bytes=args.max_body, max_runs_per_token=args.max_runs,
        cors_origins=tuple(args.cors_origin), drain_seconds=args.drain)
    if args.host not in LOOPBACK and not settings.tokens:
        print(f"orchestrion: warning: serving on {args.host} with no API tokens: anyone who reaches it runs "
              "workflows on your keys (--tokens-file or $ORCHESTRION_API_TOKENS)", file=sys.stderr)
    engine = build_engine(args)
    app = create_app(engine, settings, close_engine=True)  # in the lifespan: uvicorn ends the process by
    # raising SIGTERM again once it has shut down, so nothing after server.serve() would run
    config = uvicorn.Config(app, host=args.host, port=args.port, lifespan="on", log_level="info",
                            ws="websockets-sansio", timeout_graceful_shutdown=int(settings.drain_seconds) + 5)
    server = _draining_server(config, app.state.orchestrion.hub)
    print(f"orchestrion: serving on http://{args.host}:{args.port} (the run viewer at /, the API at /docs)",
          file=out, flush=True)

    asyncio.run(server.serve())
    return 0 if server.started else 1


def _draining_server(config: uvicorn.Config, hub: RunHub) -> uvicorn.Server:
    """uvicorn's Server, which on a shutdown signal first tells the hub to drain (on the loop's thread:
    uvicorn's handler runs in the signal's context)."""
    import uvicorn

    class DrainingServer(uvicorn.Server):
        loop: asyncio.AbstractEventLoop | None = None

        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            if self.loop is not None:
                self.loop.call_soon_threadsafe(hub.begin_drain)
            super().handle_exit(sig, frame)

        async def serve(self, sockets: list[socket.socket] | None = None) -> None:
            self.loop = asyncio.get_running_loop()
            await super().serve(sockets)

    return DrainingServer(config)
