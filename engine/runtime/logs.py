"""The library's logger: structlog over the stdlib logger ``orchestrion``.

A library never configures logging: the stdlib logger gets a NullHandler and
the host application decides where records go. Keys we bind are prefixed
(``orchestrion_run_id``) because the context is shared with the host. structlog
is imported on first use: most runs never log.
"""

from __future__ import annotations

import functools
import logging
from typing import Any


@functools.cache
def logger() -> Any:
    import structlog

    stdlib_logger = logging.getLogger("orchestrion")
    stdlib_logger.addHandler(logging.NullHandler())
    return structlog.wrap_logger(stdlib_logger, wrapper_class=structlog.stdlib.BoundLogger)
