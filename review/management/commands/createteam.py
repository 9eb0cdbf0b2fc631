"""createteam NAME: make a team (its admins are added with ``addmember TEAM USERNAME --admin``)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from conversations.models import Team
from review import services


class Command(BaseCommand):
    help = "Create a team named NAME."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("name")

    def handle(self, *args: Any, name: str, **options: Any) -> None:
        name = name.strip()
        if not name:
            raise CommandError("The team needs a name.")
        if Team.objects.filter(name=name).exists():
            raise CommandError(f"There is already a team named {name!r}.")
        team = services.create_team(name)
        self.stdout.write(f"Created the team {team.name!r} (id {team.pk}).")
