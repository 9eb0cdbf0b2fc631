"""A new API key (admin or the keys page) is shown once, from the server side: never in a cookie
(Django's messages keep theirs in one), never again on a reload."""

from __future__ import annotations

import re

import pytest
from django.contrib.auth import get_user_model
from django.contrib.messages.storage.cookie import CookieStorage
from django.http import HttpRequest
from django.test import Client

from conversations import actions
from conversations.models import ApiKey

pytestmark = pytest.mark.django_db

SHOWN = re.compile(r'<code id="new-key">([^<]+)</code>')


def cookie_texts(client: Client, *responses) -> list[str]:
    """Every cookie the responses set or the client holds, decoded where Django signs or
    compresses it (the messages cookie)."""
    texts = []
    for morsel in [*(m for r in responses for m in r.cookies.values()), *client.cookies.values()]:
        texts.append(morsel.value)
        if morsel.key == "messages" and morsel.value:
            decoded = CookieStorage(HttpRequest())._decode(morsel.value) or []
            texts.extend(str(message) for message in decoded)
    return texts


def secret_of(plain: str) -> str:
    """The key's secret: all after ``csk-<prefix>-`` (a urlsafe secret may itself hold a "-")."""
    return plain.split("-", 2)[2]


def assert_nowhere_in_cookies(client: Client, plain: str, *responses) -> None:
    secret = secret_of(plain)
    for text in cookie_texts(client, *responses):
        assert plain not in text and secret not in text


def session_texts(client: Client) -> str:
    return repr(dict(client.session.items()))


def test_it_shows_an_admin_made_key_once_and_never_in_a_cookie(alice, alpha) -> None:
    client = Client()
    client.force_login(get_user_model().objects.create_superuser("root", password=None))
    created = client.post(
        "/admin/conversations/apikey/add/", {"user": alice.pk, "team": alpha.pk, "name": "from admin"}
    )
    key = ApiKey.objects.get()
    assert created.status_code == 302
    assert created["Location"] == f"/admin/conversations/apikey/{key.pk}/change/"
    shown = client.get(created["Location"])
    plain = SHOWN.search(shown.content.decode()).group(1)
    assert actions.authenticate_api_key(plain) == key
    assert "no-store" in shown["Cache-Control"]
    assert_nowhere_in_cookies(client, plain, created, shown)
    # Shown once: gone from the session, and a reload shows only the prefix.
    assert secret_of(plain) not in session_texts(client)
    again = client.get(created["Location"]).content.decode()
    assert plain not in again and not SHOWN.search(again) and key.prefix in again


def test_it_shows_a_key_made_on_the_keys_page_once_and_never_in_a_cookie(alice, alpha) -> None:
    client = Client()
    client.force_login(alice)
    created = client.post("/settings/keys", {"team": alpha.pk, "name": "nightly"})
    assert created.status_code == 302 and created["Location"] == "/settings/keys"
    shown = client.get("/settings/keys")
    plain = SHOWN.search(shown.content.decode()).group(1)
    assert actions.authenticate_api_key(plain) == ApiKey.objects.get()
    assert "no-store" in shown["Cache-Control"]
    assert_nowhere_in_cookies(client, plain, created, shown)
    assert secret_of(plain) not in session_texts(client)
    again = client.get("/settings/keys").content.decode()
    assert plain not in again and not SHOWN.search(again) and "nightly" in again


def test_it_shows_each_of_two_keys_made_before_the_page_is_seen(alice, alpha) -> None:
    client = Client()
    client.force_login(alice)
    client.post("/settings/keys", {"team": alpha.pk, "name": "one"})
    client.post("/settings/keys", {"team": alpha.pk, "name": "two"})
    page = client.get("/settings/keys").content.decode()
    shown = re.findall(r'<div class="card new-key".*?<code[^>]*>([^<]+)</code>', page, re.DOTALL)
    assert sorted(actions.authenticate_api_key(p).name for p in shown) == ["one", "two"]
