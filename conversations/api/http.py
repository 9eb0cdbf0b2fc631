"""What every /v1 view shares: the error mapping, JSON bodies in and out, and API-key authentication."""

from __future__ import annotations

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
from upstreams.permissions import allowed_models

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


def _key_and_models(raw: str) -> ApiKey | None:
    """The key, with the models its team may use (``key.allowed_models``, for
    ``upstreams.permissions.check``) read in the same trip to the database thread: each trip costs
    a thread hop on the way to the first token."""
    key = actions.authenticate_api_key(raw)
    if key is not None:
        key.allowed_models = allowed_models(key.team_id)
    return key


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
    key = await database_sync_to_async(_key_and_models)(raw)
    if key is None:
        raise AuthenticationFailed(f"Incorrect API key provided: {mask_key(raw)}.")
    return key
