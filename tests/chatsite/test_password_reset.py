"""Password reset exists only when the site can send mail (EMAIL_HOST); no page claims a mail was
sent when none was."""

from __future__ import annotations

import re
import socket
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.core import mail
from django.test import Client

from tests.chatsite.test_settings import run_django

pytestmark = pytest.mark.django_db

RESET_PAGES = [
    "/accounts/password_reset/",
    "/accounts/password_reset/done/",
    "/accounts/reset/MQ/set-password/",
    "/accounts/reset/done/",
]


@pytest.fixture
def mail_on(settings):
    # The test runner's backend is locmem (mail.outbox); EMAIL_HOST is what switches reset on.
    settings.EMAIL_HOST = "smtp.example.com"
    settings.CHAT_PASSWORD_RESET = True
    settings.DEFAULT_FROM_EMAIL = "chat@example.com"


@pytest.fixture
def dora(db):
    return get_user_model().objects.create_user(
        "dora", email="dora@example.com", password="old-pass-phrase-1"
    )


def test_it_has_no_password_reset_without_a_mail_server(settings, dora) -> None:
    assert not settings.CHAT_PASSWORD_RESET
    client = Client()
    for url in RESET_PAGES:
        assert client.get(url).status_code == 404, url
    response = client.post("/accounts/password_reset/", {"email": "dora@example.com"})
    assert response.status_code == 404 and mail.outbox == []
    page = client.get("/accounts/login/").content.decode()
    assert "password_reset" not in page and "Ask the site's administrator" in page


def test_it_resets_a_password_by_mail_when_a_mail_server_is_set(mail_on, dora) -> None:
    client = Client()
    page = client.get("/accounts/login/").content.decode()
    assert 'href="/accounts/password_reset/"' in page and "administrator" not in page
    response = client.post("/accounts/password_reset/", {"email": "dora@example.com"})
    assert response.status_code == 302 and response["Location"] == "/accounts/password_reset/done/"
    (message,) = mail.outbox
    assert message.to == ["dora@example.com"] and message.from_email == "chat@example.com"
    link = re.search(r"http://testserver(/accounts/reset/\S+/)", message.body).group(1)
    form_url = client.get(link)["Location"]  # Django swaps the token for a session one
    new = "n3w-pass-phrase!"
    response = client.post(form_url, {"new_password1": new, "new_password2": new})
    assert response.status_code == 302 and response["Location"] == "/accounts/reset/done/"
    dora.refresh_from_db()
    assert dora.check_password(new)


def test_it_says_so_when_the_mail_cannot_be_sent(settings, mail_on, dora) -> None:
    with socket.socket() as closed:  # a port with nothing listening: the connection is refused
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT, settings.EMAIL_TIMEOUT = "127.0.0.1", port, 5
    response = Client().post("/accounts/password_reset/", {"email": "dora@example.com"})
    page = response.content.decode()
    assert response.status_code == 503
    assert "could not be sent" in page and "Check your mail" not in page


@pytest.mark.slow  # processes
def test_it_reads_the_mail_settings_from_the_environment(tmp_path: Path) -> None:
    script = (
        "import json, django; django.setup(); from django.conf import settings as s; "
        "print(json.dumps([s.EMAIL_BACKEND, s.EMAIL_HOST, s.EMAIL_PORT, s.EMAIL_HOST_USER, "
        "s.EMAIL_USE_TLS, s.DEFAULT_FROM_EMAIL, s.CHAT_PASSWORD_RESET]))"
    )
    env = {
        "EMAIL_HOST": "smtp.example.com",
        "EMAIL_PORT": "2525",
        "EMAIL_HOST_USER": "chat@example.com",
        "EMAIL_HOST_PASSWORD": "pw",
    }
    result = run_django(tmp_path, "shell", "-c", script, **env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == (
        '["django.core.mail.backends.smtp.EmailBackend", "smtp.example.com", 2525, '
        '"chat@example.com", true, "chat@example.com", true]'
    )
    bad = run_django(tmp_path, EMAIL_HOST="smtp.example.com", EMAIL_PORT="99999")
    assert bad.returncode != 0 and "EMAIL_PORT" in bad.stderr
    no_sender = run_django(tmp_path, EMAIL_HOST="smtp.example.com", EMAIL_HOST_USER="chat")
    assert no_sender.returncode != 0 and "DEFAULT_FROM_EMAIL" in no_sender.stderr
