"""Invites: made by a team's admins (the team page, ``manage.py invite``), used once, revoked.

A token is 256 random bits shown once in the invite's link; only its SHA-256 is stored, so the
database (or a backup of it) cannot be used to join a team. Each invite made, used or revoked
writes its audit entry in the same transaction as the change.
"""

from __future__ import annotations

import logging
import re
import secrets
import smtplib
from dataclasses import dataclass

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.core.mail import send_mail
from django.db import IntegrityError, transaction
from django.urls import reverse
from django.utils import timezone

from conversations.actions import hash_secret
from conversations.models import Membership, Team
from review import access
from review import services as review_services
from review.models import AuditEntry
from teams.models import INVITE_LIFETIME, Invite

log = logging.getLogger(__name__)

# secrets.token_urlsafe(32): 43 characters of the URL-safe base64 alphabet.
_TOKEN = re.compile(r"[A-Za-z0-9_-]{43}")


def mail_configured() -> bool:
    """Invites can be mailed when the site has a mail server: the same switch as password reset."""
    return bool(settings.EMAIL_HOST)


def invite_path(token: str) -> str:
    return reverse("teams:invite", args=[token])


def create_invite(
    team: Team, role: str = Membership.Role.MEMBER, *, by: AbstractBaseUser | None, email: str = ""
) -> tuple[Invite, str]:
    """A new invite to ``team`` as ``role``, valid for 7 days, and its token (shown once)."""
    if role not in Membership.Role.values:
        raise ValueError(f"unknown role {role!r}")
    token = secrets.token_urlsafe(32)
    actor_name = by.get_username() if by is not None else review_services.OPERATOR
    with transaction.atomic():
        invite = Invite.objects.create(
            team=team,
            role=role,
            token_hash=hash_secret(token),
            email=email,
            created_by=by,
            created_by_name=actor_name,
            expires_at=timezone.now() + INVITE_LIFETIME,
        )
        review_services.audit(
            by,
            AuditEntry.Action.INVITE_CREATED,
            team=team,
            object_repr=f"invite {invite.pk} to {team} as {role}",
            detail=f"expires {invite.expires_at:%Y-%m-%d %H:%M} UTC" + (f"; for {email}" if email else ""),
        )
    return invite, token


def find_invite(token: str) -> Invite | None:
    """The invite of ``token`` in any state; None for a token that names none."""
    if not isinstance(token, str) or not _TOKEN.fullmatch(token):
        return None
    return Invite.objects.select_related("team").filter(token_hash=hash_secret(token)).first()


def revoke_invite(invite: Invite, *, by: AbstractBaseUser | None) -> bool:
    """Revoke a pending invite. False when it was no longer pending (used, expired, revoked)."""
    with transaction.atomic():
        revoked = Invite.objects.filter(pk=invite.pk, used_at=None, revoked_at=None).update(
            revoked_at=timezone.now()
        )
        if revoked:
            review_services.audit(
                by,
                AuditEntry.Action.INVITE_REVOKED,
                team=invite.team,
                object_repr=f"invite {invite.pk} to {invite.team} as {invite.role}",
            )
    invite.refresh_from_db()
    return bool(revoked)


class InviteUnusable(Exception):
    """The invite cannot be used: ``state`` says why (used, expired, revoked), or it names none."""

    def __init__(self, state: str) -> None:
        super().__init__(state)
        self.state = state


class AlreadyMember(Exception):
    pass


class UsernameTaken(Exception):
    pass


def _take(token: str) -> Invite:
    """Lock the pending invite of ``token`` for this transaction, or raise InviteUnusable."""
    invite = find_invite(token)
    if invite is None:
        raise InviteUnusable("unknown")
    invite = Invite.objects.select_for_update().select_related("team").get(pk=invite.pk)
    state = invite.state()
    if state != Invite.State.PENDING:
        raise InviteUnusable(state)
    return invite


def _use(invite: Invite, user: AbstractBaseUser, *, created: bool) -> Membership:
    invite.used_at = timezone.now()
    invite.used_by = user
    invite.save(update_fields=["used_at", "used_by"])
    membership = review_services.add_member(
        invite.team, user, invite.role, by=user, via=f"invite {invite.pk} from {invite.created_by_name}"
    )
    review_services.audit(
        user,
        AuditEntry.Action.INVITE_USED,
        team=invite.team,
        object_repr=f"invite {invite.pk} to {invite.team} as {invite.role}",
        detail=("new account " if created else "existing account ")
        + f"{user.get_username()}; invited by {invite.created_by_name}",
    )
    return membership


def accept_with_new_account(token: str, username: str, password: str, email: str = "") -> AbstractBaseUser:
    """Make the account ``username`` (its password already validated by the form) and join the
    invite's team. Raises InviteUnusable or UsernameTaken; nothing is written then."""
    User = get_user_model()
    try:
        with transaction.atomic():
            invite = _take(token)
            if User._default_manager.filter(**{f"{User.USERNAME_FIELD}__iexact": username}).exists():
                raise UsernameTaken(username)
            user = User._default_manager.create_user(username, email=email or invite.email, password=password)
            _use(invite, user, created=True)
    except IntegrityError:  # the same name taken at the same moment by someone else
        raise UsernameTaken(username) from None
    return user


def accept_as(token: str, user: AbstractBaseUser) -> Membership:
    """Join the invite's team with an existing (signed-in) account."""
    with transaction.atomic():
        invite = _take(token)
        if Membership.objects.filter(team=invite.team, user=user).exists():
            raise AlreadyMember(invite.team.name)
        membership = _use(invite, user, created=False)
    access.forget(user)
    return membership


@dataclass
class Sent:
    ok: bool
    error: str = ""


def mail_invite(invite: Invite, link: str, *, by: AbstractBaseUser | None) -> Sent:
    """Mail ``link`` to the invite's address. A failure is returned (and logged), not raised: the
    invite stays valid and its link is shown to the admin instead."""
    inviter = by.get_username() if by is not None else "An administrator"
    body = (
        f"{inviter} invites you to join the team {invite.team.name} on chatsite as {invite.role}.\n\n"
        f"Choose a username and password here (the link works once, until "
        f"{invite.expires_at:%Y-%m-%d %H:%M} UTC):\n\n{link}\n"
    )
    try:
        send_mail(f"Join {invite.team.name} on chatsite", body, None, [invite.email])
    except (smtplib.SMTPException, OSError) as exc:
        log.error("Invite mail to %s not sent: %s", invite.email, exc)
        return Sent(False, str(exc))
    return Sent(True)
