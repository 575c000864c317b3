"""What a server operator sets: tokens, limits, CORS, stream heartbeats, the drain period.

``ServerSettings.from_environment`` reads tokens from ``ORCHESTRION_API_TOKENS``
(comma-separated) or a file (one per line), so a token never has to go on a
command line where ``ps`` shows it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from engine.errors import ConfigError

TOKENS_VARIABLE = "ORCHESTRION_API_TOKENS"


class ServerSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    tokens: tuple[str, ...] = Field((), description="Bearer tokens accepted on every route but /health; "
                                                    "none: no authentication (bind to 127.0.0.1).")
    max_body_bytes: int = Field(1 << 20, ge=1024, description="Larger request bodies get 413 before they are read.")
    max_runs_per_token: int = Field(32, ge=1, description="Runs in flight per token (or for everyone without "
                                                          "tokens); one more gets 429 with Retry-After.")
    cors_origins: tuple[str, ...] = Field((), description="Origins allowed by CORS; none: CORS off.")
    heartbeat_seconds: float = Field(15.0, gt=0, description="An SSE comment this often on a quiet stream.")
    drain_seconds: float = Field(30.0, ge=0, description="On shutdown, how long running runs may finish before "
                                                         "they are cancelled (checkpointed: `resume` goes on).")
    on_disconnect: Literal["cancel", "continue"] = Field(
        "cancel", description="What an awaited run does when its client goes away.")
    keep_finished: int = Field(256, ge=0, description="Finished runs kept in memory for late subscribers "
                                                       "(the store keeps every run).")

    @classmethod
    def from_environment(cls, tokens_file: Path | None = None, **settings: object) -> ServerSettings:
        """Settings with tokens from ``tokens_file`` (one per line, # comments) and ``$ORCHESTRION_API_TOKENS``."""
        tokens = [token.strip() for token in os.environ.get(TOKENS_VARIABLE, "").split(",") if token.strip()]
        if tokens_file is not None:
            try:
                lines = tokens_file.read_text(encoding="utf-8").splitlines()
            except OSError as error:
                raise ConfigError(f"cannot read the tokens file {str(tokens_file)!r}: {error.strerror}") from None
            tokens += [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
        short = [token for token in tokens if len(token) < 16]
        if short:
            raise ConfigError(f"{len(short)} API token(s) shorter than 16 characters: use long random tokens "
                              "(python -c 'import secrets; print(secrets.token_urlsafe(32))')")
        return cls(tokens=tuple(tokens), **settings)
