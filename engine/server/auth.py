"""Bearer tokens, compared in constant time, and how many runs each may have in flight.

No tokens configured means no authentication: the server then binds to
127.0.0.1 unless told otherwise. A token is never logged or echoed; the
server knows a caller by a short digest of its token.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence

from fastapi import Request

from engine.server.errors import ApiError

ANONYMOUS = "anonymous"


class Auth:
    def __init__(self, tokens: Sequence[str]) -> None:
        self._tokens = [token.encode() for token in tokens]

    @property
    def enabled(self) -> bool:
        return bool(self._tokens)

    def caller(self, request: Request) -> str:
        """Who is calling (a digest of its token), or ApiError 401."""
        if not self._tokens:
            return ANONYMOUS
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not given:
            raise ApiError(401, "unauthorized", "this server needs `Authorization: Bearer <token>`",
                           headers={"WWW-Authenticate": "Bearer"})
        candidate = given.strip().encode()
        matched = False
        for token in self._tokens:  # every token compared, so the time says nothing about which
            matched |= hmac.compare_digest(candidate, token)
        if not matched:
            raise ApiError(401, "unauthorized", "the bearer token is not valid for this server",
                           headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})
        return "token-" + hashlib.sha256(candidate).hexdigest()[:12]
