"""The static files Daphne serves beside the site (DEBUG on or off: one command runs the site)."""

from __future__ import annotations

from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler
from django.core.exceptions import SuspiciousFileOperation
from django.http import Http404, HttpRequest, HttpResponseBase


class StaticFiles(ASGIStaticFilesHandler):
    """Django's handler, with a path that climbs out of the static folders (``/static/../../etc/passwd``
    sent as is) answered 404 like any missing file: Django's own raises SuspiciousFileOperation,
    which nothing catches under ASGI, and Daphne answered 500."""

    def serve(self, request: HttpRequest) -> HttpResponseBase:
        try:
            return super().serve(request)
        except SuspiciousFileOperation:
            raise Http404("No such file.") from None
