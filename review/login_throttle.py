"""Login throttling with django-axes: the client address it counts, and the lockout page.

The counting itself is django-axes' (settings: AXES_*). This module only tells it which address a
request comes from and answers a locked-out login with a page that says when to try again.
"""

from __future__ import annotations

import ipaddress
import math
from datetime import datetime
from typing import Any

from axes.helpers import (
    get_client_parameters,
    get_client_username,
    get_cool_off,
    get_failure_limit,
)
from axes.models import AccessAttempt
from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils import timezone


def _address(text: str) -> str | None:
    try:
        return str(ipaddress.ip_address(text.strip()))
    except ValueError:
        return None


def client_address(request: HttpRequest) -> str:
    """The address a login is counted under.

    The TCP peer, except behind the same-host TLS proxy (CHAT_BEHIND_TLS_PROXY=1): when the peer
    is one of CHAT_TRUSTED_PROXIES, the last X-Forwarded-For entry, which that proxy appended
    (nginx's ``$proxy_add_x_forwarded_for``, Caddy's default). Entries to its left came from the
    client and could say anything, so they are ignored; so is X-Forwarded-For from any other peer.
    """
    peer = request.META.get("REMOTE_ADDR", "")
    if settings.CHAT_BEHIND_TLS_PROXY:
        trusted = {_address(proxy) for proxy in settings.CHAT_TRUSTED_PROXIES}
        if _address(peer) in trusted - {None}:
            forwarded = request.META.get("HTTP_X_FORWARDED_FOR", "").split(",")
            last = _address(forwarded[-1])
            if last is not None:
                return last
    return _address(peer) or peer


USERNAME_CHARS = 150  # Django's User.username max_length: no account has a longer name


def attempted_username(request: HttpRequest, credentials: dict[str, Any] | None) -> str:
    """The username a login attempt is counted under (AXES_USERNAME_CALLABLE): what was typed, cut
    to the longest username that can exist. Axes stores it in a 255-character column, which
    PostgreSQL enforces (a longer one was a 500)."""
    if credentials:
        value = credentials.get("username")
    else:
        value = request.POST.get("username") if request is not None else None
    return str(value or "")[:USERNAME_CHARS]


def lockout(request: HttpRequest, credentials: dict[str, Any] | None) -> tuple[datetime, list[str]]:
    """When the failures that lock this request out have aged out, and what is locked: the
    username, the address or both (e.g. ``["address 192.0.2.1"]``)."""
    now = getattr(request, "axes_attempt_time", None) or timezone.now()
    cool_off = get_cool_off(request)
    assert cool_off is not None  # AXES_COOLOFF_TIME is always set (settings)
    limit = get_failure_limit(request, credentials)
    username = get_client_username(request, credentials)
    address = getattr(request, "axes_ip_address", None) or client_address(request)
    user_agent = getattr(request, "axes_user_agent", "")
    unlock, locked = now, []
    for filters in get_client_parameters(username, address, user_agent, request, credentials):
        attempts = AccessAttempt.objects.filter(**filters, attempt_time__gte=now - cool_off)
        rows = list(attempts.order_by("attempt_time").values_list("attempt_time", "failures_since_start"))
        counted = sum(failures for _, failures in rows)
        if counted >= limit:
            locked.append(" and ".join(f"{_NAMES.get(k, k)} {v!r}" for k, v in filters.items()))
        for attempt_time, failures in rows:  # oldest first: each row ages out in turn
            if counted < limit:
                break
            unlock = max(unlock, attempt_time + cool_off)
            counted -= failures
    return unlock, locked


_NAMES = {"ip_address": "address", "user_agent": "browser"}


def unlock_time(request: HttpRequest, credentials: dict[str, Any] | None) -> datetime:
    """When the failures that lock this request out (by username or by address) have aged out."""
    return lockout(request, credentials)[0]


def lockout_response(
    request: HttpRequest, original_response: Any = None, credentials: dict[str, Any] | None = None
) -> HttpResponse:
    """The 429 page for a locked-out login (AXES_LOCKOUT_CALLABLE).

    Credentials come from the request: axes' async middleware passes its arguments shifted.
    """
    credentials = getattr(request, "axes_credentials", None) or None
    seconds = max(1, math.ceil((unlock_time(request, credentials) - timezone.now()).total_seconds()))
    minutes = math.ceil(seconds / 60)
    context = {"minutes": minutes, "failure_limit": get_failure_limit(request, credentials)}
    response = render(request, "registration/locked_out.html", context, status=429)
    response["Retry-After"] = str(seconds)
    response["Cache-Control"] = "no-store"
    return response
