"""A person's chat preferences (the colour theme), kept on the server, and given to every page."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.http import HttpRequest

from conversations.models import ChatPreferences


def theme_of(user: AbstractBaseUser) -> str:
    if not user.is_authenticated:
        return ChatPreferences.Theme.AUTO
    theme = ChatPreferences.objects.filter(user=user).values_list("theme", flat=True).first()
    return theme or ChatPreferences.Theme.AUTO


def set_theme(user: AbstractBaseUser, theme: str) -> None:
    if theme not in ChatPreferences.Theme.values:
        raise ValueError(f"unknown theme {theme!r}")
    ChatPreferences.objects.update_or_create(user=user, defaults={"theme": theme})


def context(request: HttpRequest) -> dict[str, Any]:
    """The template context processor: ``theme`` (auto, light or dark) for <html data-theme>."""
    user = getattr(request, "user", None)
    return {"theme": theme_of(user) if user is not None else ChatPreferences.Theme.AUTO}
