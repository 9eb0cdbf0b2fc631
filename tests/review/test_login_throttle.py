"""Login throttling (django-axes): 10 failed logins per username and per client address within
15 minutes, on the site's login and the admin's; the lockout page; the proxy's client address;
logins and lockouts in the audit trail. The clock is moved with time-machine, never slept on."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
import time_machine
from asgiref.sync import async_to_sync
from django.contrib.auth import get_user_model
from django.test import AsyncClient, Client, RequestFactory, override_settings
from django.utils import timezone

from review.models import AuditEntry

pytestmark = pytest.mark.django_db

PASSWORD = "right-horse-battery-9"
SITE = "/accounts/login/"
ADMIN = "/admin/login/"


@pytest.fixture
def dora(db):
    """A user with a password (the shared fixtures have none)."""
    return get_user_model().objects.create_user("dora", password=PASSWORD, is_staff=True)


def login(client: Client, url: str, username: str, password: str, address: str = "10.0.0.1", **headers):
    return client.post(url, {"username": username, "password": password}, REMOTE_ADDR=address, **headers)


def logged_in(client: Client) -> bool:
    return "_auth_user_id" in client.session


def minutes_shown(response) -> int:
    match = re.search(r"Try again in (\d+) minutes?", response.content.decode())
    assert match, response.content.decode()
    return int(match.group(1))


def fail(client: Client, url: str, times: int, username: str = "dora", address: str = "10.0.0.1") -> list:
    return [login(client, url, username, "wrong", address).status_code for _ in range(times)]


@pytest.mark.parametrize("url", [SITE, ADMIN])
def test_it_locks_a_login_out_after_ten_failures_even_with_the_right_password(dora, url) -> None:
    client = Client()
    # Nine failures answer the login form again; the tenth is counted, then locks.
    assert fail(client, url, 9) == [200] * 9
    assert login(client, url, "dora", "wrong").status_code == 429
    for _ in range(3):  # the 11th and later: refused, right password or not
        response = login(client, url, "dora", PASSWORD)
        assert response.status_code == 429 and not logged_in(client)
        assert "Too many failed logins" in response.content.decode()
        assert minutes_shown(response) == 15
        assert 14 * 60 < int(response["Retry-After"]) <= 15 * 60


@pytest.mark.parametrize("url", [SITE, ADMIN])
def test_it_lets_the_login_in_once_the_window_has_passed(dora, url) -> None:
    client = Client()
    start = timezone.now()
    with time_machine.travel(start, tick=False) as clock:
        fail(client, url, 10)
        clock.shift(timedelta(minutes=10))
        response = login(client, url, "dora", PASSWORD)  # refused, and it does not extend the lock
        assert response.status_code == 429 and minutes_shown(response) == 5
        clock.shift(timedelta(minutes=4, seconds=59))
        response = login(client, url, "dora", PASSWORD)
        assert response.status_code == 429 and minutes_shown(response) == 1
        clock.shift(timedelta(seconds=2))
        response = login(client, url, "dora", PASSWORD)
        assert response.status_code == 302 and logged_in(client)


def test_it_counts_failures_per_address_across_usernames(dora) -> None:
    client = Client()
    for n in range(10):
        login(client, SITE, f"guess{n}", "wrong", "10.0.0.7")
    (lockout,) = AuditEntry.objects.filter(action=AuditEntry.Action.LOCKOUT)
    assert "logins by address '10.0.0.7' are refused" in lockout.detail  # not guess9's username
    response = login(client, SITE, "dora", PASSWORD, "10.0.0.7")
    assert response.status_code == 429 and not logged_in(client)
    # dora herself, from another address, is not locked: her username has no failures.
    assert login(client, SITE, "dora", PASSWORD, "10.0.0.8").status_code == 302


def test_it_counts_failures_per_username_across_addresses(dora) -> None:
    get_user_model().objects.create_user("erin", password=PASSWORD)
    client = Client()
    for n in range(10):
        login(client, SITE, "dora", "wrong", f"10.0.1.{n}")
    assert login(client, SITE, "dora", PASSWORD, "10.0.2.1").status_code == 429
    assert not logged_in(client)
    # That fresh address is not locked for another user.
    assert login(client, SITE, "erin", PASSWORD, "10.0.2.1").status_code == 302


def test_it_shares_one_count_between_the_site_and_the_admin(dora) -> None:
    client = Client()
    fail(client, SITE, 5)
    fail(client, ADMIN, 5)
    assert login(client, SITE, "dora", PASSWORD).status_code == 429
    assert login(client, ADMIN, "dora", PASSWORD).status_code == 429


def test_it_locks_out_under_asgi_too(dora) -> None:
    """Daphne runs the middleware async: axes' async path must give the same page."""
    client = AsyncClient()

    async def post(password: str):
        return await client.post(SITE, {"username": "dora", "password": password}, REMOTE_ADDR="10.0.0.9")

    codes = [async_to_sync(post)("wrong").status_code for _ in range(10)]
    assert codes == [200] * 9 + [429]
    response = async_to_sync(post)(PASSWORD)
    assert response.status_code == 429 and minutes_shown(response) == 15
    assert "sessionid" not in response.cookies


@override_settings(CHAT_BEHIND_TLS_PROXY=True, CHAT_TRUSTED_PROXIES=["127.0.0.1", "::1"])
def test_it_counts_the_address_the_trusted_proxy_forwarded(dora) -> None:
    client = Client()
    # Behind the proxy, every peer is 127.0.0.1: the clients are told apart by the address the
    # proxy appended, and a client's own X-Forwarded-For entries (to its left) change nothing.
    for n in range(10):
        forged = f"198.51.100.{n}, 203.0.113.5"
        login(client, SITE, f"guess{n}", "wrong", "127.0.0.1", HTTP_X_FORWARDED_FOR=forged)
    blocked = login(client, SITE, "dora", PASSWORD, "127.0.0.1", HTTP_X_FORWARDED_FOR="203.0.113.5")
    assert blocked.status_code == 429
    other = login(client, SITE, "dora", PASSWORD, "127.0.0.1", HTTP_X_FORWARDED_FOR="203.0.113.6")
    assert other.status_code == 302


def test_it_ignores_x_forwarded_for_from_anyone_but_the_trusted_proxy() -> None:
    from review.login_throttle import client_address

    factory = RequestFactory()
    spoofed = factory.post(SITE, REMOTE_ADDR="192.0.2.1", HTTP_X_FORWARDED_FOR="203.0.113.9")
    via_proxy = factory.post(SITE, REMOTE_ADDR="127.0.0.1", HTTP_X_FORWARDED_FOR="1.2.3.4, 203.0.113.9")
    garbage = factory.post(SITE, REMOTE_ADDR="127.0.0.1", HTTP_X_FORWARDED_FOR="not-an-address")
    with override_settings(CHAT_BEHIND_TLS_PROXY=False):
        assert client_address(via_proxy) == "127.0.0.1"
    with override_settings(CHAT_BEHIND_TLS_PROXY=True, CHAT_TRUSTED_PROXIES=["127.0.0.1"]):
        assert client_address(spoofed) == "192.0.2.1"
        assert client_address(via_proxy) == "203.0.113.9"
        assert client_address(garbage) == "127.0.0.1"


def test_it_audits_logins_and_each_lockout_once(dora) -> None:
    client = Client()
    assert login(client, SITE, "dora", PASSWORD).status_code == 302
    (entry,) = AuditEntry.objects.filter(action=AuditEntry.Action.LOGIN)
    assert entry.actor == dora and "10.0.0.1" in entry.object_repr and entry.detail == SITE

    other = Client()
    fail(other, ADMIN, 10, address="10.0.0.2")
    fail(other, ADMIN, 5, address="10.0.0.2")  # refused attempts: no more entries
    (lockout,) = AuditEntry.objects.filter(action=AuditEntry.Action.LOCKOUT)
    assert lockout.actor == dora and lockout.actor_name == "dora"
    assert "10.0.0.2" in lockout.object_repr and "after 10 failed logins" in lockout.detail
    assert "logins by username 'dora', address '10.0.0.2' are refused until" in lockout.detail
    assert AuditEntry.objects.filter(action=AuditEntry.Action.LOGIN).count() == 1


def test_it_audits_a_lockout_of_a_username_that_does_not_exist(db) -> None:
    fail(Client(), SITE, 10, username="nobody")
    (lockout,) = AuditEntry.objects.filter(action=AuditEntry.Action.LOCKOUT)
    assert lockout.actor is None and lockout.actor_name == "nobody"


def test_it_does_not_audit_a_login_by_force_login(dora) -> None:
    Client().force_login(dora)
    assert not AuditEntry.objects.exists()


def test_it_counts_a_username_longer_than_any_account_without_a_500(dora) -> None:
    # axes keeps the attempted username in a 255-character column: PostgreSQL refused a longer
    # one with a DataError (a 500). No account name is over 150 characters (the User model).
    client = Client()
    long_name = "d" * 300
    assert fail(client, SITE, 9, username=long_name, address="10.0.0.9") == [200] * 9
    assert login(client, SITE, long_name, "wrong", "10.0.0.9").status_code == 429
