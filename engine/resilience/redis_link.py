"""One Redis server, as the shared rate limits and the shared cost cap talk to it: Lua scripts, run atomically.

The client is ``redis.asyncio`` (``orchestrion[redis]``, imported when a link is made, its ImportError
naming the install command), so nothing blocks the event loop. Its connections belong to one event
loop: a link keeps a client per loop (``Engine.run_sync`` runs each call on a loop of its own). Under
trio, which ``redis.asyncio`` does not serve, the blocking client runs in a worker thread.

A script is sent once and then called by its SHA1 (``EVALSHA``, sent again after ``NOSCRIPT``: a
restarted server). Connection errors are retried twice, quickly: every script here is idempotent
(each call carries its own id), so a script run twice changes nothing. Timeouts are short (1 s to
connect, 2 s per command): an unreachable Redis is known at once, and each user says what then
happens (the rate limiter goes on locally, the cost cap refuses the call).

A Redis URL may hold a password: ``shown`` is the URL without it, for every message and log line.
"""

from __future__ import annotations

import functools
import hashlib
import logging
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import anyio.to_thread
import sniffio

from engine.errors import ConfigError

CONNECT_TIMEOUT = 1.0  # seconds
COMMAND_TIMEOUT = 2.0


def shown_url(url: str) -> str:
    """``url`` without its password (``redis://user:***@host:6379/0``), for messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, f"{user}:***@{host}", parts.path, parts.query, parts.fragment))


@functools.cache
def logger() -> Any:
    """The library's logger (as ``engine.runtime.logs``, which this layer cannot import): structlog over the
    stdlib logger ``orchestrion``, with a NullHandler; the host application decides where records go."""
    import structlog

    stdlib_logger = logging.getLogger("orchestrion")
    stdlib_logger.addHandler(logging.NullHandler())
    return structlog.wrap_logger(stdlib_logger, wrapper_class=structlog.stdlib.BoundLogger)


class Script:
    """A Lua script and its SHA1."""

    __slots__ = ("sha", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        self.sha = hashlib.sha1(text.encode("utf-8"), usedforsecurity=False).hexdigest()


class RedisLink:
    """Runs scripts on the Redis server at ``url``; ``what`` names the setting, for errors."""

    def __init__(self, url: str, what: str) -> None:
        try:
            import redis  # noqa: F401
        except ImportError:
            raise ConfigError(f"{what} needs the redis client: pip install 'orchestrion[redis]'") from None
        self.url = url
        self.shown = shown_url(url)
        self._password = urlsplit(url).password
        self._clients: dict[int, tuple[Any, Any]] = {}  # id(loop) -> (the loop, its client)
        self._blocking: Any = None  # the client for trio, used in worker threads

    def errors(self) -> tuple[type[BaseException], ...]:
        """What a call to Redis raises when the server cannot answer (or refuses: a wrong password)."""
        import redis

        return (redis.RedisError, OSError)

    def describe(self, error: BaseException) -> str:
        """``error`` as a message, the password taken out if the client echoed it."""
        text = f"{type(error).__name__}: {error}"
        return text.replace(self._password, "***") if self._password else text

    async def run(self, script: Script, keys: Sequence[str], args: Sequence[str | int | float]) -> Any:
        """The script's answer (raises one of ``errors()`` if Redis cannot be reached)."""
        if sniffio.current_async_library() == "asyncio":
            return await _evaluate_async(self._client(), script, keys, args)
        client = self._blocking or self._blocking_client()
        return await anyio.to_thread.run_sync(_evaluate, client, script, keys, args)

    async def aclose(self) -> None:
        """Close the connections of the running loop's client (those of other loops went with their loop)."""
        if sniffio.current_async_library() == "asyncio":
            import asyncio

            entry = self._clients.pop(id(asyncio.get_running_loop()), None)
            if entry is not None:
                await entry[1].aclose()
        elif self._blocking is not None:
            client, self._blocking = self._blocking, None
            await anyio.to_thread.run_sync(client.close)

    def _client(self) -> Any:
        import asyncio

        loop = asyncio.get_running_loop()
        entry = self._clients.get(id(loop))
        if entry is None or entry[0] is not loop:
            import redis.asyncio

            self._clients = {key: value for key, value in self._clients.items() if not value[0].is_closed()}
            entry = self._clients[id(loop)] = (loop, redis.asyncio.Redis.from_url(self.url, **_options()))
        return entry[1]

    def _blocking_client(self) -> Any:
        import redis

        self._blocking = redis.Redis.from_url(self.url, **_options())
        return self._blocking


def _options() -> dict[str, Any]:
    from redis.backoff import ExponentialBackoff
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.retry import Retry

    return {"socket_connect_timeout": CONNECT_TIMEOUT, "socket_timeout": COMMAND_TIMEOUT,
            "decode_responses": True, "retry_on_error": [RedisConnectionError],
            "retry": Retry(ExponentialBackoff(cap=0.2, base=0.02), retries=2)}


async def _evaluate_async(client: Any, script: Script, keys: Sequence[str], args: Sequence[Any]) -> Any:
    from redis.exceptions import NoScriptError

    try:
        return await client.evalsha(script.sha, len(keys), *keys, *args)
    except NoScriptError:
        return await client.eval(script.text, len(keys), *keys, *args)


def _evaluate(client: Any, script: Script, keys: Sequence[str], args: Sequence[Any]) -> Any:
    from redis.exceptions import NoScriptError

    try:
        return client.evalsha(script.sha, len(keys), *keys, *args)
    except NoScriptError:
        return client.eval(script.text, len(keys), *keys, *args)
