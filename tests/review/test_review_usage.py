"""The usage page: tokens per day per team, user and API key, its server-rendered chart, its CSV."""

from __future__ import annotations

import csv
import io
from datetime import timedelta

from django.urls import reverse
from django.utils import timezone

from conversations.models import Message
from review import usage
from tests.review_data import World, api_call, logged_in


def csv_rows(response) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(response.content.decode())))


def test_it_sums_tokens_per_day_team_user_and_key(world: World) -> None:
    api_call(world.keys["bob"], "two answers", ["one two three", "four five"], prompt_tokens=20)  # n=2
    today = timezone.now().date()
    rows = usage.usage_rows(world.root, today, today)
    by_key = {(r.team, r.user, r.api_key): r for r in rows}
    bob_api = by_key[("alpha", "bob", world.keys["bob"].prefix)]
    # Two calls: 12 + 20 prompt tokens (the n=2 call's prompt counted once), 1 + 3 + 2 completion.
    assert (bob_api.requests, bob_api.prompt_tokens, bob_api.completion_tokens) == (2, 32, 6)
    bob_web = by_key[("alpha", "bob", "")]
    assert (bob_web.requests, bob_web.prompt_tokens, bob_web.completion_tokens) == (3, 15, 9)
    assert {r.day for r in rows} == {today}
    assert ("beta", "charlie", world.keys["charlie"].prefix) in by_key


def test_it_counts_a_team_admin_s_whole_team_but_nothing_else(world: World) -> None:
    today = timezone.now().date()
    rows = usage.usage_rows(world.alice, today, today)
    assert {r.team for r in rows} == {"alpha"}
    # Private chats count too: usage carries no content.
    assert sum(r.requests for r in rows if r.api_key == "") == 3
    assert usage.usage_rows(world.bob, today, today) == []


def test_it_keeps_to_the_chosen_period(world: World) -> None:
    old = api_call(world.keys["bob"], "long ago", ["yes"])
    Message.objects.filter(conversation=old).update(created=timezone.now() - timedelta(days=20))
    today = timezone.now().date()
    recent = usage.usage_rows(world.root, today - timedelta(days=6), today)
    assert sum(r.requests for r in recent) == 5
    earlier = usage.usage_rows(world.root, today - timedelta(days=25), today - timedelta(days=15))
    assert [(r.day, r.requests) for r in earlier] == [((timezone.now() - timedelta(days=20)).date(), 1)]


def test_it_draws_the_chart_and_the_table(world: World) -> None:
    response = logged_in(world.alice).get(reverse("review:usage"))
    page = response.content.decode()
    assert response.status_code == 200
    assert '<svg xmlns="http://www.w3.org/2000/svg" id="usage-chart"' in page
    assert page.count('<g class="bar">') == 14  # the default period: the last 14 days
    assert "<script" not in page.split('id="usage-chart"')[1].split("</svg>")[0]
    table = page.split('id="usage-table"')[1]
    assert "<td>alpha</td><td>bob</td>" in table and world.keys["bob"].prefix in table
    assert "beta" not in table


def test_it_filters_the_page_and_the_csv_by_period_and_team(world: World) -> None:
    today = timezone.now().date()
    query = {"start": str(today - timedelta(days=2)), "end": str(today), "team": str(world.beta.pk)}
    root = logged_in(world.root)
    page = root.get(reverse("review:usage"), query).content.decode()
    assert page.count('<g class="bar">') == 3
    rows = csv_rows(root.get(reverse("review:usage_csv"), query))
    assert rows == [
        {
            "day": str(today),
            "team": "beta",
            "user": "charlie",
            "api_key": world.keys["charlie"].prefix,
            "requests": "1",
            "prompt_tokens": "12",
            "completion_tokens": "3",
            "model": "SmolLM2-135M-Instruct",
        }
    ]


def test_it_refuses_another_team_in_the_team_filter(world: World) -> None:
    """charlie asking for alpha's usage: the choice is not offered, so the form falls back."""
    response = logged_in(world.charlie).get(reverse("review:usage_csv"), {"team": str(world.alpha.pk)})
    assert {r["team"] for r in csv_rows(response)} == {"beta"}


def test_it_says_why_a_period_is_refused(world: World) -> None:
    today = timezone.now().date()
    page = logged_in(world.root).get(
        reverse("review:usage"), {"start": str(today), "end": str(today - timedelta(days=3))}
    )
    assert "The start comes after the end." in page.content.decode()
