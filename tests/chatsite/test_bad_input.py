"""Input no page can store or use gets a 4xx with a clear message, or is handled: never a 500.

NUL characters (which PostgreSQL text cannot hold) in any form or query parameter; integers past
64 bits in the review list's filters; dates at the calendar's edges on the usage page. Run on
SQLite and on PostgreSQL (``DATABASE_URL=postgres://…``): CI runs both.
"""

from __future__ import annotations

import pytest
from django.test import Client
from django.urls import reverse
from django.utils.html import escape

from conversations import actions
from conversations.models import ApiKey, Conversation
from review.models import Flag
from tests.review_data import World, logged_in

CHANGELIST = "admin:conversations_conversation_changelist"
EXPORT = "admin:conversations_conversation_export"
HUGE = "99999999999999999999"  # past 64 bits


def assert_refused_nul(response, field: str) -> None:
    assert response.status_code == 400, response.content[:300]
    text = response.content.decode()
    assert "NUL" in text and field in text


@pytest.fixture
def alice_chat(world: World) -> Conversation:
    return actions.start_conversation(world.alice, world.alpha, title="kept", source="web")


def test_it_refuses_a_nul_in_a_rename(world: World, alice_chat: Conversation) -> None:
    response = logged_in(world.alice).post(reverse("chat:rename", args=[alice_chat.pk]), {"title": "a\x00b"})
    assert_refused_nul(response, "title")
    alice_chat.refresh_from_db()
    assert alice_chat.title == "kept"


def test_it_refuses_a_nul_in_a_key_name(world: World) -> None:
    before = ApiKey.objects.count()
    response = logged_in(world.alice).post(
        reverse("chat:api_keys"), {"team": str(world.alpha.pk), "name": "my\x00key"}
    )
    assert_refused_nul(response, "name")
    assert ApiKey.objects.count() == before


def test_it_refuses_a_nul_in_a_flag_note(world: World) -> None:
    conversation = world.conversations["bob_api"]
    url = reverse("admin:conversations_conversation_flag", args=[conversation.pk])
    response = logged_in(world.root).post(url, {"note": "look\x00here"})
    assert_refused_nul(response, "note")
    assert not Flag.objects.filter(conversation=conversation).exists()


@pytest.mark.parametrize("url", [reverse("chat:home"), reverse("chat:list")])
def test_it_refuses_a_nul_in_the_chat_search(world: World, url: str) -> None:
    assert_refused_nul(logged_in(world.bob).get(url, {"q": "shared\x00"}), "q")


@pytest.mark.parametrize(
    "query",
    [{"q": "colour\x00"}, {"model": "\x00"}, {"status": "\x00"}, {"team\x00": "1"}],
    ids=["search", "model", "status", "key"],
)
def test_it_refuses_a_nul_in_the_review_list_and_its_export(world: World, query: dict[str, str]) -> None:
    client = logged_in(world.root)
    field = next(iter(query)).replace("\x00", "\\x00")
    assert_refused_nul(client.get(reverse(CHANGELIST), query), field)
    assert_refused_nul(client.get(reverse(EXPORT, args=["jsonl"]), query), field)


def test_it_answers_a_nul_on_the_login_page_with_the_same_message() -> None:
    assert_refused_nul(Client().post(reverse("login"), {"username": "a\x00", "password": "x"}), "username")


@pytest.mark.parametrize("name", ["team", "owner", "api_key"])
@pytest.mark.parametrize("value", [HUGE, "9223372036854775808", "1" + "0" * 900])
def test_it_matches_nothing_for_an_id_filter_out_of_range(world: World, name: str, value: str) -> None:
    client = logged_in(world.root)
    response = client.get(reverse(CHANGELIST), {name: value})
    assert response.status_code == 200
    assert list(response.context["cl"].result_list) == []
    export = client.get(reverse(EXPORT, args=["jsonl"]), {name: value})
    assert export.status_code == 200 and b"".join(export.streaming_content) == b""


def test_it_lists_no_membership_for_a_team_out_of_range(world: World) -> None:
    response = logged_in(world.root).get(reverse("admin:conversations_membership_changelist"), {"team": HUGE})
    assert response.status_code == 200
    assert list(response.context["cl"].result_list) == []


@pytest.mark.parametrize(
    "query",
    [
        {"end": "9999-12-31"},
        {"start": "9999-12-31"},
        {"start": "9999-12-30", "end": "9999-12-31"},
        {"end": "0001-01-01"},
        {"start": "0001-01-01", "end": "0001-01-01"},
        {"end": "0001-01-05"},
        {"end": "99999-01-01"},
        {"team": HUGE},
    ],
    ids=lambda q: "&".join(f"{k}={v}" for k, v in q.items()),
)
def test_it_answers_dates_at_the_calendar_edges_with_a_form_error(world: World, query: dict) -> None:
    client = logged_in(world.root)
    page = client.get(reverse("review:usage"), query)
    assert page.status_code == 200
    errors = [e for field_errors in page.context["form"].errors.values() for e in field_errors]
    assert errors  # said on the page, and the default period is shown
    assert all(escape(e) in page.content.decode() for e in errors)
    csv = client.get(reverse("review:usage_csv"), query)
    assert csv.status_code == 200


@pytest.mark.parametrize("team", ["\u00b2", "\u0661", HUGE, "-1", ""])
def test_it_answers_404_for_a_team_that_is_no_id(world: World, team: str) -> None:
    client = logged_in(world.alice)
    before = ApiKey.objects.count()
    assert client.post(reverse("chat:switch_team"), {"team": team}).status_code == 404
    assert client.post(reverse("chat:api_keys"), {"team": team, "name": "x"}).status_code == 404
    assert ApiKey.objects.count() == before


@pytest.mark.parametrize(
    "url",
    [reverse("chat:home"), reverse(CHANGELIST), reverse("admin:conversations_team_changelist")],
)
def test_it_refuses_a_search_too_long_to_run(world: World, url: str) -> None:
    """SQLite refuses a LIKE pattern past 50,000 bytes (a 500); no search needs more than 1000 characters."""
    response = logged_in(world.root).get(url, {"q": "x" * 100_000})
    assert response.status_code == 400
    assert "too long" in response.content.decode()
    assert logged_in(world.root).get(url, {"q": "x" * 1000}).status_code == 200
