"""Every review write: flags, audit entries, memberships managed from the admin, team policies.

Each function that acts on someone's behalf writes its audit entry in the same transaction.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction

from conversations import actions as conversation_actions
from conversations.models import ApiKey, Conversation, Membership, Team
from review import access
from review.models import AuditEntry, Flag, TeamReviewPolicy

OPERATOR = "operator (manage.py)"


def audit(
    actor: AbstractBaseUser | None,
    action: str,
    *,
    team: Team | None = None,
    conversation: Conversation | None = None,
    object_repr: str = "",
    filters: dict[str, Any] | None = None,
    detail: str = "",
    actor_name: str | None = None,
) -> AuditEntry:
    if actor_name is None:
        actor_name = actor.get_username() if actor is not None else OPERATOR
    if conversation is not None:
        team = team or conversation.team
        object_repr = object_repr or f"conversation {conversation.pk}: {conversation}"[:300]
    return AuditEntry.objects.create(
        actor=actor,
        actor_name=actor_name,
        action=action,
        team=team,
        conversation=conversation,
        object_repr=object_repr[:300],
        filters=filters or {},
        detail=detail,
    )


# --- Conversations -------------------------------------------------------------------------------


def record_view(
    viewer: AbstractBaseUser, conversation: Conversation, list_filters: dict[str, Any] | None = None
) -> AuditEntry | None:
    """A transcript was shown to ``viewer``: audited unless it is the conversation's owner.
    ``list_filters``: the conversation list's filter the reviewer opened it from, if any."""
    if viewer.pk == conversation.owner_id:
        return None
    filters: dict[str, Any] = {"id": conversation.pk}
    if list_filters:
        filters["list_filters"] = list_filters
    return audit(viewer, AuditEntry.Action.VIEW, conversation=conversation, filters=filters)


def flag(conversation: Conversation, by: AbstractBaseUser, note: str = "") -> Flag:
    """Flag ``conversation`` (or replace the note of its flag)."""
    with transaction.atomic():
        the_flag, _ = Flag.objects.update_or_create(
            conversation=conversation, defaults={"flagged_by": by, "note": note}
        )
        audit(
            by,
            AuditEntry.Action.FLAG,
            conversation=conversation,
            detail=note,
            filters={"id": conversation.pk},
        )
    return the_flag


def unflag(conversation: Conversation, by: AbstractBaseUser) -> bool:
    with transaction.atomic():
        deleted, _ = Flag.objects.filter(conversation=conversation).delete()
        if deleted:
            audit(by, AuditEntry.Action.UNFLAG, conversation=conversation, filters={"id": conversation.pk})
    return bool(deleted)


def record_export(
    actor: AbstractBaseUser | None, *, fmt: str, filters: dict[str, Any], count: int, team: Team | None = None
) -> AuditEntry:
    return audit(
        actor,
        AuditEntry.Action.EXPORT,
        team=team,
        object_repr=f"{count} conversation(s) as {fmt.upper()}",
        filters=filters,
        detail=f"format={fmt} conversations={count}",
    )


# --- Teams and memberships -----------------------------------------------------------------------


def create_team(name: str) -> Team:
    return conversation_actions.create_team(name)


def policy_for(team: Team) -> TeamReviewPolicy:
    """The team's policy; an unsaved default (private chats hidden) when none was set."""
    return TeamReviewPolicy.objects.filter(team=team).first() or TeamReviewPolicy(team=team)


def set_policy(team: Team, *, reviewers_see_private: bool, by: AbstractBaseUser | None) -> TeamReviewPolicy:
    with transaction.atomic():
        policy, _ = TeamReviewPolicy.objects.update_or_create(
            team=team, defaults={"reviewers_see_private": reviewers_see_private}
        )
        audit(
            by,
            AuditEntry.Action.POLICY,
            team=team,
            object_repr=f"review policy of {team}",
            detail=f"reviewers_see_private={reviewers_see_private}",
        )
    return policy


def _door_to_the_admin(user: AbstractBaseUser, role: str) -> None:
    # is_staff only lets a user into the admin; what they see there comes from their memberships.
    if role == Membership.Role.ADMIN and not user.is_staff:
        user.is_staff = True
        user.save(update_fields=["is_staff"])


def add_member(
    team: Team,
    user: AbstractBaseUser,
    role: str = Membership.Role.MEMBER,
    *,
    by: AbstractBaseUser | None,
    via: str = "",
) -> Membership:
    """Add ``user`` to ``team`` with ``role`` (or change the role of an existing membership).
    ``via``: how, for the audit (an invite, single sign-on)."""
    with transaction.atomic():
        membership = conversation_actions.add_member(team, user, role)
        if membership.role != role:
            membership.role = role
            membership.save(update_fields=["role"])
        _door_to_the_admin(user, role)
        audit(
            by,
            AuditEntry.Action.MEMBERSHIP,
            team=team,
            object_repr=f"{user.get_username()} in {team}",
            detail=f"added as {role}" + (f" ({via})" if via else ""),
        )
    access.forget(user)
    return membership


def set_role(membership: Membership, role: str, *, by: AbstractBaseUser | None) -> Membership:
    if membership.role == role:
        _door_to_the_admin(membership.user, role)
        return membership
    with transaction.atomic():
        membership.role = role
        membership.save(update_fields=["role"])
        _door_to_the_admin(membership.user, role)
        audit(
            by,
            AuditEntry.Action.MEMBERSHIP,
            team=membership.team,
            object_repr=f"{membership.user.get_username()} in {membership.team}",
            detail=f"role set to {role}",
        )
    return membership


def remove_member(membership: Membership, *, by: AbstractBaseUser | None, via: str = "") -> int:
    """Remove a membership and revoke the member's API keys for that team. Returns the keys revoked.
    ``via``: how, for the audit (single sign-on)."""
    with transaction.atomic():
        keys = list(
            ApiKey.objects.filter(user_id=membership.user_id, team_id=membership.team_id, revoked_at=None)
        )
        for key in keys:
            conversation_actions.revoke_api_key(key, by=by)
        audit(
            by,
            AuditEntry.Action.MEMBERSHIP,
            team=membership.team,
            object_repr=f"{membership.user.get_username()} in {membership.team}",
            detail=f"removed; {len(keys)} API key(s) revoked" + (f" ({via})" if via else ""),
        )
        membership.delete()
    return len(keys)


# --- Logins (the receivers are in review/signals.py) ---------------------------------------------


def record_login(user: AbstractBaseUser, *, address: str, path: str) -> AuditEntry:
    return audit(
        user, AuditEntry.Action.LOGIN, object_repr=f"{user.get_username()} from {address}", detail=path
    )


def record_lockout(
    username: str,
    *,
    address: str,
    failures: int,
    locked: list[str],
    until: datetime,
    user: AbstractBaseUser | None,
) -> AuditEntry:
    """A failed login as ``username`` from ``address`` reached the limit (``failures``) and locked
    logins by ``locked`` (the username, the address or both). ``user``: the account of that name,
    if there is one (the name typed may match none)."""
    return audit(
        user,
        AuditEntry.Action.LOCKOUT,
        actor_name=username[:150] or "(no username)",
        object_repr=f"login as {username!r} from {address}"[:300],
        detail=(
            f"locked out after {failures} failed logins: logins by {', '.join(locked) or 'it'} "
            f"are refused until {until:%Y-%m-%d %H:%M:%S} UTC"
        ),
    )


# --- Conversations deleted and restored ----------------------------------------------------------


def record_deleted(conversation: Conversation, by: AbstractBaseUser) -> AuditEntry:
    return audit(by, AuditEntry.Action.DELETED, conversation=conversation, filters={"id": conversation.pk})


def restore(conversation: Conversation, *, by: AbstractBaseUser | None) -> bool:
    """Undo a soft delete (a reviewer's action); a purged conversation has nothing left to restore."""
    with transaction.atomic():
        restored = Conversation.objects.filter(
            pk=conversation.pk, deleted_at__isnull=False, purged_at__isnull=True
        ).update(deleted_at=None)
        if restored:
            audit(by, AuditEntry.Action.RESTORED, conversation=conversation, filters={"id": conversation.pk})
    return bool(restored)
