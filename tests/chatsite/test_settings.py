"""Settings come from the environment; a bad value stops the process and names the variable."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow  # each test sets Django up in a process of its own

# Variables that would change what a child process sees, whatever the developer's shell holds.
_SETTINGS_VARS = (
    "DEBUG",
    "SECRET_KEY",
    "ALLOWED_HOSTS",
    "CSRF_TRUSTED_ORIGINS",
    "DATABASE_URL",
    "REDIS_URL",
    "CHAT_MODEL_PATH",
    "CHAT_CONTEXT_LENGTH",
    "CHAT_SLOTS",
    "CHAT_THREADS",
    "CHAT_QUEUE_MAX",
    "CHAT_STOP_ON_DISCONNECT",
    "CHAT_PREFILL_CHUNK",
    "CHAT_SECURE_COOKIES",
    "CHAT_SSL_REDIRECT",
    "CHAT_HSTS_SECONDS",
    "CHAT_HSTS_INCLUDE_SUBDOMAINS",
    "CHAT_HSTS_PRELOAD",
    "CHAT_BEHIND_TLS_PROXY",
)


def run_django(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run `manage.py ARGS` (or just set Django up) in a fresh process with the given settings."""
    child_env = {k: v for k, v in os.environ.items() if k not in _SETTINGS_VARS}
    child_env.update(DJANGO_SETTINGS_MODULE="chatsite.settings", CHAT_DATA_DIR=str(tmp_path), **env)
    command = (
        [sys.executable, "manage.py", *args]
        if args
        else [
            sys.executable,
            "-c",
            "import django; django.setup()",
        ]
    )
    return subprocess.run(command, cwd=REPO, env=child_env, capture_output=True, text=True, timeout=60)


def production_env() -> dict[str, str]:
    return {"DEBUG": "0", "SECRET_KEY": secrets.token_urlsafe(50), "ALLOWED_HOSTS": "example.com"}


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("CHAT_SLOTS", "abc"),
        ("CHAT_SLOTS", "17"),
        ("CHAT_THREADS", "0"),
        ("CHAT_THREADS", str(len(os.sched_getaffinity(0)) + 1)),
        ("CHAT_CONTEXT_LENGTH", "32"),
        ("CHAT_QUEUE_MAX", "-1"),
        ("CHAT_DEFAULT_MAX_TOKENS", "0"),
        ("CHAT_DEFAULT_MAX_TOKENS", "32769"),
        ("DEBUG", "maybe"),
        ("CHAT_STOP_ON_DISCONNECT", "sometimes"),
        ("REDIS_URL", "http://localhost:6379"),
    ],
)
def test_it_rejects_a_bad_value_naming_the_variable(tmp_path: Path, name: str, value: str) -> None:
    result = run_django(tmp_path, **{name: value})
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr
    assert f"{name}={value!r}" in result.stderr or name in result.stderr


def test_it_rejects_a_bad_database_url_without_echoing_it(tmp_path: Path) -> None:
    result = run_django(tmp_path, DATABASE_URL="nosuchdb://user:hunter2@host/db")
    assert result.returncode != 0
    assert "DATABASE_URL" in result.stderr
    assert "hunter2" not in result.stderr


def test_it_requires_a_secret_key_when_debug_is_off(tmp_path: Path) -> None:
    result = run_django(tmp_path, DEBUG="0")
    assert result.returncode != 0
    assert "SECRET_KEY must be set" in result.stderr


def test_it_keeps_a_generated_secret_key_private_in_debug(tmp_path: Path) -> None:
    result = run_django(tmp_path, DEBUG="1")
    assert result.returncode == 0, result.stderr
    key_file = tmp_path / "secret_key"
    assert len(key_file.read_text().strip()) >= 50
    assert key_file.stat().st_mode & 0o777 == 0o600


def test_it_passes_the_deployment_checks_with_production_settings(tmp_path: Path) -> None:
    result = run_django(tmp_path, "check", "--deploy", "--fail-level", "WARNING", **production_env())
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues" in result.stdout
    assert not (tmp_path / "secret_key").exists()


def test_it_reports_a_missing_model_file_in_a_system_check(tmp_path: Path) -> None:
    missing = tmp_path / "nope.gguf"
    result = run_django(tmp_path, "check", CHAT_MODEL_PATH=str(missing))
    assert result.returncode != 0
    assert "chatsite.E002" in result.stderr
    assert str(missing) in result.stderr


def test_it_reports_a_file_that_is_not_gguf_in_a_system_check(tmp_path: Path) -> None:
    not_gguf = tmp_path / "model.gguf"
    not_gguf.write_bytes(b"<html>not a model</html>")
    result = run_django(tmp_path, "check", CHAT_MODEL_PATH=str(not_gguf))
    assert result.returncode != 0
    assert "chatsite.E003" in result.stderr


def test_it_uses_the_bundled_model_and_sqlite_wal_by_default(tmp_path: Path) -> None:
    # In a fresh process without DATABASE_URL/REDIS_URL: this suite also runs on PostgreSQL.
    script = (
        "import json, sys, django; django.setup(); from django.conf import settings as s; "
        "from django.core.management import get_commands; "
        "db = s.DATABASES['default']; "
        "print(json.dumps({'model': s.CHAT_MODEL_PATH, 'db': {k: str(v) for k, v in db.items()}, "
        "'options': db['OPTIONS'], 'layer': s.CHANNEL_LAYERS['default']['BACKEND'], "
        "'apps': s.INSTALLED_APPS, "
        "'imported': [m for m in ('daphne.server', 'twisted', 'numpy', 'redis') if m in sys.modules], "
        "'runserver': get_commands()['runserver']}))"
    )
    child_env = {k: v for k, v in os.environ.items() if k not in _SETTINGS_VARS}
    child_env.update(DJANGO_SETTINGS_MODULE="chatsite.settings", CHAT_DATA_DIR=str(tmp_path))
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, env=child_env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    found = json.loads(out.stdout.strip().splitlines()[-1])
    assert found["model"].endswith("SmolLM2-135M-Instruct.Q4_1.gguf")
    assert Path(found["model"]).is_file()
    assert found["db"]["ENGINE"] == "django.db.backends.sqlite3"
    assert found["db"]["NAME"] == str(tmp_path / "db.sqlite3")
    assert "journal_mode=WAL" in found["options"]["init_command"]
    assert found["options"]["transaction_mode"] == "IMMEDIATE"
    assert found["layer"] == "channels.layers.InMemoryChannelLayer"
    # runserver serves ASGI (websockets too): Daphne's command, through chatsite's. A process that
    # serves nothing and runs no model (a management command, a script) does not import Daphne and
    # Twisted, numpy or Redis at start-up (together ~0.45 s of the 1.0 s that django.setup() took).
    assert found["runserver"] == "chatsite"
    assert found["imported"] == []
