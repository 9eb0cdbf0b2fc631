"""What every /v1 view shares: the error mapping, JSON bodies in and out, and API-key authentication."""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from channels.db import database_sync_to_async
from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, HttpResponse, HttpResponseBase
from django.views.decorators.csrf import csrf_exempt
from pydantic import BaseModel

from conversations import actions
from conversations.api.protocol import (
    APIError,
    AuthenticationFailed,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    ServiceUnavailable,
    UnsupportedMediaType,
    parse_json_body,
)
from conversations.faults import DATABASE_UNAVAILABLE, RETRY_AFTER_SECONDS, is_database_unavailable
from conversations.models import ApiKey

log = logging.getLogger(__name__)

View = Callable[..., Awaitable[HttpResponseBase]]


def json_response(body: BaseModel, status: int = 200, headers: dict[str, str] | None = None) -> HttpResponse:
    return HttpResponse(
        body.model_dump_json(), status=status, headers=headers, content_type="application/json"
    )


def error_response(error: APIError) -> HttpResponse:
    return json_response(error.body(), error.status, error.headers)


def api_view(*methods: str) -> Callable[[View], View]:
    """An async /v1 view: no CSRF (no cookie ever authenticates here), errors in OpenAI's shape.

    An ``APIError`` raised by the view becomes its error response; anything else is logged and
    answers 500 in the same shape, never an HTML page.
    """

    def decorate(view: View) -> View:
        @functools.wraps(view)
        async def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
            try:
                if request.method not in methods:
                    allowed = ", ".join(methods)
                    raise MethodNotAllowed(
                        f"{request.method} is not allowed on {request.path}: use {allowed}."
                    )
                return await view(request, *args, **kwargs)
            except APIError as error:
                return error_response(error)
            except Exception as exc:
                if is_database_unavailable(exc):  # locked past the busy timeout, disk full, …
                    log.warning("%s %s: %s", request.method, request.path, exc)
                    return error_response(
                        ServiceUnavailable(
                            DATABASE_UNAVAILABLE,
                            code="database_unavailable",
                            headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
                        )
                    )
                log.exception("%s %s failed", request.method, request.path)
                return error_response(
                    APIError("The server had an error while processing your request. Sorry about that!")
                )

        return csrf_exempt(wrapper)

    return decorate


@api_view("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS")
async def not_found(request: HttpRequest, rest: str = "") -> HttpResponseBase:
    raise NotFound(f"Invalid URL ({request.method} {request.path})", code="unknown_url")


def read_json(request: HttpRequest) -> Any:
    """The request's JSON body: 413 past the size limit, 415 for another content type, 400 if malformed."""
    limit = settings.CHAT_API_MAX_BODY
    try:
        declared = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        declared = 0
    too_large = PayloadTooLarge(f"The request body is larger than the limit of {limit} bytes.")
    if declared > limit:
        raise too_large
    if request.content_type != "application/json":
        shown = request.META.get("CONTENT_TYPE") or "none"
        raise UnsupportedMediaType(
            f"Invalid Content-Type header ({shown[:100]}), expected application/json.", param="Content-Type"
        )
    try:
        body = request.body
    except RequestDataTooBig:
        raise too_large from None
    if len(body) > limit:
        raise too_large
    return parse_json_body(body)


def mask_key(raw: str) -> str:
    if len(raw) <= 16:
        return "*" * len(raw)
    return f"{raw[:8]}{'*' * min(len(raw) - 12, 40)}{raw[-4:]}"


async def authenticate(request: HttpRequest) -> ApiKey:
    """The API key of an ``Authorization: Bearer`` header, or 401. Session cookies are never looked
    at. The key carries ``allowed_models``: the models its team may use (None: all)."""
    header = request.META.get("HTTP_AUTHORIZATION", "")
    scheme, _, raw = header.strip().partition(" ")
    raw = raw.strip()
    if scheme.lower() != "bearer" or not raw:
        raise AuthenticationFailed(
            "You didn't provide an API key. You need to provide your API key in an Authorization "
            "header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
        )
    # One query (the key, its user and team, and the team's models) in one trip to a thread.
    key = await database_sync_to_async(actions.authenticate_api_key)(raw)
    if key is None:
        raise AuthenticationFailed(f"Incorrect API key provided: {mask_key(raw)}.")
    return key


_noting: set[asyncio.Task[None]] = set()


def note_key_use(key: ApiKey, run: Any) -> asyncio.Task[None] | None:
    """Record the last use of the key of an admitted call once its ``run`` (a ``runner.Run``) has
    ended, however it ended: off the way to the first token (the key's row is not written in the
    call's log transaction, and most calls, within a minute of the key's last write, write nothing
    at all). The call's last bytes wait for the task (``await_key_use``), so that a client that has
    its whole answer sees the key's use recorded. None: nothing to write."""
    if not actions.key_use_due(key):
        return None

    async def note() -> None:
        try:
            await run.wait()
        except Exception:  # the run's own failure is told elsewhere; the key was used all the same
            pass
        try:
            await database_sync_to_async(actions.record_key_use, thread_sensitive=False)(key)
        except Exception:
            log.exception("could not record the use of API key %s", key.pk)

    task = asyncio.get_running_loop().create_task(note(), context=contextvars.Context())
    _noting.add(task)
    task.add_done_callback(_noting.discard)
    return task


async def await_key_use(task: asyncio.Task[None] | None) -> None:
    """Wait for ``note_key_use``'s write (it is never cancelled by its caller's cancellation)."""
    if task is not None:
        await asyncio.shield(task)
