from __future__ import annotations

from typing import Any

from django import template

register = template.Library()


@register.filter
def manages_a_team(user: Any) -> bool:
    """Whether the site's menu shows "Team" (cached on the user for the request)."""
    cached = getattr(user, "_teams_manages", None)
    if cached is None:
        from teams.views import managed_teams

        cached = managed_teams(user).exists()
        if user.is_authenticated:
            user._teams_manages = cached
    return cached
