"""Team model permissions: team admins choose the models their team may use (default: all); any
other model answers 404 model_not_found on /v1, and /v1/models leaves it out."""

from __future__ import annotations

import json

import pytest

from conversations import actions
from upstreams import registry
from upstreams import services as upstream_services
from upstreams.models import TeamModels


@pytest.fixture
def setup(alice, bob, alpha, settings, monkeypatch):
    from conversations import runtime

    settings.CHAT_MODEL_PATH = "/models/front-tiny.gguf"  # its id; never loaded by these tests
    monkeypatch.setattr(runtime, "_runtime", None)
    upstream_services.create_upstream("gpu", "http://127.0.0.1:9/v1", models=["big-model", "other-model"])
    registry.invalidate()
    _, plain = actions.create_api_key(bob, alpha)
    return plain


def ids(client, plain: str) -> list[str]:
    response = client.get("/v1/models", HTTP_AUTHORIZATION=f"Bearer {plain}")
    return [card["id"] for card in json.loads(response.content)["data"]]


def ask(client, plain: str, model: str):
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
    return client.post(
        "/v1/chat/completions",
        json.dumps(body),
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {plain}",
    )


@pytest.mark.django_db(transaction=True)
def test_it_lets_a_team_use_every_model_by_default_and_only_the_chosen_ones_after(
    client, alpha, setup
) -> None:
    plain = setup
    assert {"big-model", "other-model"} <= set(ids(client, plain))
    TeamModels.objects.create(team=alpha, models=["big-model"])
    assert "other-model" not in ids(client, plain) and "big-model" in ids(client, plain)
    response = ask(client, plain, "other-model")
    assert response.status_code == 404 and json.loads(response.content)["error"]["code"] == "model_not_found"
    # An allowed upstream model goes on to the upstream (which is down here: 502, not 404).
    assert ask(client, plain, "big-model").status_code == 502


@pytest.mark.django_db
def test_it_lets_team_admins_choose_only_their_teams_models(client, alice, bob, charlie, alpha) -> None:
    for user in (alice, bob, charlie):
        user.is_staff = True
        user.save(update_fields=["is_staff"])
    other = actions.create_team("zeta-team", admin=charlie)
    client.force_login(bob)  # a member, not an admin
    assert client.get("/admin/upstreams/teammodels/add/").status_code == 403
    client.force_login(alice)
    page = client.get("/admin/upstreams/teammodels/add/").content.decode()
    assert "alpha" in page and "zeta-team" not in page
    response = client.post("/admin/upstreams/teammodels/add/", {"team": other.pk, "models": []})
    assert response.status_code == 200 and not TeamModels.objects.exists()  # not her team: refused
    mine = TeamModels.objects.create(team=other, models=[])
    assert client.get(f"/admin/upstreams/teammodels/{mine.pk}/change/").status_code in (302, 403, 404)
