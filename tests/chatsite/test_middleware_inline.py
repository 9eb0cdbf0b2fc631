"""Django's middleware hooks that do no I/O run on the event loop under ASGI (chatsite/middleware.py
run_pure_hooks_inline), instead of two hops each to the sync thread before the first byte."""

from __future__ import annotations

import threading

import pytest
from django.conf import settings
from django.contrib.auth.middleware import AuthenticationMiddleware
from django.core.management import call_command
from django.middleware.clickjacking import XFrameOptionsMiddleware
from django.middleware.common import CommonMiddleware
from django.middleware.csrf import CsrfViewMiddleware
from django.middleware.security import SecurityMiddleware
from django.test import AsyncClient

PURE = (
    SecurityMiddleware,
    CommonMiddleware,
    CsrfViewMiddleware,
    AuthenticationMiddleware,
    XFrameOptionsMiddleware,
)


@pytest.mark.django_db
@pytest.mark.asyncio
async def test_the_pure_hooks_run_on_the_event_loop_and_still_do_their_work(monkeypatch) -> None:
    threads: dict[str, list[int]] = {}
    for cls in PURE:
        for hook in ("process_request", "process_response"):
            original = cls.__dict__.get(hook)
            if original is None:
                continue

            def spy(self, *args, _original=original, _name=f"{cls.__name__}.{hook}"):
                threads.setdefault(_name, []).append(threading.get_ident())
                return _original(self, *args)

            monkeypatch.setattr(cls, hook, spy)
    response = await AsyncClient().get("/accounts/login/")
    assert response.status_code == 200
    assert len(threads) == 8  # every hook of the five ran
    loop = threading.get_ident()
    # (The login view's csrf_protect runs CSRF's hooks a second time, in the view's thread.)
    assert {name: loop in idents for name, idents in threads.items()} == dict.fromkeys(threads, True)
    # ... and did what it does: security and frame headers, the CSRF cookie, a lazy anonymous user.
    assert response["X-Frame-Options"] == "DENY"
    assert response["X-Content-Type-Options"] == "nosniff"
    assert settings.CSRF_COOKIE_NAME in response.cookies


def test_the_deployment_checks_still_see_django_s_middleware(capsys) -> None:
    """MIDDLEWARE keeps naming Django's classes (security.W001, csrf.W003, security.W002 look for
    them by name)."""
    assert "django.middleware.security.SecurityMiddleware" in settings.MIDDLEWARE
    assert "django.middleware.csrf.CsrfViewMiddleware" in settings.MIDDLEWARE
    assert "django.middleware.clickjacking.XFrameOptionsMiddleware" in settings.MIDDLEWARE
    call_command("check")


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
async def test_sessions_and_messages_hop_to_the_thread_only_to_save_something(monkeypatch) -> None:
    """Their ``process_request`` builds lazy objects on the event loop; their ``process_response``
    runs there too for a request that touched neither (a /v1 call, a health check), and in the
    sync thread, as Django does, when it has something to save: a login's new session is saved."""
    from asgiref.sync import sync_to_async
    from django.contrib.auth import get_user_model
    from django.contrib.messages.middleware import MessageMiddleware
    from django.contrib.sessions.middleware import SessionMiddleware
    from django.contrib.sessions.models import Session

    calls: list[tuple[str, bool]] = []
    loop = threading.get_ident()
    for cls in (SessionMiddleware, MessageMiddleware):
        for hook in ("process_request", "process_response"):
            original = cls.__dict__[hook]

            def spy(self, *args, _original=original, _name=f"{cls.__name__}.{hook}"):
                calls.append((_name, threading.get_ident() == loop))
                return _original(self, *args)

            monkeypatch.setattr(cls, hook, spy)
    response = await AsyncClient().get("/health")
    assert response.status_code == 200
    assert sorted(calls) == [
        ("MessageMiddleware.process_request", True),
        ("MessageMiddleware.process_response", True),
        ("SessionMiddleware.process_request", True),
        ("SessionMiddleware.process_response", True),
    ]
    await sync_to_async(get_user_model().objects.create_user)("erin", password="a-long-password-5")
    calls.clear()
    client = AsyncClient()
    await client.get("/accounts/login/")
    response = await client.post("/accounts/login/", {"username": "erin", "password": "a-long-password-5"})
    assert response.status_code == 302, response.content
    assert ("SessionMiddleware.process_response", False) in calls  # saved, in the sync thread
    key = response.cookies[settings.SESSION_COOKIE_NAME].value
    assert await Session.objects.filter(session_key=key).aexists()
