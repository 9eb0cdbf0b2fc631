"""The operator commands createteam and addmember (moved from test_review_membership.py, whose
tests share the review world: these make their own people and teams)."""

from __future__ import annotations

import io

import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command

from conversations import actions as conversation_actions
from conversations.models import Membership, Team
from review.models import AuditEntry


def test_it_creates_a_team_from_the_command_line(db) -> None:
    out = io.StringIO()
    call_command("createteam", "gamma", stdout=out)
    assert Team.objects.filter(name="gamma").exists() and "Created the team 'gamma'" in out.getvalue()
    with pytest.raises(CommandError, match="already a team"):
        call_command("createteam", "gamma")


def test_it_adds_members_and_admins_from_the_command_line(alice, bob, db) -> None:
    call_command("createteam", "gamma", stdout=io.StringIO())
    gamma = Team.objects.get(name="gamma")
    out = io.StringIO()
    call_command("addmember", "gamma", "bob", stdout=out)
    assert Membership.objects.get(team=gamma, user=bob).role == "member"
    call_command("addmember", "gamma", "alice", "--admin", stdout=out)
    assert Membership.objects.get(team=gamma, user=alice).role == "admin"
    alice.refresh_from_db()
    assert alice.is_staff  # the door to the admin, where the membership decides what she sees
    call_command("addmember", "gamma", "bob", "--admin", stdout=out)
    assert Membership.objects.get(team=gamma, user=bob).role == "admin"
    assert "bob is now admin of gamma" in out.getvalue()
    # Naming an existing admin again still opens the admin's door (here: a team made elsewhere).
    charlie = get_user_model().objects.create_user("charlie")
    conversation_actions.create_team("delta", admin=charlie)
    call_command("addmember", "delta", "charlie", "--admin", stdout=out)
    charlie.refresh_from_db()
    assert charlie.is_staff and "charlie is already admin of delta" in out.getvalue()
    assert AuditEntry.objects.filter(action="membership", actor=None).count() == 3


def test_it_names_a_missing_team_or_user(alice, db) -> None:
    with pytest.raises(CommandError, match="no team named 'nope'"):
        call_command("addmember", "nope", "alice")
    call_command("createteam", "gamma", stdout=io.StringIO())
    with pytest.raises(CommandError, match="no user 'zed'"):
        call_command("addmember", "gamma", "zed")
