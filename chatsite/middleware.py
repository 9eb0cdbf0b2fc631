from __future__ import annotations

from collections.abc import Awaitable, Callable

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.http import HttpRequest, HttpResponseBase

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
