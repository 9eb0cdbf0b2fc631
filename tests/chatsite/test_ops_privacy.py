"""What /ready and /status show to whom, and the /metrics token rule behind a proxy.

Anonymous and non-staff callers get generic states ("ok" / "failing", the model's state); the
error text (hosts, users, file paths) is for staff and for the metrics token only.
"""

from __future__ import annotations

import os
import subprocess

import pytest
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django.test import Client

from conversations.runtime import get_runtime
from tests.live_server import PYTHON, ROOT

pytestmark = pytest.mark.django_db(transaction=True)

# Nothing listens on port 1; the user and password must never reach an anonymous caller.
DEAD_REDIS = "redis://secret-user:secret-pass@127.0.0.1:1/0"


@pytest.fixture
def dead_redis(settings):
    settings.CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [{"address": DEAD_REDIS, "socket_connect_timeout": 1}]},
        }
    }


@pytest.fixture
def staff(django_user_model):
    return django_user_model.objects.create_user("olivia", is_staff=True)


def test_it_gives_anonymous_callers_of_ready_no_error_text(dead_redis, alice) -> None:
    for client in (Client(), logged_in(alice)):
        response = client.get("/ready")
        assert response.status_code == 503
        body = response.content.decode()
        assert "secret" not in body and "127.0.0.1" not in body and "Error" not in body
        assert response.json()["checks"]["channel_layer"] == "failing"


def test_it_gives_staff_the_error_text_of_ready(dead_redis, staff) -> None:
    response = logged_in(staff).get("/ready")
    assert response.status_code == 503
    detail = response.json()["checks"]["channel_layer"]
    assert detail not in ("ok", "failing") and "Error" in detail


def test_it_gives_the_metrics_token_the_error_text_of_ready(dead_redis, settings) -> None:
    settings.CHAT_METRICS_TOKEN = "s3cret-token"
    response = Client().get("/ready", HTTP_AUTHORIZATION="Bearer s3cret-token")
    assert response.json()["checks"]["channel_layer"] not in ("ok", "failing")


def test_it_hides_the_model_path_from_anonymous_and_non_staff_users(client, alice) -> None:
    path = get_runtime().model_path
    assert path
    for viewer in (Client(), logged_in(alice)):
        page = viewer.get("/status").content.decode()
        assert path not in page
        assert "State" in page


def test_it_shows_the_model_path_to_staff(staff) -> None:
    page = logged_in(staff).get("/status").content.decode()
    assert get_runtime().model_path in page


def test_it_hides_a_load_error_from_anonymous_users() -> None:
    runtime = get_runtime()
    saved = runtime.error, runtime.state
    runtime.error, runtime.state = "/secret/models/x.gguf: not a GGUF file", "error"
    try:
        page = Client().get("/status").content.decode()
    finally:
        runtime.error, runtime.state = saved
    assert "/secret/models" not in page
    assert "error" in page


def test_it_requires_a_metrics_token_behind_a_tls_proxy(settings) -> None:
    settings.CHAT_BEHIND_TLS_PROXY = True
    settings.CHAT_METRICS_TOKEN = ""
    with pytest.raises(SystemCheckError, match="chatsite.E006"):
        call_command("check")
    settings.CHAT_METRICS_TOKEN = "a-token"
    call_command("check")


@pytest.mark.slow  # a process
def test_it_refuses_to_start_behind_a_proxy_without_a_metrics_token(tmp_path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHAT_")}
    env.update({"CHAT_DATA_DIR": str(tmp_path), "CHAT_BEHIND_TLS_PROXY": "1"})
    done = subprocess.run(
        [PYTHON, "manage.py", "check"], cwd=ROOT, env=env, capture_output=True, text=True, check=False
    )
    assert done.returncode != 0
    assert "CHAT_METRICS_TOKEN" in done.stderr


def logged_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client
