"""Secrets shown once (a new API key): kept server-side in the session until the page shows them.

Django's messages would put the secret in a cookie (the default storage), where it outlives the
page and travels with every request. The session store is the database (settings.SESSION_ENGINE),
and ``take`` removes the secret as it hands it out, so a reload shows it no more.
"""

from __future__ import annotations

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.http import HttpRequest

_PREFIX = "chatsite.once:"


def keep(request: HttpRequest, name: str, secret: str) -> None:
    """Keep ``secret`` under ``name`` until ``take`` hands it out."""
    if "signed_cookies" in settings.SESSION_ENGINE:
        raise ImproperlyConfigured("A cookie-based SESSION_ENGINE would put one-time secrets in a cookie.")
    request.session[_PREFIX + name] = secret


def take(request: HttpRequest, name: str) -> str | None:
    """The secret kept under ``name``, removed from the session; None when there is none (any more)."""
    return request.session.pop(_PREFIX + name, None)


def take_all(request: HttpRequest, prefix: str) -> list[tuple[str, str]]:
    """Every secret whose name starts with ``prefix``, as (name, secret), oldest first; all removed."""
    names = [key for key in request.session.keys() if key.startswith(_PREFIX + prefix)]
    return [(key[len(_PREFIX) :], request.session.pop(key)) for key in names]
