"""setlimits (--team T | --user U | --team T --user U | --key PREFIX) [--rpm N] [--tokens-per-day N]"""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser

from conversations.models import ApiKey, Team
from review import limits


def _amount(value: str) -> int | None:
    """A number, or "off" (also "none", "-") to remove that limit."""
    if value.strip().lower() in ("off", "none", "-", ""):
        return None
    try:
        number = int(value)
    except ValueError:
        raise CommandError(f"{value!r} is not a number (or 'off' to remove the limit).") from None
    if number < 0:
        raise CommandError(f"{value!r}: a limit cannot be negative.")
    return number


class Command(BaseCommand):
    help = (
        "Set the limits of a team, a user (everywhere), a user within a team (--team and --user) or an "
        "API key (--key, its prefix): requests per minute and tokens per day (prompt + completion). "
        "'off' removes a limit; without --rpm or --tokens-per-day the current limits are shown. "
        "Every limit that applies to a request must have room (the strictest decides)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--team")
        parser.add_argument("--user")
        parser.add_argument("--key", help="the key's prefix (the 12 characters after csk-)")
        parser.add_argument(
            "--rpm", type=_amount, default=limits.UNCHANGED, help="requests per minute, or off"
        )
        parser.add_argument(
            "--tokens-per-day", type=_amount, default=limits.UNCHANGED, help="tokens per UTC day, or off"
        )

    def handle(self, *args: Any, team: str | None, user: str | None, key: str | None, **options: Any) -> None:
        rpm, tpd = options["rpm"], options["tokens_per_day"]
        if key and (team or user):
            raise CommandError("--key names the scope alone (a key's team and user have their own limits).")
        if not (key or team or user):
            raise CommandError("Name a scope: --team, --user, both, or --key.")
        scope: dict[str, Any] = {}
        if team:
            scope["team"] = Team.objects.filter(name=team).first()
            if scope["team"] is None:
                raise CommandError(f"There is no team named {team!r}.")
        if user:
            User = get_user_model()
            scope["user"] = User.objects.filter(**{User.USERNAME_FIELD: user}).first()
            if scope["user"] is None:
                raise CommandError(f"There is no user {user!r}.")
        if key:
            prefix = key.removeprefix("csk-").split("-")[0]
            scope["api_key"] = ApiKey.objects.filter(prefix=prefix).first()
            if scope["api_key"] is None:
                raise CommandError(f"There is no API key with the prefix {prefix!r}.")
        if rpm is limits.UNCHANGED and tpd is limits.UNCHANGED:
            current = limits.Limit.objects.filter(
                team=scope.get("team"), user=scope.get("user"), api_key=scope.get("api_key")
            ).first()
            self.stdout.write(_describe(current) if current else "No limits.")
            return
        limit = limits.set_limits(**scope, requests_per_minute=rpm, tokens_per_day=tpd, by=None)
        self.stdout.write(_describe(limit) if limit else "No limits.")


def _describe(limit: limits.Limit) -> str:
    rpm = limit.requests_per_minute
    tpd = limit.tokens_per_day
    return (
        f"{limit.scope_label}: "
        f"{'no limit' if rpm is None else rpm} requests per minute, "
        f"{'no limit' if tpd is None else tpd} tokens per day"
    )
