"""invite TEAM [--role member|admin] [--email ADDRESS]: make an invite link and print it.
invite TEAM --list: the team's pending invites. invite TEAM --revoke ID: revoke one."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.core.validators import validate_email

from conversations.models import Membership, Team
from teams import services
from teams.models import Invite


class Command(BaseCommand):
    help = (
        "Make a single-use invite link to TEAM (valid 7 days) and print it, and only it. The person "
        "who opens it chooses a username and password and joins TEAM with the role. With --email "
        "(and EMAIL_HOST set) the link is mailed too. --list shows the pending invites, --revoke ID "
        "revokes one."
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
        parser.add_argument(
            "--list", dest="list_pending", action="store_true", help="list the team's pending invites instead"
        )
        parser.add_argument("--revoke", type=int, metavar="ID", help="revoke the team's invite ID instead")

    def handle(
        self,
        *args: Any,
        team: str,
        role: str,
        email: str,
        site_url: str | None,
        list_pending: bool,
        revoke: int | None,
        **options: Any,
    ) -> None:
        the_team = Team.objects.filter(name=team).first()
        if the_team is None:
            raise CommandError(f"There is no team named {team!r} (create it with `createteam`).")
        if list_pending:
            pending = [i for i in Invite.objects.filter(team=the_team) if i.state() == Invite.State.PENDING]
            for invite in pending:
                self.stdout.write(
                    f"{invite.pk}\t{invite.role}\tby {invite.created_by_name}\t"
                    f"expires {invite.expires_at:%Y-%m-%d %H:%M} UTC\t{invite.email or '-'}"
                )
            if not pending:
                self.stdout.write(f"{the_team.name} has no pending invites.")
            return
        if revoke is not None:
            invite = Invite.objects.filter(team=the_team, pk=revoke).select_related("team").first()
            if invite is None:
                raise CommandError(f"{the_team.name} has no invite {revoke}.")
            if not services.revoke_invite(invite, by=None):
                raise CommandError(f"Invite {revoke} was already {invite.state()}.")
            self.stdout.write(f"Revoked invite {revoke}: its link no longer works.")
            return
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
