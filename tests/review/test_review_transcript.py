"""The read-only transcript, its audit entries, and flags."""

from __future__ import annotations

import pytest
from django.urls import reverse

from conversations.models import Conversation
from review.models import AuditEntry, Flag
from tests.review_data import World, api_call, logged_in


def transcript_url(conversation: Conversation) -> str:
    return reverse("admin:conversations_conversation_change", args=[conversation.pk])


def test_it_shows_tokens_timings_parameters_and_the_request_user(world: World) -> None:
    response = logged_in(world.alice).get(transcript_url(world.conversations["bob_api"]))
    page = response.content.decode()
    assert response.status_code == 200
    assert "Name a colour" in page and "Blue." in page
    assert '<td class="review-request-user">user-42</td>' in page
    assert "<dt>prompt tokens</dt><dd>12</dd>" in page
    assert "<dt>completion tokens</dt><dd>1</dd>" in page
    assert "<dt>TTFT</dt><dd>0.250 s</dd>" in page
    assert "<dt>duration</dt><dd>1.500 s</dd>" in page
    assert "&quot;top_p&quot;: 0.9" in page  # the sampling parameters, as JSON
    assert world.keys["bob"].prefix in page


def test_it_renders_messages_through_the_sanitizing_renderer(world: World) -> None:
    evil = api_call(
        world.keys["bob"],
        "**bold** <script>alert(1)</script> [x](javascript:alert(2)) <img src=x onerror=alert(3)>",
        ["```python\nprint('hi')\n```"],
    )
    page = logged_in(world.alice).get(transcript_url(evil)).content.decode()
    assert "<strong>bold</strong>" in page
    assert "<script>alert" not in page and "<img" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert 'href="javascript:' not in page
    assert '<pre class="code">' in page


def test_it_writes_one_audit_entry_per_view_by_someone_else(world: World) -> None:
    conversation = world.conversations["bob_shared"]
    alice, root = logged_in(world.alice), logged_in(world.root)
    for _ in range(3):
        assert alice.get(transcript_url(conversation)).status_code == 200
    assert root.get(transcript_url(conversation)).status_code == 200
    entries = AuditEntry.objects.filter(action=AuditEntry.Action.VIEW, conversation=conversation)
    assert entries.count() == 4
    assert sorted(entries.values_list("actor_name", flat=True)) == ["alice", "alice", "alice", "root"]
    entry = entries.filter(actor_name="root").get()
    assert entry.team == world.alpha and entry.filters == {"id": conversation.pk}


def test_it_records_the_list_filter_a_transcript_was_opened_from(world: World) -> None:
    alice = logged_in(world.alice)
    listing = alice.get(
        reverse("admin:conversations_conversation_changelist"), {"source__exact": "api", "q": "colour"}
    )
    link = transcript_url(world.conversations["bob_api"]) + "?_changelist_filters="
    assert link in listing.content.decode()
    href = listing.content.decode().split(link)[1].split('"')[0]
    assert alice.get(link + href.replace("&amp;", "&")).status_code == 200
    entry = AuditEntry.objects.get(action=AuditEntry.Action.VIEW)
    assert entry.filters == {
        "id": world.conversations["bob_api"].pk,
        "list_filters": {"source__exact": ["api"], "q": ["colour"]},
    }


def test_it_does_not_audit_the_owner_reading_their_own_conversation(world: World) -> None:
    own = api_call(world.keys["alice"], "mine", ["ok"])
    assert logged_in(world.alice).get(transcript_url(own)).status_code == 200
    assert not AuditEntry.objects.filter(conversation=own).exists()


def test_it_does_not_audit_a_refused_view(world: World) -> None:
    conversation = world.conversations["bob_api"]
    assert logged_in(world.charlie).get(transcript_url(conversation)).status_code == 404
    assert logged_in(world.bob).get(transcript_url(conversation)).status_code == 403
    assert not AuditEntry.objects.exclude(action="key_created").exists()  # the world's keys are audited


def test_it_flags_and_unflags_with_a_note_and_audits_both(world: World) -> None:
    conversation = world.conversations["bob_api"]
    url = reverse("admin:conversations_conversation_flag", args=[conversation.pk])
    alice = logged_in(world.alice)

    response = alice.post(url, {"note": "asks for colours"})
    assert response.status_code == 302 and response["Location"] == transcript_url(conversation)
    flag = Flag.objects.get(conversation=conversation)
    assert flag.note == "asks for colours" and flag.flagged_by == world.alice
    assert "⚑ Flagged by alice" in alice.get(transcript_url(conversation)).content.decode()

    alice.post(url, {"action": "unflag"})
    assert not Flag.objects.filter(conversation=conversation).exists()
    actions = list(
        AuditEntry.objects.filter(conversation=conversation).order_by("id").values_list("action", "detail")
    )
    assert actions == [("flag", "asks for colours"), ("view", ""), ("unflag", "")]


def test_it_refuses_to_flag_with_get(world: World) -> None:
    url = reverse("admin:conversations_conversation_flag", args=[world.conversations["bob_api"].pk])
    assert logged_in(world.alice).get(url).status_code == 405
    assert not Flag.objects.exists()


def test_it_filters_flagged_conversations(world: World) -> None:
    alice = logged_in(world.alice)
    alice.post(reverse("admin:conversations_conversation_flag", args=[world.conversations["bob_shared"].pk]))
    changelist = reverse("admin:conversations_conversation_changelist")
    flagged = alice.get(changelist, {"flagged": "yes"}).context["cl"].result_list
    unflagged = alice.get(changelist, {"flagged": "no"}).context["cl"].result_list
    assert [c.pk for c in flagged] == [world.conversations["bob_shared"].pk]
    assert world.conversations["bob_shared"].pk not in {c.pk for c in unflagged}


def test_it_keeps_audit_entries_immutable(world: World) -> None:
    entry = AuditEntry.objects.create(actor=world.root, actor_name="root", action="export")
    with pytest.raises(ValueError):
        entry.save()
    with pytest.raises(ValueError):
        entry.delete()
    with pytest.raises(ValueError):
        AuditEntry.objects.filter(pk=entry.pk).update(actor_name="someone else")
    with pytest.raises(ValueError):
        AuditEntry.objects.all().delete()
    root = logged_in(world.root)
    change = reverse("admin:review_auditentry_change", args=[entry.pk])
    delete = reverse("admin:review_auditentry_delete", args=[entry.pk])
    page = root.get(change)
    assert (
        page.status_code == 200 and 'type="submit"' not in page.content.decode().split('id="content-main"')[1]
    )
    assert root.post(change, {"actor_name": "someone else"}).status_code == 403
    assert root.post(delete, {"post": "yes"}).status_code == 403
    assert root.get(reverse("admin:review_auditentry_add")).status_code == 403
    entry.refresh_from_db()
    assert entry.actor_name == "root"
    # Deleting the person keeps the entry, with their name.
    world.root.delete()
    entry.refresh_from_db()
    assert (entry.actor, entry.actor_name) == (None, "root")


def test_it_filters_the_audit_trail(world: World) -> None:
    alice = logged_in(world.alice)
    alice.get(transcript_url(world.conversations["bob_api"]))
    alice.post(reverse("admin:conversations_conversation_flag", args=[world.conversations["bob_api"].pk]))
    root = logged_in(world.root)
    changelist = reverse("admin:review_auditentry_changelist")
    flags = root.get(changelist, {"action__exact": "flag"}).context["cl"].result_list
    assert [e.action for e in flags] == ["flag"]
    by_alice = root.get(changelist, {"actor": "alice"}).context["cl"].result_list
    assert {e.actor_name for e in by_alice} == {"alice"} and len(
        by_alice
    ) == 3  # and her key, made in the world
