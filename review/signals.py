"""Logins and login lockouts go to the audit trail.

Django's ``user_logged_in`` and django-axes' ``user_locked_out`` are the only places that see
both the site's and the admin's logins, so these two receivers are the exception to "no signals".
"""

from __future__ import annotations

from typing import Any

from axes.signals import user_locked_out
from django.contrib.auth import get_user_model
from django.contrib.auth.signals import user_logged_in
from django.dispatch import receiver
from django.http import HttpRequest

from review import services
from review.login_throttle import client_address, lockout


@receiver(user_logged_in, dispatch_uid="review.audit_login")
def audit_login(sender: Any, request: HttpRequest | None, user: Any, **kwargs: Any) -> None:
    # Every password login (site form, admin form) is a POST, and a single sign-on login comes
    # through its backend (teams/oidc.py); the test client's force_login, which starts a session
    # without either, is not a login to audit.
    if request is None:
        return
    if request.method != "POST" and getattr(user, "backend", "") != "teams.oidc.Backend":
        return
    services.record_login(user, address=client_address(request), path=request.path)


@receiver(user_locked_out, dispatch_uid="review.audit_lockout")
def audit_lockout(
    sender: Any, request: HttpRequest, username: str | None, ip_address: str, **kwargs: Any
) -> None:
    # axes sends this for the failure that reaches the limit (it has just counted it) and again for
    # each refused attempt after it (not counted): only the first starts a lockout. Recording each
    # refusal would let a guesser fill the (never deleted) audit trail.
    failures = getattr(request, "axes_failures_since_start", None)
    if failures is None:
        return
    username = username or ""
    user = get_user_model()._default_manager.filter(**{get_user_model().USERNAME_FIELD: username}).first()
    until, locked = lockout(request, getattr(request, "axes_credentials", None))
    services.record_lockout(
        username, address=ip_address, failures=failures, locked=locked, until=until, user=user
    )
