"""Refuse, for the whole site, a form or query parameter that holds text nothing can store.

Every page reads its parameters from ``request.GET`` and ``request.POST``; a NUL character in any
of them (name or value) would reach a PostgreSQL query or row and fail there with a 500, whichever
view it went to. One check here answers 400 with the parameter's name instead, before any view
runs. (A lone surrogate cannot arrive this way: Django decodes bad UTF-8 in parameters as U+FFFD.
The check covers it all the same.) A query-string parameter is also kept to ``MAX_QUERY_CHARS``:
they are searches, filters and ids, and SQLite refuses a LIKE pattern past 50,000 bytes. /v1 is
left out: it reads its own JSON body and checks every string of it, answering in OpenAI's shape
(``conversations.api.protocol``).
"""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse, HttpResponseBase, QueryDict

from chatsite.middleware import ResponseMiddleware
from inference.text import unstorable

MAX_QUERY_CHARS = 1000
API_PREFIX = "/v1"
FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")


def _shown(name: str) -> str:
    return name.encode("unicode_escape").decode("ascii")[:100]


def _first_unusable(params: QueryDict, max_chars: int | None = None) -> str | None:
    """What is wrong with the first parameter whose name or a value no page can use, said for a person."""
    for name, values in params.lists():
        for text in (name, *values):
            if not isinstance(text, str):
                continue  # an uploaded file
            if problem := unstorable(text):
                return f"The field “{_shown(name)}” contains {problem}, which cannot be stored."
            if max_chars is not None and len(text) > max_chars:
                return f"The field “{_shown(name)}” is too long (at most {max_chars} characters)."
    return None


def refusal(request: HttpRequest) -> HttpResponse | None:
    if request.path_info == API_PREFIX or request.path_info.startswith(API_PREFIX + "/"):
        return None
    problem = _first_unusable(request.GET, MAX_QUERY_CHARS)
    if problem is None and request.method == "POST" and request.content_type in FORM_TYPES:
        problem = _first_unusable(request.POST)
    if problem is None:
        return None
    return HttpResponse(
        f"{problem} Change it and send the form again.\n",
        status=400,
        content_type="text/plain; charset=utf-8",
    )


class UnstorableInputMiddleware(ResponseMiddleware):
    def refuse(self, request: HttpRequest) -> HttpResponseBase | None:
        return refusal(request)
