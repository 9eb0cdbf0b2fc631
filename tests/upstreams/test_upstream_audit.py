"""The audit trail of model and connection changes: upstream connections added, changed and removed
(the admin and ``manage.py addupstream/removeupstream``), a team's models chosen or reset."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command

from review.models import AuditEntry
from review.services import OPERATOR
from upstreams.models import TeamModels, Upstream

pytestmark = pytest.mark.django_db

FORM = {
    "name": "gpu1",
    "base_url": "http://10.0.0.1:8000/v1",
    "enabled": "on",
    "max_concurrent": "8",
    "queue_max": "32",
    "connect_timeout": "5",
    "read_timeout": "60",
    "api_key": "sk-audited-secret",
    "listed_models": "llama-3-70b",
}


def entries(action: str) -> list[AuditEntry]:
    return list(AuditEntry.objects.filter(action=action).order_by("id"))


def test_it_audits_the_upstreams_an_operator_adds_and_removes(monkeypatch) -> None:
    monkeypatch.setenv("GPU_KEY", "sk-operator-secret")
    call_command(
        "addupstream",
        "gpu2",
        "http://10.0.0.2:8000/v1",
        "--api-key-env",
        "GPU_KEY",
        "--model",
        "qwen-72b",
        "--no-check",
        stdout=None,
    )
    call_command("removeupstream", "gpu2", stdout=None)
    (added,) = entries(AuditEntry.Action.UPSTREAM_ADDED)
    (removed,) = entries(AuditEntry.Action.UPSTREAM_REMOVED)
    for entry in (added, removed):
        assert entry.actor is None and entry.actor_name == OPERATOR and entry.object_repr == "upstream gpu2"
    assert "http://10.0.0.2:8000/v1" in added.detail and "qwen-72b" in added.detail
    assert "sk-operator-secret" not in added.detail + str(added.filters)


def test_it_audits_the_upstreams_a_superuser_adds_changes_and_deletes_in_the_admin(client) -> None:
    root = get_user_model().objects.create_superuser("root", password=None)
    client.force_login(root)
    assert client.post("/admin/upstreams/upstream/add/", FORM).status_code == 302
    upstream = Upstream.objects.get(name="gpu1")
    changed = {**FORM, "max_concurrent": "2", "api_key": "sk-new-secret", "listed_models": "qwen-72b"}
    assert client.post(f"/admin/upstreams/upstream/{upstream.pk}/change/", changed).status_code == 302
    response = client.post(f"/admin/upstreams/upstream/{upstream.pk}/delete/", {"post": "yes"})
    assert response.status_code == 302 and not Upstream.objects.exists()
    (added,) = entries(AuditEntry.Action.UPSTREAM_ADDED)
    (change,) = entries(AuditEntry.Action.UPSTREAM_CHANGED)
    (removed,) = entries(AuditEntry.Action.UPSTREAM_REMOVED)
    assert {added.actor, change.actor, removed.actor} == {root}
    assert "max_concurrent" in change.detail and "API key" in change.detail and "qwen-72b" in change.detail
    assert "read_timeout" not in change.detail  # only what changed
    for entry in (added, change, removed):
        assert "secret" not in entry.detail + str(entry.filters)


def test_it_audits_a_team_s_model_choice_made_by_its_admin(client, alice, alpha) -> None:
    alice.is_staff = True
    alice.save(update_fields=["is_staff"])
    client.force_login(alice)
    response = client.post("/admin/upstreams/teammodels/add/", {"team": alpha.pk, "models": []})
    assert response.status_code == 302, response.content.decode()[:1000]
    choice = TeamModels.objects.get(team=alpha)
    response = client.post(f"/admin/upstreams/teammodels/{choice.pk}/delete/", {"post": "yes"})
    assert response.status_code == 302 and not TeamModels.objects.exists()
    chosen, reset = entries(AuditEntry.Action.TEAM_MODELS)
    assert chosen.actor == alice and chosen.team == alpha and "(none)" in chosen.detail
    assert reset.team == alpha and "every model" in reset.detail
