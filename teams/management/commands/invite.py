"""invite TEAM [--role member|admin] [--email ADDRESS]: make an invite link and print it."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.core.validators import validate_email

from conversations.models import Membership, Team
from teams import services


class Command(BaseCommand):
    help = (
        "Make a single-use invite link to TEAM (valid 7 days) and print it, and only it. The person "
        "who opens it chooses a username and password and joins TEAM with the role. With --email "
        "(and EMAIL_HOST set) the link is mailed too."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("team")
        parser.add_argument("--role", choices=Membership.Role.values, default=Membership.Role.MEMBER)
        parser.add_argument("--email", default="", help="mail the link there too (needs EMAIL_HOST)")
        parser.add_argument(
            "--site-url",
            default=None,
            help="the site's address the link starts with (default: CHAT_SITE_URL, else http://127.0.0.1:8000)",
        )

    def handle(
        self, *args: Any, team: str, role: str, email: str, site_url: str | None, **options: Any
    ) -> None:
        the_team = Team.objects.filter(name=team).first()
        if the_team is None:
            raise CommandError(f"There is no team named {team!r} (create it with `createteam`).")
        if email:
            try:
                validate_email(email)
            except ValidationError:
                raise CommandError(f"{email!r} is not an e-mail address.") from None
            if not services.mail_configured():
                raise CommandError("--email needs a mail server: set EMAIL_HOST (see the README's settings).")
        base = (site_url or settings.CHAT_SITE_URL).rstrip("/")
        invite, token = services.create_invite(the_team, role, by=None, email=email)
        link = base + services.invite_path(token)
        if email:
            sent = services.mail_invite(invite, link, by=None)
            if not sent.ok:
                self.stderr.write(
                    f"The mail to {email} could not be sent ({sent.error}); send the link yourself."
                )
        self.stdout.write(link)
