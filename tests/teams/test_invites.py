"""Invites (issue 13, onboarding): a team admin's single-use link that lets someone choose a
username and password and join the team with a role; made and revoked on the team page and by
``manage.py invite``; every invite made, used and revoked in the audit trail."""

from __future__ import annotations

import hashlib
import io
import re
import socket
import threading
from datetime import timedelta

import pytest
import time_machine
from django.contrib.auth import get_user_model
from django.core import mail
from django.core.management import CommandError, call_command
from django.db import connections
from django.test import Client
from django.utils import timezone

from conversations.models import Membership
from review.models import AuditEntry
from teams import services
from teams.models import Invite
from tests.review_data import logged_in

PASSWORD = "a-long-invite-password-3"


def link_path(link: str) -> str:
    return re.search(r"(/invite/[A-Za-z0-9_-]+/)", link).group(1)


def accept(client: Client, path: str, username: str = "dora", password: str = PASSWORD):
    return client.post(path, {"username": username, "password1": password, "password2": password})


@pytest.fixture
def invite(alpha, alice):
    made, token = services.create_invite(alpha, "member", by=alice)
    return made, services.invite_path(token)


def test_it_stores_only_a_hash_of_the_token(alpha, alice) -> None:
    made, token = services.create_invite(alpha, "admin", by=alice)
    made.refresh_from_db()
    assert made.token_hash == hashlib.sha256(token.encode()).hexdigest()
    assert token not in str(list(Invite.objects.values()))
    assert made.expires_at - made.created == pytest.approx(timedelta(days=7), abs=timedelta(seconds=5))
    entry = AuditEntry.objects.get(action=AuditEntry.Action.INVITE_CREATED)
    assert (entry.actor, entry.team) == (alice, alpha) and token not in entry.detail + entry.object_repr


def test_it_lets_the_invitee_choose_a_username_and_password_and_join(invite, alpha, alice) -> None:
    made, path = invite
    client = Client()
    page = client.get(path)
    assert page.status_code == 200 and "Join alpha" in page.content.decode()
    response = accept(client, path)
    assert response.status_code == 302 and response["Location"] == "/"
    dora = get_user_model().objects.get(username="dora")
    assert dora.check_password(PASSWORD)
    assert Membership.objects.get(team=alpha, user=dora).role == "member"
    assert client.get("/").wsgi_request.user == dora  # signed in
    made.refresh_from_db()
    assert made.state() == "used" and made.used_by == dora
    used = AuditEntry.objects.get(action=AuditEntry.Action.INVITE_USED)
    assert (used.actor, used.team) == (dora, alpha) and "invited by alice" in used.detail
    membership = AuditEntry.objects.get(action=AuditEntry.Action.MEMBERSHIP)
    assert membership.detail == f"added as member (invite {made.pk} from alice)"
    # Single use: the same link now says so, to anyone.
    again = Client().get(path)
    assert again.status_code == 410 and "already used" in again.content.decode()
    assert accept(Client(), path, "eve").status_code == 410
    assert not get_user_model().objects.filter(username="eve").exists()


def test_an_admin_invite_makes_an_admin(alpha, alice) -> None:
    _, token = services.create_invite(alpha, "admin", by=alice)
    assert accept(Client(), services.invite_path(token)).status_code == 302
    dora = get_user_model().objects.get(username="dora")
    assert Membership.objects.get(team=alpha, user=dora).role == "admin" and dora.is_staff


@pytest.mark.parametrize(
    ("password", "message"),
    [
        ("short1", "too short"),
        ("password123", "too common"),
        ("83749201938475", "entirely numeric"),
        ("Dorothea-9", "too similar to the username"),
    ],
)
def test_the_site_password_validators_apply(invite, password: str, message: str) -> None:
    _, path = invite
    response = accept(Client(), path, "dorothea", password)
    assert response.status_code == 400 and message in response.content.decode()
    assert not get_user_model().objects.filter(username="dorothea").exists()
    assert Invite.objects.get().state() == "pending"


def test_a_taken_username_is_refused_and_the_invite_stays_pending(invite, bob) -> None:
    _, path = invite
    response = accept(Client(), path, "BOB")
    assert response.status_code == 400 and "already exists" in response.content.decode()
    assert Invite.objects.get().state() == "pending"


def test_an_expired_invite_says_so(invite) -> None:
    made, path = invite
    with time_machine.travel(made.expires_at + timedelta(seconds=1)):
        page = Client().get(path)
        assert page.status_code == 410 and "expired" in page.content.decode()
        assert accept(Client(), path).status_code == 410
    assert not get_user_model().objects.filter(username="dora").exists()
    with time_machine.travel(made.expires_at - timedelta(seconds=5)):
        assert accept(Client(), path).status_code == 302  # just inside the 7 days


def test_a_revoked_invite_says_so_and_the_revocation_is_audited(invite, alpha, alice) -> None:
    made, path = invite
    response = logged_in(alice).post(f"/teams/{alpha.pk}/invites/{made.pk}/revoke")
    assert response.status_code == 302
    page = Client().get(path)
    assert page.status_code == 410 and "revoked" in page.content.decode()
    entry = AuditEntry.objects.get(action=AuditEntry.Action.INVITE_REVOKED)
    assert (entry.actor, entry.team) == (alice, alpha)
    assert not services.revoke_invite(made, by=alice)  # once
    assert AuditEntry.objects.filter(action=AuditEntry.Action.INVITE_REVOKED).count() == 1


@pytest.mark.parametrize("token", ["nope", "A" * 43, "A" * 500, "%00", "a%20b"])
def test_an_unknown_link_is_a_clear_404(db, token: str) -> None:
    page = Client().get(f"/invite/{token}/")
    assert page.status_code == 404 and "not valid" in page.content.decode()


def test_the_accept_form_needs_its_csrf_token(invite) -> None:
    _, path = invite
    client = Client(enforce_csrf_checks=True)
    assert accept(client, path).status_code == 403
    assert not get_user_model().objects.filter(username="dora").exists()
    token = client.get(path).cookies["csrftoken"].value
    body = {"username": "dora", "password1": PASSWORD, "password2": PASSWORD, "csrfmiddlewaretoken": token}
    assert client.post(path, body).status_code == 302


def test_signed_in_the_page_offers_to_join_with_that_account(invite, alpha, charlie) -> None:
    made, path = invite
    client = logged_in(charlie)
    page = client.get(path).content.decode()
    assert "logged in as <strong>charlie</strong>" in page and "Join alpha as charlie" in page
    assert "Log out and come back here" in page
    assert client.post(path).status_code == 302
    assert Membership.objects.get(team=alpha, user=charlie).role == "member"
    made.refresh_from_db()
    assert made.used_by == charlie


def test_a_member_who_opens_an_invite_is_told_and_it_stays_unused(invite, bob) -> None:
    _, path = invite
    client = logged_in(bob)
    response = client.post(path)
    assert response.status_code == 200 and "already a member of alpha" in response.content.decode()
    assert Invite.objects.get().state() == "pending"


def test_a_locked_out_address_is_refused_before_anything_is_made(invite, alpha, settings) -> None:
    """The login throttle (django-axes) stays in force: the address that may not log in may not
    make an account and be signed in through an invite either."""
    _, path = invite
    client = Client()
    for _ in range(settings.AXES_FAILURE_LIMIT):
        client.post("/accounts/login/", {"username": "nobody", "password": "wrong"})
    response = accept(client, path)
    assert response.status_code == 429 and "Retry-After" in response
    assert not get_user_model().objects.filter(username="dora").exists()
    assert Invite.objects.get().state() == "pending"


def test_the_invite_command_prints_the_link(alpha, settings) -> None:
    settings.CHAT_SITE_URL = "https://chat.example.com/"
    out = io.StringIO()
    call_command("invite", "alpha", "--role", "admin", stdout=out)
    link = out.getvalue().strip()
    assert re.fullmatch(r"https://chat\.example\.com/invite/[A-Za-z0-9_-]{43}/", link)
    made = Invite.objects.get()
    assert (made.role, made.created_by, made.created_by_name) == ("admin", None, "operator (manage.py)")
    assert accept(Client(), link_path(link)).status_code == 302
    with pytest.raises(CommandError, match="no team named"):
        call_command("invite", "nope")
    with pytest.raises(CommandError, match="EMAIL_HOST"):
        call_command("invite", "alpha", "--email", "dora@example.com")


def test_addmember_points_to_invites_for_a_missing_user(alpha) -> None:
    with pytest.raises(CommandError) as error:
        call_command("addmember", "alpha", "dora")
    assert "manage.py invite alpha" in str(error.value)


@pytest.fixture
def mail_on(settings):
    # The test runner's backend is locmem (mail.outbox); EMAIL_HOST is what switches mail on.
    settings.EMAIL_HOST = "smtp.example.com"
    settings.DEFAULT_FROM_EMAIL = "chat@example.com"


def test_with_a_mail_server_the_invite_is_mailed_too(mail_on, alpha, alice) -> None:
    client = logged_in(alice)
    assert 'name="email"' in client.get(f"/teams/{alpha.pk}/").content.decode()
    response = client.post(f"/teams/{alpha.pk}/invites", {"role": "member", "email": "dora@example.com"})
    assert response.status_code == 302
    (message,) = mail.outbox
    assert message.to == ["dora@example.com"] and "alpha" in message.subject
    path = link_path(message.body)
    page = client.get(f"/teams/{alpha.pk}/").content.decode()
    assert "Invite mailed to dora@example.com" in page and path in page
    assert accept(Client(), path).status_code == 302
    assert get_user_model().objects.get(username="dora").email == "dora@example.com"
    out = io.StringIO()
    call_command("invite", "alpha", "--email", "eve@example.com", stdout=out)
    assert mail.outbox[-1].to == ["eve@example.com"] and link_path(out.getvalue()) in mail.outbox[-1].body


def test_without_a_mail_server_no_mail_is_offered(alpha, alice) -> None:
    client = logged_in(alice)
    assert 'name="email"' not in client.get(f"/teams/{alpha.pk}/").content.decode()
    client.post(f"/teams/{alpha.pk}/invites", {"role": "member", "email": "dora@example.com"})
    assert mail.outbox == [] and Invite.objects.get().email == ""


def test_a_mail_that_cannot_be_sent_leaves_the_link_on_the_page(mail_on, settings, alpha, alice) -> None:
    with socket.socket() as closed:  # nothing listens: the connection is refused
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT, settings.EMAIL_TIMEOUT = "127.0.0.1", port, 5
    client = logged_in(alice)
    response = client.post(
        f"/teams/{alpha.pk}/invites", {"role": "member", "email": "dora@example.com"}, follow=True
    )
    page = response.content.decode()
    assert response.status_code == 200 and "could not be mailed" in page
    assert re.search(r"/invite/[A-Za-z0-9_-]{43}/", page)
    assert Invite.objects.get().state() == "pending"


def test_the_link_is_shown_once(alpha, alice) -> None:
    client = logged_in(alice)
    page = client.post(f"/teams/{alpha.pk}/invites", {"role": "member"}, follow=True).content.decode()
    assert len(re.findall(r"/invite/[A-Za-z0-9_-]{43}/", page)) == 1
    assert not re.search(r"/invite/[A-Za-z0-9_-]{43}/", client.get(f"/teams/{alpha.pk}/").content.decode())


def test_invites_survive_the_clock_only_seven_days(alpha, alice) -> None:
    made, _ = services.create_invite(alpha, by=alice)
    assert made.state(timezone.now() + timedelta(days=6, hours=23)) == "pending"
    assert made.state(timezone.now() + timedelta(days=7, seconds=1)) == "expired"


@pytest.mark.django_db(transaction=True)
def test_two_people_racing_for_one_invite_make_one_account(alpha, alice) -> None:
    """Single use holds under concurrency: the invite's row is locked while it is used."""
    _, token = services.create_invite(alpha, by=alice)
    barrier = threading.Barrier(2)
    results: dict[str, str] = {}

    def race(name: str) -> None:
        barrier.wait()
        try:
            services.accept_with_new_account(token, name, PASSWORD)
            results[name] = "joined"
        except services.InviteUnusable as exc:
            results[name] = exc.state
        finally:
            connections.close_all()

    threads = [threading.Thread(target=race, args=(name,)) for name in ("dora", "eve")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(results.values()) == ["joined", "used"], results
    assert get_user_model().objects.filter(username__in=["dora", "eve"]).count() == 1
    assert Membership.objects.filter(team=alpha, user__username__in=["dora", "eve"]).count() == 1


def test_the_invite_command_lists_and_revokes(alpha, alice) -> None:
    made, token = services.create_invite(alpha, "admin", by=alice)
    out = io.StringIO()
    call_command("invite", "alpha", "--list", stdout=out)
    assert out.getvalue().startswith(f"{made.pk}\tadmin\tby alice\texpires ")
    out = io.StringIO()
    call_command("invite", "alpha", "--revoke", str(made.pk), stdout=out)
    assert "Revoked invite" in out.getvalue()
    assert Client().get(services.invite_path(token)).status_code == 410
    entry = AuditEntry.objects.get(action=AuditEntry.Action.INVITE_REVOKED)
    assert (entry.actor, entry.actor_name) == (None, "operator (manage.py)")
    with pytest.raises(CommandError, match="already revoked"):
        call_command("invite", "alpha", "--revoke", str(made.pk))
    with pytest.raises(CommandError, match="no invite"):
        call_command("invite", "alpha", "--revoke", "999")
    out = io.StringIO()
    call_command("invite", "alpha", "--list", stdout=out)
    assert "no pending invites" in out.getvalue()
