"""Review data: flags on conversations, the audit trail, and each team's review policy.

The conversations and messages themselves live in ``conversations``; every write here goes
through ``review.services``.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db import models

from conversations.models import Conversation, Team


class Flag(models.Model):
    """A reviewer's mark on a conversation, with a note. Unflagging deletes it (the audit keeps both)."""

    conversation = models.OneToOneField(Conversation, models.CASCADE, related_name="review_flag")
    flagged_by = models.ForeignKey(settings.AUTH_USER_MODEL, models.SET_NULL, null=True, related_name="+")
    note = models.TextField(blank=True)
    created = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"flag on conversation {self.conversation_id}"


class TeamReviewPolicy(models.Model):
    """What a team's admins may review. Shown to the team's members (/review/teams/<id>/policy)."""

    team = models.OneToOneField(Team, models.CASCADE, related_name="review_policy")
    # Private browser chats are hidden from the team's reviewers unless this is on. Conversations
    # shared with the team, and API calls (made with a key of the team), are always reviewable.
    reviewers_see_private = models.BooleanField(
        default=False, help_text="Let the team's admins read members' private browser conversations."
    )
    updated = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = "team review policy"
        verbose_name_plural = "team review policies"

    def __str__(self) -> str:
        return f"review policy of {self.team}"


class AuditQuerySet(models.QuerySet):
    """No bulk change or delete either. (Deleting a user, team or conversation still clears the
    entry's link to it, through the foreign keys' SET_NULL; the names stay in the text.)"""

    def update(self, **kwargs: Any) -> int:
        raise ValueError("Audit entries cannot be changed.")

    def delete(self) -> tuple[int, dict[str, int]]:
        raise ValueError("Audit entries cannot be deleted.")


class AuditEntry(models.Model):
    """One reviewer action: who, what, when, and the filter used. Written once, never changed."""

    class Action(models.TextChoices):
        VIEW = "view", "viewed a transcript"
        EXPORT = "export", "exported conversations"
        FLAG = "flag", "flagged a conversation"
        UNFLAG = "unflag", "unflagged a conversation"
        MEMBERSHIP = "membership", "changed a membership"
        POLICY = "policy", "changed a review policy"
        LOGIN = "login", "logged in"
        LOCKOUT = "lockout", "was locked out of logging in"
        KEY_CREATED = "key_created", "created an API key"
        KEY_REVOKED = "key_revoked", "revoked an API key"
        DELETED = "deleted", "deleted a conversation"
        RESTORED = "restored", "restored a conversation"
        LIMITS = "limits", "changed limits"
        RETENTION = "retention", "changed a retention policy"
        PURGE = "purge", "purged conversations"
        HOLD = "hold", "placed a legal hold"
        RELEASE = "release", "released a legal hold"
        UPSTREAM_ADDED = "upstream_add", "added an upstream connection"
        UPSTREAM_CHANGED = "upstream_set", "changed an upstream connection"
        UPSTREAM_REMOVED = "upstream_del", "removed an upstream connection"
        TEAM_MODELS = "team_models", "changed a team's models"
        INVITE_CREATED = "invite_add", "created an invite"
        INVITE_USED = "invite_used", "joined with an invite"
        INVITE_REVOKED = "invite_del", "revoked an invite"

    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, models.SET_NULL, null=True, blank=True, related_name="+"
    )
    # Kept as text too: the entry must still say who after the user is deleted, and an
    # operator's command has no user at all ("manage.py exportlogs").
    actor_name = models.CharField(max_length=150)
    action = models.CharField(max_length=12, choices=Action.choices)
    team = models.ForeignKey(Team, models.SET_NULL, null=True, blank=True, related_name="+")
    conversation = models.ForeignKey(Conversation, models.SET_NULL, null=True, blank=True, related_name="+")
    object_repr = models.CharField(max_length=300, blank=True)
    filters = models.JSONField(default=dict, blank=True)  # the filter or selection used
    detail = models.TextField(blank=True)  # e.g. a flag's note, an export's format and row count
    created = models.DateTimeField(auto_now_add=True, db_index=True)

    objects = AuditQuerySet.as_manager()

    class Meta:
        ordering = ["-created", "-id"]
        verbose_name = "audit entry"
        verbose_name_plural = "audit entries"
        indexes = [models.Index(fields=["action", "-created"], name="audit_action_created")]

    def __str__(self) -> str:
        return f"{self.actor_name} {self.get_action_display()} {self.object_repr}".strip()

    def save(self, *args: Any, **kwargs: Any) -> None:
        if self.pk is not None and not self._state.adding:
            raise ValueError("Audit entries cannot be changed.")
        super().save(*args, **kwargs)

    def delete(self, *args: Any, **kwargs: Any) -> tuple[int, dict[str, int]]:
        raise ValueError("Audit entries cannot be deleted.")


# --- Governance: limits, retention, legal holds (review/limits.py, review/retention.py) ----------


class Limit(models.Model):
    """Requests per minute and tokens per day (prompt + completion) for one scope; either may be
    unset. The scope is a team (``team`` alone), a user everywhere (``user`` alone), a member within
    one team (``team`` and ``user``), or an API key (``api_key`` alone). Every limit that applies to
    a request must have room: the strictest decides."""

    team = models.ForeignKey(Team, models.CASCADE, null=True, blank=True, related_name="+")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, models.CASCADE, null=True, blank=True, related_name="+"
    )
    api_key = models.ForeignKey(
        "conversations.ApiKey", models.CASCADE, null=True, blank=True, related_name="+"
    )
    requests_per_minute = models.PositiveIntegerField(null=True, blank=True)
    tokens_per_day = models.PositiveBigIntegerField(null=True, blank=True)
    updated = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            # One row per scope (partial indexes: a NULL never equals another NULL).
            models.UniqueConstraint(
                fields=["team"], condition=models.Q(user=None, api_key=None), name="unique_team_limit"
            ),
            models.UniqueConstraint(
                fields=["user"], condition=models.Q(team=None, api_key=None), name="unique_user_limit"
            ),
            models.UniqueConstraint(fields=["team", "user"], name="unique_member_limit"),
            models.UniqueConstraint(fields=["api_key"], name="unique_key_limit"),
            models.CheckConstraint(
                condition=(
                    models.Q(api_key__isnull=True, team__isnull=False)
                    | models.Q(api_key__isnull=True, user__isnull=False)
                    | models.Q(api_key__isnull=False, team__isnull=True, user__isnull=True)
                ),
                name="limit_has_one_scope",
            ),
        ]

    def __str__(self) -> str:
        return f"limits of {self.scope_label}"

    @property
    def scope_label(self) -> str:
        if self.api_key_id is not None:
            return f"API key {self.api_key.prefix}"
        if self.team_id is not None and self.user_id is not None:
            return f"{self.user.get_username()} in {self.team}"
        if self.team_id is not None:
            return f"team {self.team}"
        return f"user {self.user.get_username()}"


class LimitCounter(models.Model):
    """The database's counters (without REDIS_URL): one row per scope, kind and window."""

    key = models.CharField(max_length=80)  # e.g. "req:team-3" or "tok:key-9"
    window = models.BigIntegerField()  # the window's start, in seconds since the epoch
    used = models.BigIntegerField(default=0)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["key", "window"], name="unique_limit_counter")]

    def __str__(self) -> str:
        return f"{self.key} from {self.window}: {self.used}"


class RetentionPolicy(models.Model):
    """How long a team's conversations are kept (``manage.py purge``)."""

    team = models.OneToOneField(Team, models.CASCADE, related_name="retention_policy")
    # Days after a conversation's last message; None keeps them for ever.
    keep_days = models.PositiveIntegerField(
        null=True, blank=True, help_text="Days after the last message; empty keeps conversations for ever."
    )
    deleted_keep_days = models.PositiveIntegerField(
        default=30, help_text="Days a deleted conversation is kept after its deletion."
    )
    updated = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = "retention policy"
        verbose_name_plural = "retention policies"

    def __str__(self) -> str:
        return f"retention policy of {self.team}"


class LegalHold(models.Model):
    """Nothing under a hold is purged: one conversation, or every conversation of a team."""

    team = models.ForeignKey(Team, models.CASCADE, null=True, blank=True, related_name="+")
    conversation = models.ForeignKey(Conversation, models.CASCADE, null=True, blank=True, related_name="+")
    placed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, models.SET_NULL, null=True, blank=True, related_name="+"
    )
    reason = models.TextField(blank=True)
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=(
                    models.Q(team__isnull=False, conversation__isnull=True)
                    | models.Q(team__isnull=True, conversation__isnull=False)
                ),
                name="hold_on_team_or_conversation",
            ),
        ]

    def __str__(self) -> str:
        if self.conversation_id is not None:
            return f"legal hold on conversation {self.conversation_id}"
        return f"legal hold on team {self.team}"


class DailyJob(models.Model):
    """When a daily background job last ran (several processes run the loop; one does the job)."""

    name = models.CharField(max_length=50, unique=True)
    last_run = models.DateTimeField()

    def __str__(self) -> str:
        return f"{self.name} (last run {self.last_run:%Y-%m-%d %H:%M})"
