"""The team page (issue 13, onboarding): a team's admins see members, roles, API keys and pending
invites outside the admin, change roles, remove members (at once: their open chat sockets close)
and revoke keys; superusers see every team; everyone else gets 404."""

from __future__ import annotations

import time

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.contrib.auth import get_user_model
from django.test import Client

from chatsite.asgi import application
from conversations import actions
from conversations.models import Membership
from review.models import AuditEntry
from teams import services as team_services
from tests.review_data import logged_in
from tests.ws_chat import FIRST_FRAME


@pytest.fixture
def beta(charlie):
    return actions.create_team("beta", admin=charlie)


@pytest.fixture
def root(db):
    return get_user_model().objects.create_superuser("root", "root@example.com", "x")


def page(client: Client, team) -> str:
    response = client.get(f"/teams/{team.pk}/")
    assert response.status_code == 200
    return response.content.decode()


def test_a_team_admin_sees_members_roles_keys_and_pending_invites(alpha, alice, bob) -> None:
    key, _ = actions.create_api_key(bob, alpha, "nightly")
    invite, _ = team_services.create_invite(alpha, "admin", by=alice)
    html = page(logged_in(alice), alpha)
    assert 'data-member="alice"' in html and 'data-member="bob"' in html
    assert f"csk-{key.prefix}" in html and "nightly" in html
    assert f'data-invite="{invite.pk}"' in html and "Revoke invite" in html
    assert '<option value="admin" selected>' in html  # alice's role
    # The menu links to it, for admins only.
    assert 'href="/teams/"' in logged_in(alice).get("/settings/keys").content.decode()
    assert 'href="/teams/"' not in logged_in(bob).get("/settings/keys").content.decode()
    assert logged_in(alice).get("/teams/")["Location"] == f"/teams/{alpha.pk}/"


def test_others_get_404_and_strangers_the_login(alpha, beta, alice, bob, charlie) -> None:
    assert logged_in(bob).get(f"/teams/{alpha.pk}/").status_code == 404  # a plain member
    assert logged_in(bob).get("/teams/").status_code == 404
    assert logged_in(charlie).get(f"/teams/{alpha.pk}/").status_code == 404  # another team's admin
    assert logged_in(alice).get(f"/teams/{beta.pk}/").status_code == 404
    assert Client().get(f"/teams/{alpha.pk}/")["Location"].startswith("/accounts/login/")
    # Nor can alice act on beta's members, invites or keys through alpha's page.
    charlie_in_beta = Membership.objects.get(team=beta, user=charlie)
    invite, _ = team_services.create_invite(beta, by=charlie)
    key, _ = actions.create_api_key(charlie, beta)
    client = logged_in(alice)
    assert client.post(f"/teams/{alpha.pk}/members/{charlie_in_beta.pk}/remove").status_code == 404
    assert client.post(f"/teams/{alpha.pk}/invites/{invite.pk}/revoke").status_code == 404
    assert client.post(f"/teams/{alpha.pk}/keys/{key.pk}/revoke").status_code == 404
    assert client.post(f"/teams/{beta.pk}/invites", {"role": "admin"}).status_code == 404
    assert Membership.objects.filter(team=beta, user=charlie).exists()


def test_a_superuser_sees_every_team(alpha, beta, root) -> None:
    client = logged_in(root)
    listing = client.get("/teams/").content.decode()
    assert f'href="/teams/{alpha.pk}/"' in listing and f'href="/teams/{beta.pk}/"' in listing
    assert 'data-member="charlie"' in page(client, beta)


def test_a_team_admin_changes_a_role(alpha, alice, bob) -> None:
    bob_in_alpha = Membership.objects.get(team=alpha, user=bob)
    response = logged_in(alice).post(f"/teams/{alpha.pk}/members/{bob_in_alpha.pk}/role", {"role": "admin"})
    assert response.status_code == 302
    bob_in_alpha.refresh_from_db()
    bob.refresh_from_db()
    assert bob_in_alpha.role == "admin" and bob.is_staff
    entry = AuditEntry.objects.get(action=AuditEntry.Action.MEMBERSHIP)
    assert (entry.actor, entry.detail) == (alice, "role set to admin")
    assert logged_in(bob).get(f"/teams/{alpha.pk}/").status_code == 200


def test_the_last_admin_cannot_step_down_or_leave(alpha, alice, root) -> None:
    alice_in_alpha = Membership.objects.get(team=alpha, user=alice)
    client = logged_in(alice)
    response = client.post(
        f"/teams/{alpha.pk}/members/{alice_in_alpha.pk}/role", {"role": "member"}, follow=True
    )
    assert "last admin" in response.content.decode()
    response = client.post(f"/teams/{alpha.pk}/members/{alice_in_alpha.pk}/remove", follow=True)
    assert "last admin" in response.content.decode()
    alice_in_alpha.refresh_from_db()
    assert alice_in_alpha.role == "admin"
    # A superuser may.
    logged_in(root).post(f"/teams/{alpha.pk}/members/{alice_in_alpha.pk}/role", {"role": "member"})
    alice_in_alpha.refresh_from_db()
    assert alice_in_alpha.role == "member"


def test_removing_asks_first_then_revokes_the_keys(alpha, alice, bob) -> None:
    key, _ = actions.create_api_key(bob, alpha, "nightly")
    bob_in_alpha = Membership.objects.get(team=alpha, user=bob)
    client = logged_in(alice)
    confirm = client.get(f"/teams/{alpha.pk}/members/{bob_in_alpha.pk}/remove")
    assert confirm.status_code == 200 and "Remove bob from alpha?" in confirm.content.decode()
    assert Membership.objects.filter(pk=bob_in_alpha.pk).exists()  # a GET changes nothing
    response = client.post(f"/teams/{alpha.pk}/members/{bob_in_alpha.pk}/remove", follow=True)
    assert "Removed bob from alpha; 1 API key(s) revoked." in response.content.decode()
    assert not Membership.objects.filter(pk=bob_in_alpha.pk).exists()
    key.refresh_from_db()
    assert key.revoked
    entry = AuditEntry.objects.get(action=AuditEntry.Action.MEMBERSHIP)
    assert (entry.actor, entry.detail) == (alice, "removed; 1 API key(s) revoked")


def test_a_team_admin_revokes_a_members_key(alpha, alice, bob) -> None:
    key, _ = actions.create_api_key(bob, alpha, "nightly")
    response = logged_in(alice).post(f"/teams/{alpha.pk}/keys/{key.pk}/revoke")
    assert response.status_code == 302
    key.refresh_from_db()
    assert key.revoked
    assert AuditEntry.objects.filter(action=AuditEntry.Action.KEY_REVOKED, actor=alice).count() == 1


def test_the_pages_need_their_csrf_token(alpha, alice, bob) -> None:
    client = Client(enforce_csrf_checks=True)
    client.force_login(alice)
    bob_in_alpha = Membership.objects.get(team=alpha, user=bob)
    assert client.post(f"/teams/{alpha.pk}/members/{bob_in_alpha.pk}/remove").status_code == 403
    assert client.post(f"/teams/{alpha.pk}/invites", {"role": "member"}).status_code == 403
    assert Membership.objects.filter(pk=bob_in_alpha.pk).exists()


def test_bad_input_is_never_a_500(alpha, alice, bob) -> None:
    client = logged_in(alice)
    bob_in_alpha = Membership.objects.get(team=alpha, user=bob)
    assert (
        client.post(f"/teams/{alpha.pk}/members/{bob_in_alpha.pk}/role", {"role": "owner"}).status_code == 302
    )
    assert client.post(f"/teams/{alpha.pk}/invites", {"role": "owner"}).status_code == 302
    assert (
        client.post(f"/teams/{alpha.pk}/invites", {"role": "member", "email": "x" * 400}).status_code == 302
    )
    assert client.get(f"/teams/{2**63}/").status_code == 404
    assert client.get("/teams/99999999999999999999999/").status_code == 404
    assert Membership.objects.get(pk=bob_in_alpha.pk).role == "member"


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
async def test_removing_on_the_team_page_closes_the_members_socket_at_once(alice, bob, alpha) -> None:
    """The page uses the service the admin uses (review.services.remove_member): live access sees
    the membership go and closes bob's open chat of the team's shared conversation (4403)."""
    chat = await sync_to_async(actions.start_conversation)(alice, alpha, visibility="team", title="Shared")
    bob_client = await sync_to_async(logged_in)(bob)
    cookie = (b"cookie", f"sessionid={bob_client.cookies['sessionid'].value}".encode())
    headers = [(b"host", b"localhost"), (b"origin", b"http://localhost"), cookie]
    socket = WebsocketCommunicator(application, f"/ws/c/{chat.pk}/", headers=headers)
    connected, _ = await socket.connect()
    assert connected
    assert 'id="messages"' in await socket.receive_from(timeout=FIRST_FRAME)
    bob_in_alpha = await sync_to_async(Membership.objects.get)(team=alpha, user=bob)
    alice_client = await sync_to_async(logged_in)(alice)
    started = time.monotonic()
    response = await sync_to_async(alice_client.post)(f"/teams/{alpha.pk}/members/{bob_in_alpha.pk}/remove")
    assert response.status_code == 302
    output = await socket.receive_output(timeout=5)
    if output["type"] == "websocket.send":  # the notice that says why
        assert "no longer available" in output["text"]
        output = await socket.receive_output(timeout=5)
    assert output == {"type": "websocket.close", "code": 4403}
    assert time.monotonic() - started < 2.0


def test_names_are_shown_as_text(alice, bob) -> None:
    """Team names, usernames and e-mails are escaped by the templates (the page renders no markdown)."""
    team = actions.create_team('<img src=x onerror="alert(1)">', admin=alice)
    actions.add_member(team, bob)
    html = page(logged_in(alice), team)
    assert "<img src=x" not in html and "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;" in html


def test_superusers_see_invites_and_identities_in_the_admin_read_only(alpha, alice, root) -> None:
    invite, token = team_services.create_invite(alpha, by=alice)
    client = logged_in(root)
    listing = client.get("/admin/teams/invite/")
    assert listing.status_code == 200 and "pending" in listing.content.decode()
    detail = client.get(f"/admin/teams/invite/{invite.pk}/change/").content.decode()
    assert token not in detail and invite.token_hash not in detail
    assert client.post(f"/admin/teams/invite/{invite.pk}/delete/", {"post": "yes"}).status_code == 403
    assert logged_in(alice).get("/admin/teams/invite/").status_code in (302, 403)
