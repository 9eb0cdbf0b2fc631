"""API keys: the createapikey command, authentication, revocation, last use, and the admin."""

from __future__ import annotations

import io
import re
from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command
from django.http import Http404
from django.utils import timezone

from conversations import actions, queries
from conversations.models import ApiKey, Membership, Team

pytestmark = pytest.mark.django_db


def createapikey(*args: str) -> str:
    out = io.StringIO()
    call_command("createapikey", *args, stdout=out)
    return out.getvalue()


def test_it_prints_only_the_new_key(alice, alpha) -> None:
    out = createapikey("alice", "--name", "nightly")
    assert out.count("\n") == 1
    key = actions.authenticate_api_key(out.strip())
    assert key is not None and key.user == alice and key.team == alpha and key.name == "nightly"


def test_it_gives_a_user_without_a_team_a_personal_one(charlie) -> None:
    key = actions.authenticate_api_key(createapikey("charlie").strip())
    assert key is not None and key.team.name == "charlie"
    assert Membership.objects.get(team=key.team, user=charlie).role == "admin"


def test_it_needs_a_team_name_when_the_user_has_several(alice, alpha) -> None:
    actions.create_team("beta", admin=alice)
    with pytest.raises(CommandError, match="--team"):
        createapikey("alice")
    key = actions.authenticate_api_key(createapikey("alice", "--team", "beta").strip())
    assert key is not None and key.team.name == "beta"


def test_it_refuses_a_team_the_user_is_not_in(charlie, alpha) -> None:
    with pytest.raises(CommandError, match="not a member"):
        createapikey("charlie", "--team", "alpha")
    with pytest.raises(CommandError, match="no user"):
        createapikey("nobody")


def test_it_stores_a_prefix_and_a_hash_only(alice, alpha) -> None:
    key, plain = actions.create_api_key(alice, alpha, "k")
    secret = plain.split("-", 2)[2]  # csk-<prefix>-<secret>
    assert len(secret) >= 43  # 256 bits
    assert key.prefix in plain and secret not in key.secret_hash
    row = ApiKey.objects.values().get(pk=key.pk)
    assert not any(secret in str(value) for value in row.values())


def test_it_authenticates_only_the_exact_active_key(alice, alpha) -> None:
    key, plain = actions.create_api_key(alice, alpha)
    assert actions.authenticate_api_key(plain) == key
    for wrong in (
        plain[:-1] + ("A" if plain[-1] != "A" else "B"),
        plain[4:],
        "",
        "csk-",
        "Bearer x",
        plain + "x",
    ):
        assert actions.authenticate_api_key(wrong) is None
    actions.revoke_api_key(key)
    assert actions.authenticate_api_key(plain) is None
    key2, plain2 = actions.create_api_key(alice, alpha)
    alice.is_active = False
    alice.save(update_fields=["is_active"])
    assert actions.authenticate_api_key(plain2) is None


def test_it_records_the_last_use_at_most_once_a_minute(alice, alpha) -> None:
    key, _ = actions.create_api_key(alice, alpha)
    assert key.last_used_at is None
    actions.record_key_use(key)
    first = ApiKey.objects.get(pk=key.pk).last_used_at
    assert first is not None
    actions.record_key_use(key)
    assert ApiKey.objects.get(pk=key.pk).last_used_at == first
    key.last_used_at = timezone.now() - timedelta(minutes=2)
    actions.record_key_use(key)
    assert ApiKey.objects.get(pk=key.pk).last_used_at > first


def test_it_refuses_a_key_for_a_team_the_user_is_not_in(charlie, alpha) -> None:
    with pytest.raises(ValueError):
        actions.create_api_key(charlie, alpha)


def test_it_hides_a_key_from_other_users(alice, bob, charlie, alpha) -> None:
    key, _ = actions.create_api_key(alice, alpha)
    assert queries.get_api_key_for_user(alice, key.pk) == key
    for other in (bob, charlie):
        with pytest.raises(Http404):
            queries.get_api_key_for_user(other, key.pk)
    with pytest.raises(Http404):
        queries.get_api_key_for_user(alice, key.pk + 1000)


def test_it_shows_a_key_made_in_the_admin_once(client, alice, alpha) -> None:
    admin = get_user_model().objects.create_superuser("root", password=None)
    client.force_login(admin)
    response = client.post(
        "/admin/conversations/apikey/add/",
        {"user": alice.pk, "team": alpha.pk, "name": "from admin"},
        follow=True,
    )
    assert response.status_code == 200
    plain = re.search(r'<code id="new-key">([^<]+)</code>', response.content.decode()).group(1)
    key = actions.authenticate_api_key(plain)
    assert key is not None and key.name == "from admin" and key.user == alice
    # The change page never shows it again.
    page = client.get(f"/admin/conversations/apikey/{key.pk}/change/").content.decode()
    assert plain not in page and key.prefix in page


def test_it_refuses_an_admin_key_outside_the_users_teams(client, charlie, alpha) -> None:
    client.force_login(get_user_model().objects.create_superuser("root", password=None))
    response = client.post("/admin/conversations/apikey/add/", {"user": charlie.pk, "team": alpha.pk})
    assert response.status_code == 200 and b"not a member" in response.content
    assert not ApiKey.objects.exists()


def test_it_revokes_keys_from_the_admin(client, alice, alpha) -> None:
    client.force_login(get_user_model().objects.create_superuser("root", password=None))
    key, plain = actions.create_api_key(alice, alpha)
    response = client.post(
        "/admin/conversations/apikey/",
        {"action": "revoke", "_selected_action": [key.pk]},
        follow=True,
    )
    assert response.status_code == 200
    assert ApiKey.objects.get(pk=key.pk).revoked_at is not None
    assert actions.authenticate_api_key(plain) is None


def test_it_lists_teams_in_the_admin(client, alpha) -> None:
    client.force_login(get_user_model().objects.create_superuser("root", password=None))
    assert client.get("/admin/conversations/team/").status_code == 200
    assert Team.objects.count() == 1
