"""Who may review what. One place decides, and the admin, the views and the exports ask it.

- A superuser reviews everything.
- A team's admins (``Membership.role == admin``) review that team's conversations: those shared
  with the team, its API calls, and its members' private browser chats only if the team's
  ``TeamReviewPolicy.reviewers_see_private`` is on. They also see their own. Deleted ones stay
  visible, marked deleted.
- Anyone else, ``is_staff`` or not, reviews nothing. ``is_staff`` is only the door to the admin.

A conversation outside a reviewer's scope answers 404, like a missing one.
"""

from __future__ import annotations

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.db.models import Q, QuerySet
from django.http import Http404

from conversations.models import Conversation, Membership, Team

_CACHE = "_review_admin_team_ids"


def admin_team_ids(user: AbstractBaseUser | AnonymousUser) -> list[int]:
    """The teams ``user`` is an admin of (cached on the user object for the request)."""
    if not user.is_authenticated or not user.is_active:
        return []
    cached = getattr(user, _CACHE, None)
    if cached is None:
        cached = list(
            Membership.objects.filter(user=user, role=Membership.Role.ADMIN)
            .order_by("team_id")
            .values_list("team_id", flat=True)
        )
        setattr(user, _CACHE, cached)
    return cached


def forget(user: AbstractBaseUser) -> None:
    """Drop the cached team list (after the user's memberships changed)."""
    if hasattr(user, _CACHE):
        delattr(user, _CACHE)


def is_superuser(user: AbstractBaseUser | AnonymousUser) -> bool:
    return bool(user.is_authenticated and user.is_active and user.is_superuser)


def can_review(user: AbstractBaseUser | AnonymousUser) -> bool:
    """May ``user`` use the review pages at all (they still see only their scope)?"""
    if not user.is_authenticated or not user.is_active or not user.is_staff:
        return False
    return user.is_superuser or bool(admin_team_ids(user))


def reviewable_teams(user: AbstractBaseUser | AnonymousUser) -> QuerySet[Team]:
    if is_superuser(user):
        return Team.objects.all()
    if not can_review(user):
        return Team.objects.none()
    return Team.objects.filter(pk__in=admin_team_ids(user))


def reviewable_conversations(user: AbstractBaseUser | AnonymousUser) -> QuerySet[Conversation]:
    if is_superuser(user):
        return Conversation.objects.all()
    if not can_review(user):
        return Conversation.objects.none()
    return Conversation.objects.filter(team_id__in=admin_team_ids(user)).filter(
        Q(visibility=Conversation.Visibility.TEAM)
        | Q(source=Conversation.Source.API)
        | Q(team__review_policy__reviewers_see_private=True)
        | Q(owner=user)
    )


def get_conversation_for_reviewer(
    user: AbstractBaseUser | AnonymousUser, conversation_id: int
) -> Conversation:
    try:
        return (
            reviewable_conversations(user).select_related("team", "owner", "api_key").get(pk=conversation_id)
        )
    except (Conversation.DoesNotExist, ValueError, TypeError):
        raise Http404("No such conversation") from None


def managed_memberships(user: AbstractBaseUser | AnonymousUser) -> QuerySet[Membership]:
    """The memberships ``user`` may add, change and remove: all for a superuser, their teams' for a
    team admin."""
    if is_superuser(user):
        return Membership.objects.all()
    if not can_review(user):
        return Membership.objects.none()
    return Membership.objects.filter(team_id__in=admin_team_ids(user))
