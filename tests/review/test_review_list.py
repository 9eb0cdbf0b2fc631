"""The conversation list: its filters, full-text search, and a query count fixed whatever the rows."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from conversations import actions as conversation_actions
from conversations.models import Conversation, Message
from review.search import message_matches
from tests.review_data import ALPHA, World, api_call, logged_in, web_chat

CHANGELIST = "admin:conversations_conversation_changelist"


def names(world: World, response) -> set[str]:
    assert response.status_code == 200, response.content[:500]
    ids = {c.pk for c in response.context["cl"].result_list}
    return {name for name, conv in world.conversations.items() if conv.pk in ids}


@pytest.mark.parametrize(
    "query, expected",
    [
        ({"source__exact": "api"}, {"bob_api", "charlie_api"}),
        ({"source__exact": "web"}, ALPHA - {"bob_api"}),
        ({"team": "beta"}, {"charlie_api"}),
        ({"owner": "bob"}, ALPHA),
        ({"api_key": "charlie"}, {"charlie_api"}),
        ({"model": "SmolLM2-135M-Instruct"}, {"bob_api", "charlie_api"}),
        ({"status": "error"}, set()),
        ({"status": "complete"}, ALPHA | {"charlie_api"}),
        ({"deleted": "yes"}, {"bob_deleted"}),
        ({"visibility__exact": "team"}, {"bob_shared", "bob_deleted"}),
    ],
)
def test_it_filters_the_list(world: World, query: dict[str, str], expected: set[str]) -> None:
    ids = {"beta": world.beta.pk, "bob": world.bob.pk, "charlie": world.keys["charlie"].pk}
    query = {key: str(ids.get(value, value)) for key, value in query.items()}
    assert names(world, logged_in(world.root).get(reverse(CHANGELIST), query)) == expected


def test_it_filters_by_message_status(world: World) -> None:
    failed = api_call(world.keys["bob"], "break please", ["partial"], status=Message.Status.ERROR)
    response = logged_in(world.alice).get(reverse(CHANGELIST), {"status": "error"})
    assert [c.pk for c in response.context["cl"].result_list] == [failed.pk]


def test_it_filters_by_date(world: World) -> None:
    old = web_chat(world.bob, world.alpha, "an old question", "old answer", visibility="team")
    Conversation.objects.filter(pk=old.pk).update(created=timezone.now() - timedelta(days=40))
    response = logged_in(world.alice).get(
        reverse(CHANGELIST), {"created__gte": str(timezone.now() - timedelta(days=7))}
    )
    shown = {c.pk for c in response.context["cl"].result_list}
    assert old.pk not in shown and world.conversations["bob_api"].pk in shown


def test_it_offers_only_reviewable_teams_users_and_keys_as_filters(world: World) -> None:
    response = logged_in(world.charlie).get(reverse(CHANGELIST))
    choices = {
        spec.title: [c["display"] for c in spec.choices(response.context["cl"])]
        for spec in response.context["cl"].filter_specs
    }
    assert choices["team"] == ["All", "beta"]
    assert choices["user"] == ["All", "charlie"]
    assert len(choices["API key"]) == 2 and "charlie" in choices["API key"][1]


def test_it_counts_the_filter_choices_on_request(world: World) -> None:
    response = logged_in(world.alice).get(reverse(CHANGELIST), {"_facets": "True", "source__exact": "api"})
    assert response.status_code == 200
    flagged = next(spec for spec in response.context["cl"].filter_specs if spec.title == "flagged")
    assert [c["display"] for c in flagged.choices(response.context["cl"])][1:] == [
        "Flagged (0)",
        "Not flagged (1)",
    ]


@pytest.mark.parametrize(
    "term, expected",
    [
        ("colour", {"bob_api"}),  # a message (the user's question)
        ("Nothing to see", {"charlie_api"}),  # an answer
        ("user-42", {"bob_api"}),  # the request's user field
        ("shared question", {"bob_shared"}),
        ("zebra", set()),
    ],
)
def test_it_searches_message_text(world: World, term: str, expected: set[str]) -> None:
    assert names(world, logged_in(world.root).get(reverse(CHANGELIST), {"q": term})) == expected


def test_it_searches_only_within_the_reviewer_s_scope(world: World) -> None:
    assert names(world, logged_in(world.alice).get(reverse(CHANGELIST), {"q": "Beta secret"})) == set()
    assert names(world, logged_in(world.alice).get(reverse(CHANGELIST), {"q": "private"})) == set()


POSTGRES_URL = os.environ.get("CHAT_TEST_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/review_fts")


@pytest.mark.slow  # a PostgreSQL database made and migrated
def test_it_searches_with_postgres_full_text_search(world: World) -> None:
    """On PostgreSQL: stemming and websearch syntax work, and the planner uses the GIN index.

    A run on SQLite runs this test again in a child pytest on PostgreSQL (its own test database),
    so every run checks the PostgreSQL path."""
    if connection.vendor != "postgresql":
        run_on_postgres("test_it_searches_with_postgres_full_text_search")
        return
    client = logged_in(world.root)
    assert names(world, client.get(reverse(CHANGELIST), {"q": "colours"})) == {"bob_api"}
    assert names(world, client.get(reverse(CHANGELIST), {"q": '"secret plans" -zebra'})) == {"charlie_api"}
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_seqscan = off")
        plan = message_matches("colour").explain()
    assert "review_message_content_fts" in plan


def run_on_postgres(test_name: str) -> None:
    host, port = "127.0.0.1", 5432
    try:
        socket.create_connection((host, port), timeout=2).close()
    except OSError as exc:
        pytest.skip(f"PostgreSQL is not reachable at {host}:{port} ({exc}); start it to run this test")
    env = {**os.environ, "DATABASE_URL": POSTGRES_URL}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", f"{__file__}::{test_name}", "-q", "-p", "no:cacheprovider"],
        cwd=Path(__file__).resolve().parents[2],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "1 passed" in result.stdout


def count_queries(client: Client, url: str) -> int:
    with CaptureQueriesContext(connection) as queries:
        response = client.get(url)
    assert response.status_code == 200
    return len(queries)


# The list page of a team admin: session, user, their admin teams, the four filters that list
# choices (teams, users, keys, models, connections), the COUNT, the page of rows (with owner, team, key and
# flag joined in), the two permission lookups of the sidebar's API-key admin, and the user's theme
# (the page follows their dark-mode choice). A superuser skips the team and permission lookups.
@pytest.mark.parametrize("role, expected", [("alice", 13), ("root", 10)])
def test_it_makes_a_fixed_number_of_queries_whatever_the_row_count(
    world: World, role: str, expected: int, django_assert_num_queries
) -> None:
    client = logged_in(getattr(world, role))
    url = reverse(CHANGELIST) + f"?source__exact=api&team={world.alpha.pk}"
    with django_assert_num_queries(expected):
        assert client.get(url).status_code == 200
    for i in range(30):
        conversation = api_call(world.keys["alice"], f"question {i}", ["answer"])
        logged_in(world.root).post(
            reverse("admin:conversations_conversation_flag", args=[conversation.pk]), {"note": "n"}
        )
    assert Conversation.objects.filter(team=world.alpha, source="api").count() == 31
    with django_assert_num_queries(expected):
        response = client.get(url)
    assert len(response.context["cl"].result_list) == 31
    assert count_queries(client, url + "&q=question") == expected


@pytest.mark.parametrize(
    "role, url_name",
    [
        ("alice", "admin:conversations_membership_changelist"),
        ("root", "admin:conversations_membership_changelist"),
        ("root", "admin:conversations_team_changelist"),
        ("root", "admin:review_auditentry_changelist"),
    ],
)
def test_it_keeps_the_other_review_lists_to_a_fixed_number_of_queries(
    world: World, role: str, url_name: str
) -> None:
    client = logged_in(getattr(world, role))
    url = reverse(url_name)
    before = count_queries(client, url)
    User = get_user_model()
    for i in range(20):
        user = User.objects.create_user(f"member{i}")
        conversation_actions.add_member(world.alpha, user)
        conversation_actions.create_team(f"team{i}", admin=user)
        client.get(
            reverse("admin:conversations_conversation_change", args=[world.conversations["bob_api"].pk])
        )
    assert count_queries(client, url) == before
