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
