"""Review of upstream traffic: the conversation list filtered by model and by connection (what
each reply's log says), and the usage page and CSV split by model."""

from __future__ import annotations

import csv
import io

from django.urls import reverse
from django.utils import timezone

from conversations.models import Message
from review import usage
from tests.review_data import World, api_call, logged_in, web_chat
from upstreams import services as upstream_services

CHANGELIST = "admin:conversations_conversation_changelist"


def served_by(conversation, model: str, connection: str | None) -> None:
    """Log the conversation's replies as answered by ``model`` through ``connection``."""
    for reply in Message.objects.filter(conversation=conversation, role="assistant"):
        params = {**reply.params, "model": model}
        if connection:
            params["upstream"] = connection
        Message.objects.filter(pk=reply.pk).update(params=params)


def shown(world: World, user, query: dict[str, str]) -> set[int]:
    response = logged_in(user).get(reverse(CHANGELIST), query)
    return {c.pk for c in response.context["cl"].result_list}


def test_it_filters_conversations_by_model_and_connection(world: World) -> None:
    upstream_services.create_upstream("gpu1", "http://127.0.0.1:9/v1")
    big = api_call(world.keys["bob"], "big question", ["big answer"], model_id="big-model")
    served_by(big, "big-model", "gpu1")
    # A browser chat that switched to big-model (through another connection) after its first reply.
    switched = web_chat(world.bob, world.alpha, "small first", "small answer", visibility="team")
    served_by(switched, "big-model", "gpu2")
    switched.model_id = "small-model"
    switched.save(update_fields=["model_id"])
    assert shown(world, world.root, {"model": "big-model"}) == {big.pk, switched.pk}
    assert shown(world, world.root, {"connection": "gpu1"}) == {big.pk}
    assert shown(world, world.root, {"connection": "gpu2"}) == {switched.pk}
    embedded = shown(world, world.root, {"connection": "embedded"})
    assert world.conversations["bob_api"].pk in embedded and not embedded & {big.pk, switched.pk}
    response = logged_in(world.alice).get(reverse(CHANGELIST))
    choices = {
        spec.title: [c["display"] for c in spec.choices(response.context["cl"])]
        for spec in response.context["cl"].filter_specs
    }
    assert "gpu1" in choices["connection"] and "embedded model" in choices["connection"]
    assert "big-model" in choices["model"]


def test_it_splits_the_usage_by_model(world: World) -> None:
    big = api_call(
        world.keys["bob"], "big question", ["one two three"], model_id="big-model", prompt_tokens=40
    )
    served_by(
        big, "gpt-3.5-turbo", "gpu1"
    )  # the API logs the id the client asked for; the call's model counts
    chat = web_chat(world.bob, world.alpha, "hello", "four five", visibility="team")
    served_by(chat, "big-model", "gpu1")
    today = timezone.now().date()
    rows = usage.usage_rows(world.root, today, today)
    big_rows = [r for r in rows if r.model == "big-model"]
    assert {(r.api_key, r.requests, r.completion_tokens) for r in big_rows} == {
        (world.keys["bob"].prefix, 1, 3),
        ("", 1, 3),
    }
    by_model = {t.model: t for t in usage.model_totals(rows)}
    assert by_model["big-model"].requests == 2 and by_model["big-model"].completion_tokens == 6
    client = logged_in(world.root)
    page = client.get(reverse("review:usage")).content.decode()
    assert 'id="usage-by-model"' in page and "big-model" in page
    lines = list(csv.DictReader(io.StringIO(client.get(reverse("review:usage_csv")).content.decode())))
    assert {line["model"] for line in lines} >= {"big-model"}
