"""Upstream connections: the row, its encrypted key, the management commands and the admin, with
the scripted fault server (another process) as the server they discover models from."""

from __future__ import annotations

import io

import pytest
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.core.management import CommandError, call_command

from tests.upstream_servers import FaultServer
from upstreams import crypto, services
from upstreams.models import Upstream


@pytest.fixture(scope="module")
def faults(tmp_path_factory):
    server = FaultServer(tmp_path_factory.mktemp("faults")).start()
    yield server
    server.kill()


def run(*args: str) -> str:
    out = io.StringIO()
    call_command(*args, stdout=out, stderr=out)
    return out.getvalue()


@pytest.mark.django_db
def test_it_stores_the_api_key_encrypted_under_the_secret_key(settings) -> None:
    upstream = services.create_upstream("gpu1", "http://10.0.0.1:8000/v1", api_key="sk-very-secret")
    stored = Upstream.objects.get(pk=upstream.pk).api_key_encrypted
    assert stored and "sk-very-secret" not in stored
    assert services.config_for(upstream).api_key == "sk-very-secret"
    settings.SECRET_KEY = "another-secret-key-" * 3
    with pytest.raises(crypto.UndecryptableKey):
        crypto.decrypt(stored)
    assert services.config_for(upstream).api_key == ""  # unreadable: sent without one, not a crash


@pytest.mark.django_db
def test_it_refuses_a_base_url_that_is_not_a_v1_root() -> None:
    for url in ("http://10.0.0.1:8000", "ftp://10.0.0.1/v1", "not a url"):
        with pytest.raises(ValidationError):
            services.create_upstream("x", url)
    assert not Upstream.objects.exists()


@pytest.mark.django_db
def test_it_adds_lists_and_removes_upstreams_with_commands(faults, monkeypatch) -> None:
    monkeypatch.setenv("FAULTS_KEY", "sk-faults")
    out = run("addupstream", "faults", faults.url, "--api-key-env", "FAULTS_KEY", "--max-concurrent", "3")
    assert "fault-ok" in out
    upstream = Upstream.objects.get(name="faults")
    assert upstream.max_concurrent == 3 and "fault-hang" in upstream.discovered_models
    assert services.config_for(upstream).api_key == "sk-faults"
    assert "sk-faults" not in run("upstreams")

    out = run(
        "addupstream", "down", "http://127.0.0.1:9/v1", "--model", "big-model", "--connect-timeout", "0.5"
    )
    assert "did not answer" in out
    assert Upstream.objects.get(name="down").model_ids == ["big-model"]

    listing = run("upstreams")
    faults_line = next(line for line in listing.splitlines() if line.startswith("faults"))
    down_line = next(line for line in listing.splitlines() if line.startswith("down"))
    assert "healthy" in faults_line and "max 3" in faults_line and "key set" in faults_line
    assert "unhealthy" in down_line and "big-model" in down_line

    with pytest.raises(CommandError, match="exists already"):
        run("addupstream", "faults", faults.url)
    monkeypatch.delenv("FAULTS_KEY")
    with pytest.raises(CommandError, match="FAULTS_KEY"):
        run("addupstream", "other", faults.url, "--api-key-env", "FAULTS_KEY")
    assert "Removed" in run("removeupstream", "down")
    with pytest.raises(CommandError):
        run("removeupstream", "down")
    assert list(Upstream.objects.values_list("name", flat=True)) == ["faults"]


@pytest.mark.django_db
def test_it_lets_only_superusers_manage_upstreams_and_never_shows_the_key(client, alice) -> None:
    alice.is_staff = True
    alice.save(update_fields=["is_staff"])
    client.force_login(alice)
    assert client.get("/admin/upstreams/upstream/").status_code == 403

    client.force_login(get_user_model().objects.create_superuser("root", password=None))
    response = client.post(
        "/admin/upstreams/upstream/add/",
        {
            "name": "gpu1",
            "base_url": "http://10.0.0.1:8000/v1/",
            "enabled": "on",
            "max_concurrent": "8",
            "queue_max": "32",
            "connect_timeout": "5",
            "read_timeout": "60",
            "api_key": "sk-admin-secret",
            "listed_models": "llama-3-70b\nqwen-72b\n",
        },
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    upstream = Upstream.objects.get(name="gpu1")
    assert upstream.base_url == "http://10.0.0.1:8000/v1"
    assert upstream.listed_models == ["llama-3-70b", "qwen-72b"]
    assert services.config_for(upstream).api_key == "sk-admin-secret"

    page = client.get(f"/admin/upstreams/upstream/{upstream.pk}/change/").content.decode()
    assert "sk-admin-secret" not in page and upstream.api_key_encrypted not in page
    # Saving without a new key keeps the stored one.
    data = {
        "name": "gpu1",
        "base_url": "http://10.0.0.1:8000/v1",
        "enabled": "on",
        "max_concurrent": "4",
        "queue_max": "32",
        "connect_timeout": "5",
        "read_timeout": "60",
        "api_key": "",
        "listed_models": "llama-3-70b",
    }
    assert client.post(f"/admin/upstreams/upstream/{upstream.pk}/change/", data).status_code == 302
    upstream.refresh_from_db()
    assert upstream.max_concurrent == 4 and services.config_for(upstream).api_key == "sk-admin-secret"
    listing = client.get("/admin/upstreams/upstream/").content.decode()
    assert "gpu1" in listing and "sk-admin-secret" not in listing
