"""Retention and purge with a fake clock (``now`` passed explicitly), legal holds, batching, the
daily run. On SQLite by default; on PostgreSQL with DATABASE_URL."""

from __future__ import annotations

import io
import threading
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.db import connection
from django.utils import timezone

from conversations import actions
from conversations.models import Conversation, Message
from review import retention
from review import services as review_services
from review.models import AuditEntry, DailyJob, Flag, LegalHold

pytestmark = pytest.mark.django_db(transaction=True)

NOW = timezone.now().replace(microsecond=0)
SECOND = timedelta(seconds=1)


def chat(owner, team, *, last_message_at, deleted_at=None, text="secret words") -> Conversation:
    """A conversation whose last message was written at ``last_message_at``."""
    conversation = actions.start_conversation(owner, team, title=text[:20], system_prompt="be terse")
    actions.add_user_message(conversation, text, author=owner)
    (reply,) = actions.start_assistant_messages(conversation, 1, params={"model": "m"}, prompt_tokens=7)
    actions.finish_assistant_message(
        reply.pk,
        actions.Outcome(status="complete", content="an answer", token_ids=[1, 2, 3], completion_tokens=3),
    )
    conversation.messages.update(created=last_message_at - timedelta(minutes=5))
    conversation.messages.filter(pk=reply.pk).update(created=last_message_at)
    Conversation.objects.filter(pk=conversation.pk).update(
        created=last_message_at - timedelta(minutes=5), deleted_at=deleted_at
    )
    return conversation


def erased(conversation: Conversation) -> bool:
    conversation.refresh_from_db()
    rows = list(conversation.messages.all())
    blank = all(m.content == "" and m.token_ids is None for m in rows)
    if blank:
        assert conversation.purged_at is not None and conversation.deleted_at is not None
        assert conversation.title == "" and conversation.system_prompt == ""
        assert [m.completion_tokens for m in rows if m.role == "assistant"] == [3]  # counts stay
    else:
        assert all(m.content for m in rows) and conversation.purged_at is None
    return blank


def test_it_purges_just_outside_the_window_and_keeps_just_inside(alice, alpha) -> None:
    retention.set_retention(alpha, keep_days=10, deleted_keep_days=30, by=alice)
    outside = chat(alice, alpha, last_message_at=NOW - timedelta(days=10) - SECOND)
    inside = chat(alice, alpha, last_message_at=NOW - timedelta(days=10) + SECOND)
    report = retention.purge(NOW)
    assert erased(outside) and not erased(inside)
    assert (report.conversations, report.messages) == (1, 2)
    entry = AuditEntry.objects.get(action=AuditEntry.Action.PURGE)
    assert entry.team_id == alpha.pk and entry.object_repr.startswith("1 conversation(s), 2 message(s)")
    assert "keep_days=10" in entry.detail and entry.filters["policy"]["keep_days"] == 10
    assert AuditEntry.objects.filter(action=AuditEntry.Action.RETENTION, actor=alice).count() == 1
    assert retention.purge(NOW).conversations == 0  # nothing left to do: no second entry
    assert AuditEntry.objects.filter(action=AuditEntry.Action.PURGE).count() == 1


def test_it_keeps_conversations_for_ever_without_keep_days(alice, alpha) -> None:
    ancient = chat(alice, alpha, last_message_at=NOW - timedelta(days=3650))
    assert retention.purge(NOW).conversations == 0
    assert not erased(ancient)


def test_it_purges_deleted_conversations_after_the_default_30_days(alice, alpha) -> None:
    recent = NOW - timedelta(days=1)
    outside = chat(alice, alpha, last_message_at=recent, deleted_at=NOW - timedelta(days=30) - SECOND)
    inside = chat(alice, alpha, last_message_at=recent, deleted_at=NOW - timedelta(days=30) + SECOND)
    report = retention.purge(NOW)
    assert erased(outside) and not erased(inside)
    assert (report.teams[0].deleted, report.teams[0].expired) == (1, 0)
    retention.set_retention(alpha, keep_days=None, deleted_keep_days=0, by=None)
    retention.purge(NOW)
    assert erased(inside)


def test_it_keeps_what_a_legal_hold_covers_and_audits_holds(alice, bob, charlie, alpha) -> None:
    beta = actions.create_team("beta", admin=charlie)
    alice.is_staff = charlie.is_staff = True
    alice.save()
    charlie.save()
    for team in (alpha, beta):
        retention.set_retention(team, keep_days=1, deleted_keep_days=30, by=None)
    old = NOW - timedelta(days=5)
    shared = chat(alice, alpha, last_message_at=old)
    Conversation.objects.filter(pk=shared.pk).update(visibility="team")
    free = chat(alice, alpha, last_message_at=old)
    in_beta = chat(charlie, beta, last_message_at=old)
    hold = retention.place_hold(alice, conversation=shared, reason="litigation 42")
    retention.place_hold(charlie, team=beta, reason="audit")
    report = retention.purge(NOW)
    assert erased(free) and not erased(shared) and not erased(in_beta)
    assert {t.team: t.held for t in report.teams} == {"alpha": 1, "beta": 1}
    holds = AuditEntry.objects.filter(action=AuditEntry.Action.HOLD)
    assert {(e.actor_name, e.detail) for e in holds} == {("alice", "litigation 42"), ("charlie", "audit")}
    with pytest.raises(PermissionError):
        retention.release_hold(hold, by=charlie)  # not hers to release
    retention.release_hold(hold, by=alice, reason="settled")
    assert AuditEntry.objects.filter(action=AuditEntry.Action.RELEASE, actor=alice).exists()
    retention.purge(NOW)
    assert erased(shared) and not erased(in_beta)


def test_it_lets_only_a_team_s_reviewers_place_holds(alice, bob, charlie, alpha) -> None:
    beta = actions.create_team("beta", admin=charlie)
    for user in (alice, bob, charlie):
        user.is_staff = True
        user.save()
    theirs = chat(charlie, beta, last_message_at=NOW)
    with pytest.raises(PermissionError):
        retention.place_hold(alice, conversation=theirs)
    with pytest.raises(PermissionError):
        retention.place_hold(alice, team=beta)
    with pytest.raises(PermissionError):
        retention.place_hold(bob, team=alpha)  # a member, not an admin
    assert LegalHold.objects.count() == 0


def test_it_erases_a_flag_s_note(alice, alpha) -> None:
    retention.set_retention(alpha, keep_days=1, deleted_keep_days=30, by=None)
    flagged = chat(alice, alpha, last_message_at=NOW - timedelta(days=2))
    review_services.flag(flagged, alice, note="quotes the secret words")
    retention.purge(NOW)
    assert Flag.objects.get(conversation=flagged).note == ""


def test_it_counts_without_erasing_on_a_dry_run(alice, alpha) -> None:
    retention.set_retention(alpha, keep_days=1, deleted_keep_days=30, by=None)
    old = chat(alice, alpha, last_message_at=NOW - timedelta(days=2))
    out = io.StringIO()
    call_command("purge", "--dry-run", stdout=out)
    assert "alpha: would erase 1 conversation(s)" in out.getvalue() and "2 message(s)" in out.getvalue()
    assert not erased(old)
    assert not AuditEntry.objects.filter(action=AuditEntry.Action.PURGE).exists()
    call_command("purge", stdout=io.StringIO())
    assert erased(old)


def test_it_purges_in_batches_each_in_its_own_transaction(alice, alpha) -> None:
    retention.set_retention(alpha, keep_days=1, deleted_keep_days=30, by=None)
    long_one = chat(alice, alpha, last_message_at=NOW - timedelta(days=3))
    Message.objects.bulk_create(
        Message(conversation=long_one, role="user", content=f"message {i}", token_ids=[i])
        for i in range(2498)
    )
    Message.objects.filter(conversation=long_one).update(created=NOW - timedelta(days=3))
    batches: list[tuple[int, bool]] = []
    report = retention.purge(
        NOW, batch_size=300, on_batch=lambda n: batches.append((n, connection.in_atomic_block))
    )
    assert report.messages == 2500
    assert [n for n, _ in batches] == [300] * 8 + [100]  # never more than a batch at a time
    assert not any(in_transaction for _, in_transaction in batches)  # each batch committed on its own
    assert not Message.objects.filter(conversation=long_one).exclude(content="").exists()


def test_it_purges_once_a_day_whichever_process_asks(alice, alpha) -> None:
    retention.set_retention(alpha, keep_days=1, deleted_keep_days=30, by=None)
    chat(alice, alpha, last_message_at=NOW - timedelta(days=2))
    assert retention.run_if_due(NOW).conversations == 1
    assert retention.run_if_due(NOW + timedelta(hours=1)) is None  # another process, the same day
    assert retention.run_if_due(NOW + timedelta(hours=24)) is not None
    assert DailyJob.objects.get().last_run == NOW + timedelta(hours=24)


def test_it_runs_the_daily_purge_in_a_background_thread(alice, alpha) -> None:
    retention.set_retention(alpha, keep_days=1, deleted_keep_days=30, by=None)
    old = chat(alice, alpha, last_message_at=timezone.now() - timedelta(days=2))
    daily = retention.DailyPurge(first_delay=0).start()
    try:
        assert daily.ran.wait(timeout=60)
        assert daily.thread.name == "daily-purge" and daily.thread is not threading.main_thread()
    finally:
        daily.stop()
    assert erased(old)
