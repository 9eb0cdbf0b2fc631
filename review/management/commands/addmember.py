"""addmember TEAM USERNAME [--admin]: add a user to a team, or change their role in it."""

from __future__ import annotations

import shlex
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser

from conversations.models import Membership, Team
from review import services


class Command(BaseCommand):
    help = (
        "Add USERNAME to TEAM as a member, or with --admin as one of its admins (who review the team's "
        "conversations in the admin; they are given is_staff, which only lets them in). Run again to "
        "change the role."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("team")
        parser.add_argument("username")
        parser.add_argument("--admin", action="store_true", help="make the user one of the team's admins")

    def handle(self, *args: Any, team: str, username: str, admin: bool, **options: Any) -> None:
        the_team = Team.objects.filter(name=team).first()
        if the_team is None:
            raise CommandError(f"There is no team named {team!r} (create it with `createteam`).")
        User = get_user_model()
        user = User.objects.filter(**{User.USERNAME_FIELD: username}).first()
        if user is None:
            raise CommandError(
                f"There is no user {username!r}. addmember adds existing accounts: to bring someone "
                f"new, make an invite link with `manage.py invite {shlex.quote(the_team.name)} "
                f"[--role admin]` (they choose their username and password), or create the account "
                f"in the admin first."
            )
        role = Membership.Role.ADMIN if admin else Membership.Role.MEMBER
        existing = Membership.objects.filter(team=the_team, user=user).first()
        if existing is None:
            services.add_member(the_team, user, role, by=None)
            self.stdout.write(f"Added {username} to {the_team.name} as {role}.")
        elif existing.role != role:
            services.set_role(existing, role, by=None)
            self.stdout.write(f"{username} is now {role} of {the_team.name}.")
        else:
            services.set_role(existing, role, by=None)  # changes nothing but a missing is_staff
            self.stdout.write(f"{username} is already {role} of {the_team.name}.")
