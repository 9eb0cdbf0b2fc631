"""Retention policies and legal holds from the admin: a team's admins for their team only."""

from __future__ import annotations

from django.urls import reverse

from review.models import AuditEntry, LegalHold, RetentionPolicy
from tests.review_data import World, logged_in


def test_it_lets_a_team_admin_set_the_team_s_retention_policy(world: World) -> None:
    alice = logged_in(world.alice)
    url = reverse("admin:review_retentionpolicy_add")
    response = alice.post(url, {"team": world.alpha.pk, "keep_days": "90", "deleted_keep_days": "7"})
    assert response.status_code == 302
    policy = RetentionPolicy.objects.get(team=world.alpha)
    assert (policy.keep_days, policy.deleted_keep_days) == (90, 7)
    entry = AuditEntry.objects.get(action=AuditEntry.Action.RETENTION)
    assert entry.actor == world.alice and "keep_days: None -> 90" in entry.detail
    other = alice.post(url, {"team": world.beta.pk, "keep_days": "1", "deleted_keep_days": "1"})
    assert other.status_code == 200 and not RetentionPolicy.objects.filter(team=world.beta).exists()


def test_it_holds_the_selected_conversations_from_the_list(world: World) -> None:
    alice = logged_in(world.alice)
    target = world.alpha.conversations.filter(visibility="team").first()
    response = alice.post(
        reverse("admin:conversations_conversation_changelist"),
        {"action": "hold_conversations", "_selected_action": [target.pk]},
    )
    assert response.status_code == 302
    hold = LegalHold.objects.get(conversation=target)
    assert hold.placed_by == world.alice
    assert AuditEntry.objects.filter(action=AuditEntry.Action.HOLD, conversation=target).exists()
    # charlie reviews beta, not alpha: he cannot release alice's hold; a superuser can.
    delete = reverse("admin:review_legalhold_delete", args=[hold.pk])
    assert logged_in(world.charlie).post(delete, {"post": "yes"}).status_code in (302, 403)
    assert LegalHold.objects.filter(pk=hold.pk).exists()
    assert logged_in(world.root).post(delete, {"post": "yes"}).status_code == 302
    assert not LegalHold.objects.filter(pk=hold.pk).exists()
    assert AuditEntry.objects.filter(action=AuditEntry.Action.RELEASE, actor=world.root).exists()


def test_it_refuses_a_hold_on_another_team(world: World) -> None:
    response = logged_in(world.alice).post(
        reverse("admin:review_legalhold_add"), {"team": world.beta.pk, "conversation": "", "reason": "x"}
    )
    assert response.status_code == 200 and LegalHold.objects.count() == 0
