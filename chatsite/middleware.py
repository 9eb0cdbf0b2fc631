from __future__ import annotations

from collections.abc import Awaitable, Callable

from asgiref.sync import iscoroutinefunction, markcoroutinefunction, sync_to_async
from django.conf import settings
from django.contrib.auth import middleware as auth_middleware
from django.contrib.messages import middleware as messages_middleware
from django.contrib.sessions import middleware as sessions_middleware
from django.http import HttpRequest, HttpResponseBase
from django.middleware import clickjacking, common, csrf, security

from conversations.metrics import RESPONSES

# No inline scripts or styles anywhere: pages load their code and CSS from /static/.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; "
    "frame-ancestors 'none'; form-action 'self'"
)


class ResponseMiddleware:
    """A middleware, sync or async, with two hooks for subclasses: ``refuse`` may answer a request
    before the view runs (None lets it through), and ``process`` may change the response."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable) -> None:
        self.get_response = get_response
        if iscoroutinefunction(get_response):
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> HttpResponseBase | Awaitable[HttpResponseBase]:
        if iscoroutinefunction(self):
            return self._acall(request)
        refused = self.refuse(request)
        return refused if refused is not None else self.process(self.get_response(request))

    async def _acall(self, request: HttpRequest) -> HttpResponseBase:
        refused = self.refuse(request)
        return refused if refused is not None else self.process(await self.get_response(request))

    def refuse(self, request: HttpRequest) -> HttpResponseBase | None:
        return None

    def process(self, response: HttpResponseBase) -> HttpResponseBase:
        return response


class ContentSecurityPolicyMiddleware(ResponseMiddleware):
    """Add the site's Content-Security-Policy to every response that has none of its own."""

    def process(self, response: HttpResponseBase) -> HttpResponseBase:
        response.headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
        return response


class ResponseCodeMiddleware(ResponseMiddleware):
    """Count every HTTP response by status code (429s and 503s included)."""

    def process(self, response: HttpResponseBase) -> HttpResponseBase:
        RESPONSES.labels(str(response.status_code)).inc()
        return response


async def _inline_acall(self, request: HttpRequest) -> HttpResponseBase:
    """``MiddlewareMixin.__acall__`` without the thread hops (see ``run_pure_hooks_inline``)."""
    response = None
    if hasattr(self, "process_request"):
        response = self.process_request(request)
    response = response or await self.get_response(request)
    if hasattr(self, "process_response"):
        response = self.process_response(request, response)
    return response


# Django's middleware whose hooks only read headers and cookies and set attributes: no database,
# no cache, no session load (CSRF_USE_SESSIONS is off; request.user stays lazy).
PURE_MIDDLEWARE = (
    security.SecurityMiddleware,
    common.CommonMiddleware,
    csrf.CsrfViewMiddleware,
    auth_middleware.AuthenticationMiddleware,
    clickjacking.XFrameOptionsMiddleware,
)


def _session_untouched(request: HttpRequest) -> bool:
    """The request neither read nor changed its session: saving it does nothing (no I/O)."""
    session = getattr(request, "session", None)
    if session is None or settings.SESSION_SAVE_EVERY_REQUEST:
        return False
    return not session.accessed and not session.modified


def _messages_untouched(request: HttpRequest) -> bool:
    """No message was added or shown: storing them does nothing (no I/O)."""
    storage = getattr(request, "_messages", None)
    return storage is not None and not storage.used and not storage.added_new


def _inline_request_acall(untouched: Callable[[HttpRequest], bool]) -> Callable:
    """``MiddlewareMixin.__acall__`` with ``process_request`` on the event loop (it builds lazy
    objects, reading nothing) and ``process_response`` there too when ``untouched`` says it has
    nothing to save, else in the sync thread as Django does (it may read and write the session in
    the database)."""

    async def acall(self, request: HttpRequest) -> HttpResponseBase:
        response = self.process_request(request)
        response = response or await self.get_response(request)
        if untouched(request):
            return self.process_response(request, response)
        return await sync_to_async(self.process_response, thread_sensitive=True)(request, response)

    return acall


def run_pure_hooks_inline() -> None:
    """Under ASGI, ``MiddlewareMixin.__acall__`` runs every ``process_request`` and
    ``process_response`` in the one sync thread (``sync_to_async(thread_sensitive=True)``): two
    thread hops per middleware per request, ten for these five before a /v1 answer's first byte,
    each waiting its turn behind whatever else holds that thread. Their hooks do no I/O, so they
    run on the event loop instead. Done on Django's classes themselves (at start-up, from
    ``ChatsiteConfig.ready``), so that ``MIDDLEWARE`` keeps naming them and the deployment checks
    that look for them by name still see them. Sessions and messages build their lazy objects on the
    event loop too, and keep the hop back only for a response that has something to save: their
    hooks can read and write the session in the database then (``_inline_request_acall``)."""
    for cls in PURE_MIDDLEWARE:
        cls.__acall__ = _inline_acall  # type: ignore[method-assign]
    for cls, untouched in (
        (sessions_middleware.SessionMiddleware, _session_untouched),
        (messages_middleware.MessageMiddleware, _messages_untouched),
    ):
        cls.__acall__ = _inline_request_acall(untouched)  # type: ignore[method-assign]
