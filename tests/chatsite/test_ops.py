"""/health, /ready and /metrics."""

from __future__ import annotations

import pytest
from django.test import Client

from conversations import metrics
from conversations.runtime import get_runtime

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def runtime():
    runtime = get_runtime()
    runtime.load(timeout=120)
    yield runtime
    runtime.shutting_down = False


def test_it_reports_ready_when_model_database_and_channel_layer_answer(runtime) -> None:
    response = Client().get("/ready")
    assert response.status_code == 200
    assert response.json() == {
        "status": "ready",
        "checks": {"model": "ok", "database": "ok", "channel_layer": "ok"},
    }


def test_it_reports_not_ready_while_shutting_down(runtime) -> None:
    runtime.shutting_down = True
    response = Client().get("/ready")
    assert response.status_code == 503
    assert response.json()["checks"]["model"] == "shutting down"


def test_it_hides_metrics_from_other_addresses(settings) -> None:
    settings.CHAT_METRICS_TOKEN = ""
    assert Client(REMOTE_ADDR="10.1.2.3").get("/metrics").status_code == 404


def test_it_serves_metrics_to_a_token(settings, runtime) -> None:
    settings.CHAT_METRICS_TOKEN = "s3cret-token"
    client = Client(REMOTE_ADDR="10.1.2.3")
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer wrong").status_code == 404
    response = client.get("/metrics", HTTP_AUTHORIZATION="Bearer s3cret-token")
    assert response.status_code == 200
    body = response.content.decode()
    for name in ("chatsite_queue_depth", "chatsite_running_generations", "chatsite_ttft_seconds_bucket"):
        assert name in body
    assert "chatsite_model_ready 1.0" in body


def test_it_counts_responses_by_status_code(runtime) -> None:
    before = metrics.RESPONSES.labels("404")._value.get()
    Client().get("/no-such-page")
    body = Client().get("/metrics").content.decode()
    assert metrics.RESPONSES.labels("404")._value.get() == before + 1
    assert 'chatsite_http_responses_total{code="404"}' in body


def test_it_counts_generated_tokens_and_ttft(runtime) -> None:
    from inference.jobs import Finished, Timings, Usage

    tokens = metrics.TOKENS._value.get()
    finished = Finished("length", Usage(10, 7), Timings(0.0, 0.3, 0.1, 1.0, 0, 10, 30.0), "x", (1,))
    metrics.observe_generation(finished)
    assert metrics.TOKENS._value.get() == tokens + 7
    body = Client().get("/metrics").content.decode()
    assert 'chatsite_generations_total{reason="length"}' in body
