"""Who sets limits (the admin, setlimits) and the usage page's consumption against them."""

from __future__ import annotations

import io

import pytest
from django.core.management import CommandError, call_command
from django.urls import reverse

from conversations import actions
from review import limits
from review.models import AuditEntry, Limit
from tests.review_data import World, logged_in

ADD = "admin:review_limit_add"


def add_limit(client, **fields):
    data = {"team": "", "user": "", "api_key": "", "requests_per_minute": "", "tokens_per_day": ""}
    data.update({k: str(v) for k, v in fields.items()})
    return client.post(reverse(ADD), data)


def test_it_lets_a_team_admin_set_limits_for_the_team_its_members_and_keys(world: World) -> None:
    alice = logged_in(world.alice)
    assert add_limit(alice, team=world.alpha.pk, requests_per_minute=30).status_code == 302
    assert add_limit(alice, team=world.alpha.pk, user=world.bob.pk, tokens_per_day=5000).status_code == 302
    assert add_limit(alice, api_key=world.keys["bob"].pk, requests_per_minute=3).status_code == 302
    scopes = {row.scope_label: (row.requests_per_minute, row.tokens_per_day) for row in Limit.objects.all()}
    assert scopes == {
        "team alpha": (30, None),
        "bob in alpha": (None, 5000),
        f"API key {world.keys['bob'].prefix}": (3, None),
    }
    entries = AuditEntry.objects.filter(action=AuditEntry.Action.LIMITS, actor=world.alice)
    assert entries.count() == 3 and {e.team_id for e in entries} == {world.alpha.pk}


def test_it_keeps_a_team_admin_to_their_own_teams(world: World) -> None:
    alice = logged_in(world.alice)
    other_team = add_limit(alice, team=world.beta.pk, requests_per_minute=1)
    assert other_team.status_code == 200 and Limit.objects.count() == 0  # the form refuses it
    everywhere = add_limit(alice, user=world.bob.pk, requests_per_minute=1)
    assert "Only a superuser" in everywhere.content.decode() and Limit.objects.count() == 0
    foreign_key = add_limit(alice, api_key=world.keys["charlie"].pk, requests_per_minute=1)
    assert foreign_key.status_code == 200 and Limit.objects.count() == 0
    limits.set_limits(team=world.beta, requests_per_minute=5, by=world.charlie)
    beta_limit = Limit.objects.get()
    change = reverse("admin:review_limit_change", args=[beta_limit.pk])
    assert alice.get(change).status_code in (302, 404)  # another team's limit: not hers to see
    assert logged_in(world.bob).get(reverse("admin:review_limit_changelist")).status_code in (302, 403)


def test_it_lets_a_superuser_set_a_user_s_limits_everywhere(world: World) -> None:
    root = logged_in(world.root)
    assert add_limit(root, user=world.bob.pk, tokens_per_day=100).status_code == 302
    assert Limit.objects.get().scope_label == "user bob"


def test_it_sets_shows_and_removes_limits_from_the_command_line(world: World) -> None:
    out = io.StringIO()
    call_command("setlimits", "--team", "alpha", "--user", "bob", "--rpm", "7", stdout=out)
    assert out.getvalue().strip() == "bob in alpha: 7 requests per minute, no limit tokens per day"
    call_command("setlimits", "--key", world.keys["bob"].prefix, "--tokens-per-day", "900", stdout=out)
    out = io.StringIO()
    call_command("setlimits", "--team", "alpha", "--user", "bob", stdout=out)  # no number: shows
    assert "7 requests per minute" in out.getvalue()
    call_command("setlimits", "--team", "alpha", "--user", "bob", "--rpm", "off", stdout=out)
    assert Limit.objects.filter(team=world.alpha, user=world.bob).count() == 0
    entry = AuditEntry.objects.filter(action=AuditEntry.Action.LIMITS).first()
    assert entry.actor_name == "operator (manage.py)" and "-> None" in entry.detail
    with pytest.raises(CommandError, match="no team named"):
        call_command("setlimits", "--team", "nope", "--rpm", "1")
    with pytest.raises(CommandError, match="not a number"):
        call_command("setlimits", "--team", "alpha", "--rpm", "lots")
    with pytest.raises(CommandError, match="alone"):
        call_command("setlimits", "--team", "alpha", "--key", world.keys["bob"].prefix, "--rpm", "1")


def test_it_shows_each_limited_scope_s_use_on_the_usage_page(world: World, limits_clock) -> None:
    fresh, _ = actions.create_api_key(world.bob, world.alpha, "fresh")  # nothing logged yet
    limits.set_limits(api_key=fresh, requests_per_minute=2, by=None)
    limits.set_limits(team=world.alpha, tokens_per_day=10_000, by=None)
    limits.set_limits(team=world.beta, requests_per_minute=9, by=None)
    client = logged_in(world.alice)
    # The limits' clock is stopped (limits_clock): the request is counted and shown in one minute.
    limits.reserve(team_id=world.alpha.pk, user_id=world.bob.pk, key_id=fresh.pk, tokens=250)
    page = client.get(reverse("review:usage")).content.decode()
    table = page.split('id="limits-table"')[1].split("</table>")[0]
    assert f"<td>API key {fresh.prefix}</td><td>requests per minute</td><td>1</td><td>2</td>" in table
    # The token counter started from today's log (the world's replies), plus the 250 reserved.
    assert "<td>team alpha</td><td>tokens per day</td>" in table
    assert "team beta" not in table  # alice reviews alpha only
    root_page = logged_in(world.root).get(reverse("review:usage")).content.decode()
    assert "team beta" in root_page.split('id="limits-table"')[1].split("</table>")[0]
