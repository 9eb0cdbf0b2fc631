"""The chat's pages through Django's test client: the list (search, teams, query count), a
conversation's page, the owner's changes, soft delete, export, API keys, and accounts."""

from __future__ import annotations

import json
import re
from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from chatsite.middleware import CONTENT_SECURITY_POLICY
from conversations import actions
from conversations.models import ApiKey, Conversation, Message

pytestmark = pytest.mark.django_db


def client_for(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def chat(alice, alpha) -> Conversation:
    conversation = actions.start_conversation(alice, alpha, title="Sea poems")
    actions.add_user_message(conversation, "Write about *waves*", author=alice)
    (answer,) = actions.start_assistant_messages(conversation, 1, params={"model": "m"}, prompt_tokens=5)
    actions.finish_assistant_message(
        answer.pk,
        actions.Outcome(status="complete", content="Waves `roll`.", completion_tokens=3, duration=0.5),
    )
    return conversation


@pytest.mark.django_db(transaction=True)  # the reply's writes run on other threads
def test_it_creates_a_conversation_with_its_first_message_in_the_current_team(alice, alpha) -> None:
    client = client_for(alice)
    page = client.get("/c/new")  # the new conversation's page saves nothing
    assert page.status_code == 200 and 'id="composer-text"' in page.content.decode()
    assert client.post("/c/new")["Location"] == "/c/new"  # an older page's empty POST: nothing saved
    assert not Conversation.objects.exists()
    response = client.post("/c/new", {"text": "First words"})
    conversation = Conversation.objects.get()
    assert response["Location"] == f"/c/{conversation.pk}/"
    assert (conversation.owner, conversation.team, conversation.source) == (alice, alpha, "web")
    assert conversation.visibility == "private" and conversation.title == "First words"
    assert [m.content for m in conversation.messages.filter(role="user")] == ["First words"]


def test_a_refused_first_message_saves_nothing_and_comes_back_in_the_box(alice) -> None:
    response = client_for(alice).post("/c/new", {"text": "x" * 40_000})
    assert response.status_code == 400 and "too long" in response.content.decode()
    assert "x" * 40_000 in response.content.decode()
    assert not Conversation.objects.exists()


def test_a_new_conversation_can_start_from_ones_message(alice, bob, chat) -> None:
    message = chat.messages.get(role="user")
    page = client_for(alice).get(f"/c/new?from={message.pk}").content.decode()
    assert "Write about *waves*</textarea>" in page
    assert client_for(bob).get(f"/c/new?from={message.pk}").status_code == 404  # private


def test_it_shows_the_messages_rendered_inside_hx_disable_under_a_strict_csp(alice, chat) -> None:
    response = client_for(alice).get(f"/c/{chat.pk}/")
    page = response.content.decode()
    assert response["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
    assert "<em>waves</em>" in page and "<code>roll</code>" in page
    bodies = re.findall(r'<div id="m-\d+-body" class="msg-body"([^>]*)>', page)
    assert len(bodies) == 2 and all("hx-disable" in attrs for attrs in bodies)
    assert re.search(r"<script(?![^>]*\bsrc=)", page) is None  # no inline script
    assert f'ws-connect="/ws/c/{chat.pk}/"' in page
    assert "3 tokens · 0.5 s" in page
    assert 'aria-live="polite"' in page


def test_it_offers_edit_on_ones_own_messages_only(alice, bob, chat) -> None:
    chat.visibility = "team"
    chat.save()
    assert 'class="link edit-toggle"' in client_for(alice).get(f"/c/{chat.pk}/").content.decode()
    assert 'class="link edit-toggle"' not in client_for(bob).get(f"/c/{chat.pk}/").content.decode()


def test_it_lists_own_and_shared_conversations_newest_first_in_few_queries(
    alice, bob, alpha, django_assert_max_num_queries
) -> None:
    for i in range(3):
        actions.start_conversation(alice, alpha, title=f"mine {i}")
    actions.start_conversation(bob, alpha, title="bob shared", visibility="team")
    actions.start_conversation(bob, alpha, title="bob private")
    actions.start_conversation(alice, alpha, title="an API call", source="api")
    client = client_for(alice)
    with django_assert_max_num_queries(8):
        page = client.get("/").content.decode()
    titles = re.findall(r'class="conversation-title">([^<]+)<', page)
    assert titles == ["bob shared", "mine 2", "mine 1", "mine 0"]
    assert "shared by bob" in page


def test_it_searches_titles_and_message_text(alice, chat, alpha) -> None:
    actions.start_conversation(alice, alpha, title="Taxes")
    client = client_for(alice)
    assert "Sea poems" in client.get("/conversations", {"q": "WAVES"}).content.decode()
    found = client.get("/conversations", {"q": "tax"}).content.decode()
    assert "Taxes" in found and "Sea poems" not in found
    assert "Nothing matches" in client.get("/", {"q": "zebra"}).content.decode()


def test_it_searches_no_superseded_text(alice, chat) -> None:
    chat.messages.filter(role="user").update(superseded_at=timezone.now())
    assert "Sea poems" not in client_for(alice).get("/conversations", {"q": "write about"}).content.decode()


@pytest.mark.django_db(transaction=True)  # the reply's writes run on other threads
def test_it_switches_between_the_users_teams(alice, alpha) -> None:
    beta = actions.create_team("beta", admin=alice)
    actions.start_conversation(alice, beta, title="in beta")
    client = client_for(alice)
    assert "in beta" not in client.get("/").content.decode()  # alpha first (by name)
    assert client.post("/team", {"team": beta.pk}).status_code == 302
    page = client.get("/").content.decode()
    assert "in beta" in page
    client.post("/c/new", {"text": "Hello beta"})
    assert Conversation.objects.latest("id").team == beta


def test_it_refuses_to_switch_to_someone_elses_team(alice, charlie) -> None:
    other = actions.create_team("other", admin=charlie)
    assert client_for(alice).post("/team", {"team": other.pk}).status_code == 404


def test_it_renames_shares_and_sets_the_settings(alice, chat) -> None:
    client = client_for(alice)
    client.post(f"/c/{chat.pk}/rename", {"title": "  Poems   of the sea "})
    client.post(f"/c/{chat.pk}/sharing", {"visibility": "team"})
    client.post(
        f"/c/{chat.pk}/settings", {"system_prompt": "Rhyme.", "temperature": "0.2", "max_tokens": "64"}
    )
    chat.refresh_from_db()
    assert chat.title == "Poems of the sea" and chat.visibility == "team"
    assert (chat.system_prompt, chat.temperature, chat.max_tokens) == ("Rhyme.", 0.2, 64)


def test_it_rejects_out_of_range_settings(alice, chat) -> None:
    client = client_for(alice)
    response = client.post(f"/c/{chat.pk}/settings", {"temperature": "5", "max_tokens": "0"}, follow=True)
    assert "Settings not saved" in response.content.decode()
    chat.refresh_from_db()
    assert chat.temperature is None and chat.max_tokens is None


def test_it_deletes_softly_and_says_so(alice, bob, chat) -> None:
    client = client_for(alice)
    assert "kept for the site's reviewers" in client.get(f"/c/{chat.pk}/delete").content.decode()
    response = client.post(f"/c/{chat.pk}/delete", follow=True)
    assert "was deleted" in response.content.decode()
    chat.refresh_from_db()
    assert chat.deleted_at is not None and chat.messages.count() == 2  # kept for reviewers
    assert client.get(f"/c/{chat.pk}/").status_code == 404
    assert "Sea poems" not in client.get("/").content.decode()


def test_it_exports_json_in_the_openai_messages_format(alice, chat) -> None:
    chat.system_prompt = "Be brief."
    chat.save()
    response = client_for(alice).get(f"/c/{chat.pk}/export.json")
    assert response["Content-Disposition"] == f'attachment; filename="Sea-poems-{chat.pk}.json"'
    assert json.loads(response.content)["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Write about *waves*"},
        {"role": "assistant", "content": "Waves `roll`."},
    ]


def test_it_exports_markdown(alice, chat) -> None:
    response = client_for(alice).get(f"/c/{chat.pk}/export.md")
    assert response["Content-Type"].startswith("text/markdown")
    text = response.content.decode()
    assert text.startswith("# Sea poems\n") and "## User\n\nWrite about *waves*" in text
    assert "## Assistant\n\nWaves `roll`." in text


def test_it_shows_a_stale_stream_as_interrupted_with_its_text_and_regenerate(alice, chat) -> None:
    (stale,) = actions.start_assistant_messages(chat, 1, params={}, prompt_tokens=5)
    actions.checkpoint_assistant_message(stale.pk, "half an ans")
    Message.objects.filter(pk=stale.pk).update(heartbeat_at=timezone.now() - timedelta(minutes=5))
    (live,) = actions.start_assistant_messages(chat, 1, params={}, prompt_tokens=5)  # fresh heartbeat
    page = client_for(alice).get(f"/c/{chat.pk}/").content.decode()
    stale.refresh_from_db()
    live.refresh_from_db()
    assert stale.status == "interrupted" and stale.content == "half an ans"
    assert live.status == "streaming"  # a live process's stream is never touched
    article = page.split(f'id="m-{stale.pk}"')[1].split("</article>")[0]
    assert "half an ans" in article and "Regenerate" in article and "Interrupted" in article


def test_it_says_when_the_oldest_messages_were_left_out(alice, chat) -> None:
    chat.messages.filter(role="assistant").update(params={"model": "m", "dropped_messages": 4})
    page = client_for(alice).get(f"/c/{chat.pk}/").content.decode()
    assert "The 4 oldest messages of this conversation were left out of the prompt" in page


def test_it_creates_an_api_key_shown_once_and_lists_it_by_prefix(alice, alpha) -> None:
    client = client_for(alice)
    response = client.post("/settings/keys", {"team": alpha.pk, "name": "nightly"}, follow=True)
    page = response.content.decode()
    key = ApiKey.objects.get()
    plain = re.search(r'<code id="new-key">([^<]+)</code>', page).group(1)
    assert actions.authenticate_api_key(plain) == key
    assert response["Cache-Control"] == "no-store"
    listing = client.get("/settings/keys").content.decode()
    assert plain not in listing and f"csk-{key.prefix}" in listing and "nightly" in listing
    assert "alpha" in listing and "never" in listing


def test_it_refuses_a_key_for_a_team_the_user_is_not_in(alice, charlie) -> None:
    other = actions.create_team("other", admin=charlie)
    assert client_for(alice).post("/settings/keys", {"team": other.pk}).status_code == 404
    assert not ApiKey.objects.exists()


def test_it_logs_in_changes_the_password_and_logs_out(alice, alpha) -> None:
    alice.set_password("old-password-123")
    alice.save()
    client = Client()
    response = client.post("/accounts/login/", {"username": "alice", "password": "old-password-123"})
    assert response["Location"] == "/"
    response = client.post(
        "/accounts/password_change/",
        {
            "old_password": "old-password-123",
            "new_password1": "n3w-pass-phrase!",
            "new_password2": "n3w-pass-phrase!",
        },
    )
    assert response.status_code == 302
    alice.refresh_from_db()
    assert alice.check_password("n3w-pass-phrase!")
    assert client.post("/accounts/logout/")["Location"] == "/accounts/login/"
    assert client.get("/")["Location"].startswith("/accounts/login/")


def test_it_keeps_the_status_page_at_status(client) -> None:
    assert client.get("/status").status_code == 200
