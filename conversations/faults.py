"""How the site answers when what it depends on fails: the database (locked, full, unreachable)
and the channel layer (Redis unreachable).

A request that cannot write answers 503 with Retry-After (OpenAI-shaped on /v1) and changes
nothing; it never waits longer than the busy timeout (CHAT_DB_BUSY_TIMEOUT on SQLite).
"""

from __future__ import annotations

import logging
import sys

from django.db import InterfaceError, OperationalError
from django.http import HttpRequest, HttpResponse
from django.utils.deprecation import MiddlewareMixin

log = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = 5
DATABASE_UNAVAILABLE = (
    "The server's database cannot be written right now (it is busy or full); nothing was saved. "
    f"Try again in {RETRY_AFTER_SECONDS} seconds."
)
LAYER_UNAVAILABLE = (
    "The server's message broker (Redis) cannot be reached, so live updates are unavailable. "
    "Try again in a moment."
)


def layer_errors() -> tuple[type[BaseException], ...]:
    """What a channel layer raises when Redis is down or unreachable (``except layer_errors():``).

    Redis's errors only once the process has imported Redis (the Redis layer does when it is first
    used): no Redis error can be raised before, and a process that never uses it (the in-memory
    layer, a management command) does not import it at start-up (~50 ms)."""
    redis_exceptions = sys.modules.get("redis.exceptions")
    if redis_exceptions is None:
        return (OSError, TimeoutError)
    return (OSError, TimeoutError, redis_exceptions.RedisError)


def is_database_unavailable(exc: BaseException) -> bool:
    """A database error that a later attempt may not meet: locked, full, read-only, unreachable
    (not bad data, which is the request's fault)."""
    return isinstance(exc, OperationalError | InterfaceError)


class DatabaseUnavailableMiddleware(MiddlewareMixin):
    """A page whose database work failed (locked past the busy timeout, disk full) answers 503
    with Retry-After instead of a 500."""

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if not is_database_unavailable(exception):
            return None
        log.warning("%s %s: the database cannot be written: %s", request.method, request.path, exception)
        return HttpResponse(
            DATABASE_UNAVAILABLE,
            status=503,
            content_type="text/plain; charset=utf-8",
            headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
        )
