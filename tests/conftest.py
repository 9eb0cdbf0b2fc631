"""Shared test set-up. Model fixtures live in tests/fixtures_model.py, not here."""

from __future__ import annotations

import os

import pytest


def _skipped_under_ci(config: pytest.Config) -> list[pytest.TestReport]:
    """Under CI=true a skipped test fails the run: CI has every service and the model, so a skip
    there means something is missing, never something to shrug off."""
    if os.environ.get("CI") != "true":
        return []
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    return reporter.stats.get("skipped", []) if reporter is not None else []


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if exitstatus == pytest.ExitCode.OK and _skipped_under_ci(session.config):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    skipped = _skipped_under_ci(config)
    if skipped:
        terminalreporter.write_sep(
            "=", f"CI=true: {len(skipped)} test(s) skipped, and under CI nothing may be skipped", red=True
        )


# --- People: alice (owner), bob (her teammate in "alpha"), charlie (an outsider) ---------------


@pytest.fixture
def alice(db):
    from django.contrib.auth import get_user_model

    return get_user_model().objects.create_user("alice")


@pytest.fixture
def bob(db):
    from django.contrib.auth import get_user_model

    return get_user_model().objects.create_user("bob")


@pytest.fixture
def charlie(db):
    from django.contrib.auth import get_user_model

    return get_user_model().objects.create_user("charlie")


@pytest.fixture
def alpha(alice, bob):
    """The team alice administers and bob belongs to; charlie is not in it."""
    from conversations import actions

    team = actions.create_team("alpha", admin=alice)
    actions.add_member(team, bob)
    return team


@pytest.fixture
def world(alice, bob, charlie, alpha):
    """The review tests' two teams with web and API conversations (tests/review_data.py)."""
    from tests.review_data import build_world

    return build_world(alice, bob, charlie, alpha)


# --- Live API servers (tests/live_server.py), started once per session ------------------------


@pytest.fixture(scope="session")
def api_server(tmp_path_factory: pytest.TempPathFactory):
    """Daphne serving the REAL default model: one slot, one thread, a queue of one (so that a
    second request with n=2 during a stream is refused with 429)."""
    from tests.fixtures_model import default_model_path
    from tests.live_server import LiveServer

    server = LiveServer(
        tmp_path_factory.mktemp("api-server"),
        {
            "CHAT_MODEL_PATH": str(default_model_path()),
            "CHAT_SLOTS": "1",
            "CHAT_QUEUE_MAX": "1",
        },
    ).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def tiny_api_server(tmp_path_factory: pytest.TempPathFactory):
    """Daphne serving a tiny random model, with every completion capped at 8 tokens: for the
    request-validation and fuzzing tests, where the real model would add only time."""
    from tests.live_server import LiveServer
    from tests.tiny_gguf import write_tiny_llama

    folder = tmp_path_factory.mktemp("tiny-api-server")
    model = write_tiny_llama(folder / "tiny.gguf", context_length=2048)
    server = LiveServer(
        folder / "data",
        {
            "CHAT_MODEL_PATH": str(model),
            "CHAT_SLOTS": "1",
            "CHAT_THREADS": "1",
            "CHAT_QUEUE_MAX": "16",
            "CHAT_MAX_TOKENS_CAP": "8",
        },
    ).start()
    yield server
    server.stop()


# --- A small OpenID Connect provider (tests/oidc_provider.py) in its own process ---------------

OIDC_CLIENT_ID = "chatsite-test"
OIDC_CLIENT_SECRET = "a-client-secret-for-tests"


@pytest.fixture(scope="session")
def oidc_provider():
    """The stub provider's process, serving at ``.issuer`` until the session ends."""
    import subprocess
    import sys
    from pathlib import Path
    from types import SimpleNamespace

    from tests.live_server import free_port

    script = Path(__file__).with_name("oidc_provider.py")
    process = subprocess.Popen(
        [sys.executable, str(script), str(free_port()), OIDC_CLIENT_ID, OIDC_CLIENT_SECRET],
        stdout=subprocess.PIPE,
        text=True,
    )
    line = process.stdout.readline()  # blocks until it listens (or exits)
    if not line.startswith("ready "):
        process.kill()
        pytest.fail(f"the stub OpenID provider did not start: {line!r}", pytrace=False)
    yield SimpleNamespace(
        issuer=line.split()[1], client_id=OIDC_CLIENT_ID, client_secret=OIDC_CLIENT_SECRET, process=process
    )
    process.terminate()
    process.wait(timeout=10)
