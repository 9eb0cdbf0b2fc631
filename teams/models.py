"""Onboarding data: invites to a team, and the single sign-on identities and team grants.

Teams and memberships themselves live in ``conversations``; every write here goes through
``teams.services`` (invites) or ``teams.oidc`` (single sign-on).
"""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.db import models
from django.utils import timezone

from conversations.models import Membership, Team

INVITE_LIFETIME = timedelta(days=7)


class Invite(models.Model):
    """A single-use link that lets someone choose a username and password and join ``team`` as
    ``role``. Only the SHA-256 of the link's token is stored (as for API keys)."""

    class State(models.TextChoices):
        PENDING = "pending"
        USED = "used"
        EXPIRED = "expired"
        REVOKED = "revoked"

    team = models.ForeignKey(Team, models.CASCADE, related_name="invites")
    role = models.CharField(max_length=10, choices=Membership.Role.choices, default=Membership.Role.MEMBER)
    token_hash = models.CharField(max_length=64, unique=True)  # hex SHA-256 of the token
    email = models.EmailField(blank=True)  # where it was mailed, if it was
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, models.SET_NULL, null=True, blank=True, related_name="+"
    )
    created_by_name = models.CharField(max_length=150)  # kept after the user is gone
    created = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField()
    used_at = models.DateTimeField(null=True, blank=True)
    used_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, models.SET_NULL, null=True, blank=True, related_name="+"
    )
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created"]
        indexes = [models.Index(fields=["team", "-created"], name="invite_team_created")]

    def __str__(self) -> str:
        return f"invite {self.pk} to {self.team} as {self.role}"

    def state(self, now: timezone.datetime | None = None) -> str:
        if self.used_at is not None:
            return self.State.USED
        if self.revoked_at is not None:
            return self.State.REVOKED
        if (now or timezone.now()) >= self.expires_at:
            return self.State.EXPIRED
        return self.State.PENDING


class SsoIdentity(models.Model):
    """The account an OpenID Connect subject signs in to: matched by issuer and ``sub``, never by
    e-mail or username (which the provider may let people choose)."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, models.CASCADE, related_name="sso_identities")
    issuer = models.CharField(max_length=300)
    subject = models.CharField(max_length=255)
    created = models.DateTimeField(auto_now_add=True)
    last_login = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["issuer", "subject"], name="unique_sso_subject")]
        verbose_name = "single sign-on identity"
        verbose_name_plural = "single sign-on identities"

    def __str__(self) -> str:
        return f"{self.subject} at {self.issuer}"


class SsoGrant(models.Model):
    """A membership that single sign-on made from the teams claim: it follows the claim (removed
    when a later sign-in no longer names the team). Memberships made otherwise are never touched."""

    membership = models.OneToOneField(Membership, models.CASCADE, related_name="sso_grant")
    created = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"single sign-on grant of {self.membership}"
