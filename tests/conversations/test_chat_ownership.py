"""Every conversation URL for its owner (alice), her teammate (bob) and an outsider (charlie).

A private conversation: only alice. A shared one: bob reads (and exports) but cannot rename,
share, change the settings or delete it (403: he can see it). Charlie gets 404 on everything, the
same answer as for a conversation that does not exist.
"""

from __future__ import annotations

import pytest
from django.test import Client

from conversations import actions
from conversations.models import Conversation

pytestmark = pytest.mark.django_db

READ_URLS = ["/c/{id}/", "/c/{id}/export.json", "/c/{id}/export.md", "/c/{id}/delete"]
OWNER_POSTS = {
    "/c/{id}/rename": {"title": "taken over"},
    "/c/{id}/sharing": {"visibility": "private"},
    "/c/{id}/settings": {"system_prompt": "be evil", "temperature": "1", "max_tokens": "5"},
    "/c/{id}/delete": {},
}


@pytest.fixture
def bravo(charlie):
    return actions.create_team("bravo", admin=charlie)


@pytest.fixture
def private(alice, alpha) -> Conversation:
    conversation = actions.start_conversation(alice, alpha, title="alice private")
    actions.add_user_message(conversation, "hello")
    return conversation


@pytest.fixture
def shared(alice, alpha) -> Conversation:
    conversation = actions.start_conversation(alice, alpha, title="alice shared", visibility="team")
    actions.add_user_message(conversation, "hello team")
    return conversation


def client_for(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.mark.parametrize("url", READ_URLS)
def test_it_shows_the_owner_every_page(alice, private, url) -> None:
    assert client_for(alice).get(url.format(id=private.pk)).status_code == 200


@pytest.mark.parametrize("url", READ_URLS[:3])
def test_it_shows_a_teammate_a_shared_conversation(bob, shared, url) -> None:
    assert client_for(bob).get(url.format(id=shared.pk)).status_code == 200


@pytest.mark.parametrize("url", READ_URLS)
def test_it_hides_a_private_conversation_from_a_teammate(bob, private, url) -> None:
    assert client_for(bob).get(url.format(id=private.pk)).status_code == 404


@pytest.mark.parametrize("url", READ_URLS)
def test_it_answers_404_to_an_outsider(charlie, bravo, shared, url) -> None:
    client = client_for(charlie)
    assert client.get(url.format(id=shared.pk)).status_code == 404
    assert client.get(url.format(id=shared.pk + 1000)).status_code == 404  # missing: the same answer


@pytest.mark.parametrize("url,data", OWNER_POSTS.items())
def test_it_lets_only_the_owner_change_a_conversation(alice, bob, charlie, bravo, shared, url, data) -> None:
    path = url.format(id=shared.pk)
    assert client_for(charlie).post(path, data).status_code == 404
    assert client_for(bob).post(path, data).status_code == 403
    shared.refresh_from_db()
    assert shared.title == "alice shared"
    assert shared.visibility == "team" and shared.system_prompt == "" and shared.deleted_at is None
    assert client_for(alice).post(path, data).status_code == 302


ANONYMOUS = ["/", "/conversations", "/c/new", "/c/1/", "/c/1/export.json", "/settings/keys"]
ANONYMOUS += ["/settings/keys/1/revoke"]


@pytest.mark.parametrize("url", ANONYMOUS)
def test_it_sends_anonymous_visitors_to_the_login_page(client, url) -> None:
    response = client.get(url)
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/")


def test_it_revokes_only_your_own_api_keys(alice, bob, alpha) -> None:
    key, _ = actions.create_api_key(alice, alpha, "alice's")
    assert client_for(bob).post(f"/settings/keys/{key.pk}/revoke").status_code == 404
    key.refresh_from_db()
    assert key.revoked_at is None
    assert client_for(alice).post(f"/settings/keys/{key.pk}/revoke").status_code == 302
    key.refresh_from_db()
    assert key.revoked_at is not None
