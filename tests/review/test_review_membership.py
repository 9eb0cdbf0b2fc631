"""Team admins manage their team's memberships in the admin; the review policy set by superusers.
The operator commands createteam and addmember: tests/review/test_membership_commands.py (without
the review world, which the tests here share: tests/conftest.py)."""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.urls import reverse

from conversations import actions as conversation_actions
from conversations.models import ApiKey, Membership, Team
from review.models import AuditEntry, TeamReviewPolicy
from tests.review_data import World, logged_in


def membership(world: World, user, team) -> Membership:
    return Membership.objects.get(user=user, team=team)


def test_it_lets_a_team_admin_add_a_member_by_username(world: World) -> None:
    dave = get_user_model().objects.create_user("dave")
    response = logged_in(world.alice).post(
        reverse("admin:conversations_membership_add"),
        {"team": world.alpha.pk, "username": "dave", "role": "member"},
    )
    assert response.status_code == 302, response.content[:2000]
    assert membership(world, dave, world.alpha).role == "member"
    entry = AuditEntry.objects.get(action=AuditEntry.Action.MEMBERSHIP)
    assert (entry.actor, entry.team, entry.detail) == (world.alice, world.alpha, "added as member")


def test_it_refuses_to_add_to_another_team_or_an_unknown_user(world: World) -> None:
    url = reverse("admin:conversations_membership_add")
    alice = logged_in(world.alice)
    other_team = alice.post(url, {"team": world.beta.pk, "username": "bob", "role": "member"})
    assert other_team.status_code == 200 and "team" in other_team.context["adminform"].form.errors
    unknown = alice.post(url, {"team": world.alpha.pk, "username": "nobody", "role": "member"})
    assert "username" in unknown.context["adminform"].form.errors
    already = alice.post(url, {"team": world.alpha.pk, "username": "bob", "role": "member"})
    assert "already a member" in str(already.context["adminform"].form.errors)
    assert not Membership.objects.filter(team=world.beta, user=world.bob).exists()


def test_it_lets_a_team_admin_change_a_role(world: World) -> None:
    bob = membership(world, world.bob, world.alpha)
    response = logged_in(world.alice).post(
        reverse("admin:conversations_membership_change", args=[bob.pk]), {"role": "admin"}
    )
    assert response.status_code == 302
    bob.refresh_from_db()
    assert bob.role == "admin"
    assert AuditEntry.objects.get(action="membership").detail == "role set to admin"
    # bob now reviews alpha.
    assert logged_in(world.bob).get(reverse("admin:conversations_conversation_changelist")).status_code == 200


def test_it_removes_a_member_and_revokes_their_keys_for_that_team_only(world: World) -> None:
    conversation_actions.add_member(world.beta, world.bob)
    beta_key, _ = conversation_actions.create_api_key(world.bob, world.beta, "beta key")
    bob = membership(world, world.bob, world.alpha)
    response = logged_in(world.alice).post(
        reverse("admin:conversations_membership_delete", args=[bob.pk]), {"post": "yes"}
    )
    assert response.status_code == 302
    assert not Membership.objects.filter(pk=bob.pk).exists()
    assert ApiKey.objects.get(pk=world.keys["bob"].pk).revoked_at is not None
    assert ApiKey.objects.get(pk=beta_key.pk).revoked_at is None
    assert AuditEntry.objects.get(action="membership").detail == "removed; 1 API key(s) revoked"


def test_it_removes_members_in_bulk_through_the_same_service(world: World) -> None:
    bob = membership(world, world.bob, world.alpha)
    logged_in(world.alice).post(
        reverse("admin:conversations_membership_changelist"),
        {"action": "delete_selected", "_selected_action": [bob.pk], "post": "yes"},
    )
    assert not Membership.objects.filter(pk=bob.pk).exists()
    assert ApiKey.objects.get(pk=world.keys["bob"].pk).revoked_at is not None


def test_it_keeps_team_admins_out_of_other_teams_memberships(world: World) -> None:
    charlie_in_beta = membership(world, world.charlie, world.beta)
    alice = logged_in(world.alice)
    change = reverse("admin:conversations_membership_change", args=[charlie_in_beta.pk])
    delete = reverse("admin:conversations_membership_delete", args=[charlie_in_beta.pk])
    assert alice.get(change).status_code == 302  # the admin's "no such object" redirect
    assert alice.post(delete, {"post": "yes"}).status_code == 302
    assert alice.post(change, {"role": "member"}).status_code == 302
    charlie_in_beta.refresh_from_db()
    assert charlie_in_beta.role == "admin"
    assert ApiKey.objects.get(pk=world.keys["charlie"].pk).revoked_at is None


def test_it_lets_only_superusers_set_the_review_policy(world: World) -> None:
    url = reverse("admin:conversations_team_change", args=[world.alpha.pk])
    assert (
        logged_in(world.alice).post(url, {"name": "alpha", "reviewers_see_private": "on"}).status_code == 403
    )
    assert not TeamReviewPolicy.objects.filter(team=world.alpha, reviewers_see_private=True).exists()
    response = logged_in(world.root).post(url, {"name": "alpha", "reviewers_see_private": "on"})
    assert response.status_code == 302
    assert TeamReviewPolicy.objects.get(team=world.alpha).reviewers_see_private
    assert AuditEntry.objects.get(action="policy").detail == "reviewers_see_private=True"
    # The members are shown the new setting.
    page = logged_in(world.bob).get(reverse("review:team_policy", args=[world.alpha.pk])).content.decode()
    assert "yes, the team allows it" in page


def test_it_does_not_delete_teams_and_their_logs_from_the_admin(world: World) -> None:
    url = reverse("admin:conversations_team_delete", args=[world.alpha.pk])
    assert logged_in(world.root).post(url, {"post": "yes"}).status_code == 403
    assert Team.objects.filter(pk=world.alpha.pk).exists()


def test_it_shows_the_policy_read_only_to_a_team_admin(world: World) -> None:
    page = logged_in(world.alice).get(reverse("admin:conversations_team_change", args=[world.alpha.pk]))
    assert page.status_code == 200
    assert 'name="reviewers_see_private"' not in page.content.decode()
