"""createapikey USERNAME [--team TEAM] [--name NAME]: make an API key and print only the key."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser

from conversations import actions
from conversations.models import Team


class Command(BaseCommand):
    help = (
        "Create an API key for USERNAME and print it (only the key, on stdout). Without --team, the "
        "user's only team is used; a user with no team gets a personal one."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username")
        parser.add_argument("--team", help="the team of the key's conversations (the user must be a member)")
        parser.add_argument("--name", default="", help="a label for the key")

    def handle(self, *args: Any, username: str, team: str | None, name: str, **options: Any) -> None:
        User = get_user_model()
        try:
            user = User.objects.get(**{User.USERNAME_FIELD: username})
        except User.DoesNotExist:
            raise CommandError(f"There is no user {username!r}.") from None
        if team is None:
            try:
                the_team = actions.default_team(user)
            except actions.NoDefaultTeam:
                raise CommandError(f"{username} belongs to several teams: choose one with --team.") from None
        else:
            the_team = Team.objects.filter(name=team, memberships__user=user).first()
            if the_team is None:
                raise CommandError(f"{username} is not a member of a team named {team!r}.")
        _, plain = actions.create_api_key(user, the_team, name, by=None)  # the operator
        self.stdout.write(plain)
