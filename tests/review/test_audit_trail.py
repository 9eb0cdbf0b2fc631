"""The audit trail, complete: API keys made and revoked (by whom), conversations deleted and
restored; team admins read their own teams' entries; the trail exports as JSONL."""

from __future__ import annotations

import io
import json

from django.core.management import call_command
from django.urls import reverse

from conversations.models import ApiKey, Conversation
from review import retention
from review import services as review_services
from review.models import AuditEntry
from tests.review_data import World, logged_in

KEYS = [AuditEntry.Action.KEY_CREATED, AuditEntry.Action.KEY_REVOKED]


def key_entries() -> list[tuple[str, str, str]]:
    return [
        (e.actor_name, e.action, e.object_repr.split(" of ")[1])
        for e in AuditEntry.objects.filter(action__in=KEYS).order_by("id")
    ]


def test_it_audits_keys_made_and_revoked_and_by_whom(world: World) -> None:
    before = AuditEntry.objects.filter(action__in=KEYS).count()
    bob = logged_in(world.bob)
    bob.post(reverse("chat:api_keys"), {"team": world.alpha.pk, "name": "mine"})
    own = ApiKey.objects.get(user=world.bob, name="mine")
    bob.post(reverse("chat:revoke_key", args=[own.pk]))
    root = logged_in(world.root)
    root.post(
        reverse("admin:conversations_apikey_add"), {"user": world.bob.pk, "team": world.alpha.pk, "name": "x"}
    )
    made = ApiKey.objects.get(user=world.bob, name="x")
    root.post(
        reverse("admin:conversations_apikey_changelist"), {"action": "revoke", "_selected_action": [made.pk]}
    )
    call_command("createapikey", "bob", "--team", "alpha", "--name", "cli", stdout=io.StringIO())
    membership = world.bob.memberships.get(team=world.alpha)
    review_services.remove_member(membership, by=world.alice)  # revokes bob's remaining alpha keys
    entries = key_entries()[before:]
    assert entries[:5] == [
        ("bob", "key_created", "bob"),
        ("bob", "key_revoked", "bob"),
        ("root", "key_created", "bob"),
        ("root", "key_revoked", "bob"),
        ("operator (manage.py)", "key_created", "bob"),
    ]
    assert {e for e in entries[5:]} == {("alice", "key_revoked", "bob")}
    mine = AuditEntry.objects.filter(action__in=KEYS).order_by("id")[before:]
    assert all(e.team_id == world.alpha.pk for e in mine)


def test_it_audits_a_conversation_deleted_and_restored(world: World) -> None:
    conversation = world.conversations["bob_shared"] if "bob_shared" in world.conversations else None
    conversation = conversation or Conversation.objects.filter(owner=world.bob, deleted_at=None).first()
    logged_in(world.bob).post(reverse("chat:delete", args=[conversation.pk]))
    deleted = AuditEntry.objects.get(action=AuditEntry.Action.DELETED, conversation=conversation)
    assert deleted.actor == world.bob and deleted.team_id == conversation.team_id
    root = logged_in(world.root)
    root.post(
        reverse("admin:conversations_conversation_changelist"),
        {"action": "restore_conversations", "_selected_action": [conversation.pk]},
    )
    conversation.refresh_from_db()
    assert conversation.deleted_at is None
    assert (
        AuditEntry.objects.get(action=AuditEntry.Action.RESTORED, conversation=conversation).actor
        == world.root
    )


def test_it_does_not_restore_a_purged_conversation(world: World) -> None:
    gone = Conversation.objects.filter(owner=world.bob).first()
    Conversation.objects.filter(pk=gone.pk).update(
        deleted_at="2020-01-01T00:00Z", purged_at="2020-02-01T00:00Z"
    )
    assert not review_services.restore(gone, by=world.root)
    assert not AuditEntry.objects.filter(action=AuditEntry.Action.RESTORED).exists()


def test_it_shows_a_team_admin_only_her_teams_entries(world: World) -> None:
    retention.set_retention(world.alpha, keep_days=5, deleted_keep_days=30, by=world.alice)
    retention.set_retention(world.beta, keep_days=9, deleted_keep_days=30, by=world.charlie)
    changelist = reverse("admin:review_auditentry_changelist")
    shown = logged_in(world.alice).get(changelist).context["cl"].result_list
    assert shown and {e.team_id for e in shown} == {world.alpha.pk}
    actors = logged_in(world.alice).get(changelist).context["cl"].filter_specs[1].lookup_choices
    assert "charlie" not in {name for name, _ in actors}  # beta's people stay out of her filters
    theirs = AuditEntry.objects.filter(team=world.beta).first()
    assert logged_in(world.alice).get(
        reverse("admin:review_auditentry_change", args=[theirs.pk])
    ).status_code in (
        302,
        403,
        404,
    )
    everything = logged_in(world.root).get(changelist).context["cl"].result_list
    assert {e.team_id for e in everything} >= {world.alpha.pk, world.beta.pk}


def test_it_exports_the_trail_as_jsonl_in_scope_and_audits_the_export(world: World) -> None:
    retention.set_retention(world.alpha, keep_days=5, deleted_keep_days=30, by=world.alice)
    retention.set_retention(world.beta, keep_days=9, deleted_keep_days=30, by=world.charlie)
    response = logged_in(world.alice).get(
        reverse("admin:review_audit_export"), {"action__exact": "retention"}
    )
    assert response.status_code == 200 and response["Content-Type"] == "application/x-ndjson"
    lines = [json.loads(line) for line in b"".join(response.streaming_content).decode().splitlines()]
    assert [(x["actor"], x["action"], x["team_id"]) for x in lines] == [
        ("alice", "retention", world.alpha.pk)
    ]
    assert {"id", "created", "object", "filters", "detail", "conversation_id"} <= set(lines[0])
    export = AuditEntry.objects.filter(action=AuditEntry.Action.EXPORT, actor=world.alice).get()
    assert export.filters == {"all_matching": {"action__exact": ["retention"]}}
    assert logged_in(world.bob).get(reverse("admin:review_audit_export")).status_code in (302, 403)


def test_it_records_who_set_limits_retention_and_holds_in_the_team_s_trail(world: World) -> None:
    from review import limits

    limits.set_limits(team=world.alpha, requests_per_minute=3, by=world.alice)
    retention.set_retention(world.alpha, keep_days=5, deleted_keep_days=30, by=world.alice)
    retention.place_hold(world.alice, team=world.alpha, reason="inquiry")
    actions = set(
        AuditEntry.objects.filter(team=world.alpha, actor=world.alice).values_list("action", flat=True)
    )
    assert {"limits", "retention", "hold"} <= actions
