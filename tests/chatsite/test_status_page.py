"""The status page at `/status` and the liveness probe at `/health`."""

from __future__ import annotations

from django.template.loader import render_to_string

from chatsite.middleware import CONTENT_SECURITY_POLICY
from conversations.runtime import get_runtime

STATES = ("not loaded", "loading", "ready", "error")


def a_status(**overrides: object) -> dict[str, object]:
    status: dict[str, object] = {
        "model_path": "/models/tiny.gguf",
        "model_name": "Tiny",
        "state": "ready",
        "error": None,
        "context_length": 8192,
        "slots": 2,
        "threads": 1,
        "queue_depth": 3,
        "queue_max": 32,
        "running": 2,
        "load_seconds": 1.25,
    }
    status.update(overrides)
    return status


def test_it_answers_health(client) -> None:
    response = client.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}
    assert client.head("/health").status_code == 200


def test_it_shows_the_model_state_with_a_strict_csp(admin_client) -> None:
    response = admin_client.get("/status")
    assert response.status_code == 200
    assert response["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
    assert "script-src" not in response["Content-Security-Policy"]  # default-src 'self' covers it
    status = get_runtime().status()
    assert status["state"] in STATES
    page = response.content.decode()
    assert status["model_path"] in page
    assert "Slots × threads" in page
    assert 'href="/admin/"' in page
    assert "<script" not in page


def test_it_shows_the_scheduler_figures() -> None:
    page = render_to_string("status.html", {"status": a_status()})
    assert "2 × 1" in page
    assert "3 / 32" in page
    assert "8192 tokens" in page
    assert "loaded in 1.2 s" in page or "loaded in 1.3 s" in page


def test_it_refreshes_only_while_loading() -> None:
    loading = render_to_string("status.html", {"status": a_status(state="loading", load_seconds=None)})
    ready = render_to_string("status.html", {"status": a_status()})
    assert '<meta http-equiv="refresh" content="5">' in loading
    assert "http-equiv" not in ready


def test_it_shows_a_load_error() -> None:
    page = render_to_string(
        "status.html", {"status": a_status(state="error", error="model.gguf: not a GGUF file")}
    )
    assert "model.gguf: not a GGUF file" in page
    assert "http-equiv" not in page


def test_it_serves_the_stylesheet_with_debug_off(client, settings) -> None:
    settings.DEBUG = False
    # The test client bypasses ASGI; serve through the same handler Daphne uses.
    from asgiref.sync import async_to_sync
    from asgiref.testing import ApplicationCommunicator

    from chatsite.asgi import application

    scope = {
        "type": "http",
        "http_version": "1.1",
        "method": "GET",
        "path": "/static/css/site.css",
        "raw_path": b"/static/css/site.css",
        "query_string": b"",
        "root_path": "",
        "scheme": "http",
        "server": ("127.0.0.1", 8000),
        "client": ("127.0.0.1", 50000),
        "headers": [(b"host", b"127.0.0.1:8000")],
    }

    async def fetch() -> tuple[int, bytes]:
        communicator = ApplicationCommunicator(application, scope)
        await communicator.send_input({"type": "http.request", "body": b"", "more_body": False})
        start = await communicator.receive_output(5)
        body = b""
        while True:
            message = await communicator.receive_output(5)
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        return start["status"], body

    status_code, body = async_to_sync(fetch)()
    assert status_code == 200
    assert b".site-header" in body
