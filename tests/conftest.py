"""Shared test set-up. Model fixtures live in tests/fixtures_model.py, not here."""

from __future__ import annotations

import os
import time

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
    record_seconds(session, session.exitstatus)  # for the next run's order (tests/xdist_groups.py)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """A failed test that used a live server (tests/live_server.py) reports the end of that
    server's log: what the server saw is most of the story, and under CI it is all there is."""
    report = yield
    if report.failed:
        from tests.live_server import LiveServer

        for name, value in getattr(item, "funcargs", {}).items():
            if isinstance(value, LiveServer):
                report.sections.append((f"server log of {name} (last 5000 chars)", value.server_log()))
    return report


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    skipped = _skipped_under_ci(config)
    if skipped:
        terminalreporter.write_sep(
            "=", f"CI=true: {len(skipped)} test(s) skipped, and under CI nothing may be skipped", red=True
        )


# --- pytest-xdist (`make test` runs the suite in worker processes) ------------------------------

# Each test module runs whole on one worker, in its order; the modules sharing a session-scoped
# live server (below) together; the long ones first (tests/xdist_groups.py says how, and why not
# with xdist_group marks).
from tests.xdist_groups import (  # noqa: E402
    EXCLUSIVE_MARK,
    is_worker,
    pytest_collection_modifyitems,  # noqa: F401 (a hook)
    pytest_runtest_logreport,  # noqa: F401 (a hook)
    pytest_xdist_make_scheduler,  # noqa: F401 (a hook)
    record_seconds,
    run_folder,
)


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None):
    """Under xdist, a test marked ``cpu_exclusive`` (a model on two ggml threads: they spin-wait
    for each other, and crawl when another process wants the cores) runs while the other workers
    wait between tests: every test holds a shared lock, a cpu_exclusive one the exclusive lock. A
    turnstile lets a waiting exclusive test in before new shared ones. Without xdist: nothing.

    Taken around the whole test (set-up, call, teardown) and outside pytest-timeout's timer
    (tryfirst: this wrapper encloses its one), so that the time a test waits for the lock does not
    count against its own timeout: as an autouse fixture it did, and tests waiting behind a slow
    exclusive one timed out in set-up."""
    if not is_worker(item.config):  # not the environment: a pytest run by a test inherits it
        yield
        return
    import fcntl

    global _exclusive_lock
    run = run_folder(item.config)  # shared by the run's workers
    exclusive = item.get_closest_marker(EXCLUSIVE_MARK) is not None
    # Consecutive cpu_exclusive tests (a module of them) keep the exclusive lock from one to the
    # next: each time it is taken the other workers first finish the tests they are running, with a
    # core idle meanwhile (~10 s of a run lost to the three tests of the seeded-reproducibility
    # module, each taking it in turn).
    keep = exclusive and nextitem is not None and nextitem.get_closest_marker(EXCLUSIVE_MARK) is not None
    lock, _exclusive_lock = _exclusive_lock, None  # the previous test's, if it kept it
    if lock is not None and not exclusive:  # not expected: it kept it for an exclusive test
        lock.close()
        lock = None
    if lock is None:
        lock = open(run / "cpu.lock", "a")  # noqa: SIM115 (closed below, or by a later test)
        with open(run / "cpu.turnstile", "a") as gate:
            fcntl.flock(gate, fcntl.LOCK_EX)
            try:
                fcntl.flock(lock, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            finally:
                fcntl.flock(gate, fcntl.LOCK_UN)
    try:
        yield
    finally:
        if keep:
            _exclusive_lock = lock
        else:
            lock.close()  # closing the file releases its lock


_exclusive_lock = None  # the exclusive lock's file, kept for the next test (above)


@pytest.fixture(scope="session")
def django_db_setup(django_db_setup, django_db_blocker):
    """pytest-django's test database, which on PostgreSQL nothing holds open when it is dropped.

    Django closes only its own thread's connection before the drop, and with psycopg's pool
    (chatsite/settings.py) even that connection stays open, back in the pool. Threads that tests
    ran database work in (asgiref's executors) keep theirs checked out. The drop then failed with
    "is being accessed by other users", a warning, and left the test database behind. So the pool
    is closed, and the sessions still on the test database are ended before pytest-django drops it.
    """
    yield
    from django.db import connections

    with django_db_blocker.unblock():
        for connection in connections.all(initialized_only=True):
            if connection.vendor == "postgresql":
                _end_sessions_on(connection)


def _end_sessions_on(connection) -> None:
    name = connection.settings_dict["NAME"]
    connection.close()
    connection.close_pool()
    others = "FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()"
    with connection._nodb_cursor() as cursor:  # on the "postgres" database, outside the pool
        cursor.execute(f"SELECT pg_terminate_backend(pid) {others}", [name])
        for _ in range(100):  # a terminated backend takes a moment to exit
            cursor.execute(f"SELECT count(*) {others}", [name])
            if cursor.fetchone()[0] == 0:
                return
            time.sleep(0.05)


@pytest.fixture(scope="session", autouse=True)
def _fast_password_hasher():
    """Password hashing is not under test here (nor in most live servers: tests/live_settings.py):
    Django's PBKDF2 costs about 0.3 s a login, a password set, and a failed login (even for an
    unknown user), and some tests make dozens."""
    from django.test.utils import override_settings

    with override_settings(PASSWORD_HASHERS=["django.contrib.auth.hashers.MD5PasswordHasher"]):
        yield


@pytest.fixture(autouse=True)
def _fresh_upstream_registry():
    """The process's upstream connections (upstreams/registry.py) are read from the database
    again for each test: a test's rows are rolled back, but a pool read while they existed would
    stay in use for up to 30 s, into the next tests of the worker (/ready then reported an upstream
    that no longer exists)."""
    from django.conf import settings

    if settings.configured:
        from upstreams import registry

        registry.invalidate()
    yield


# --- People: alice (owner), bob (her teammate in "alpha"), charlie (an outsider) ---------------
# In a module whose tests share the review world (below), these are the world's own.


def _make_user(name: str):
    from django.contrib.auth import get_user_model

    return get_user_model().objects.create_user(name)


def _make_alpha(alice, bob):
    from conversations import actions

    team = actions.create_team("alpha", admin=alice)
    actions.add_member(team, bob)
    return team


def _of_shared_world(request: pytest.FixtureRequest, name: str):
    """The test's copy of the shared world's ``name``, or None when the test has no shared world."""
    if "world" in request.fixturenames and request.getfixturevalue("_shared_world") is not None:
        return getattr(request.getfixturevalue("world"), name)
    return None


@pytest.fixture
def alice(db, request):
    return _of_shared_world(request, "alice") or _make_user("alice")


@pytest.fixture
def bob(db, request):
    return _of_shared_world(request, "bob") or _make_user("bob")


@pytest.fixture
def charlie(db, request):
    return _of_shared_world(request, "charlie") or _make_user("charlie")


@pytest.fixture
def alpha(alice, bob, request):
    """The team alice administers and bob belongs to; charlie is not in it."""
    return _of_shared_world(request, "alpha") or _make_alpha(alice, bob)


# The fixtures that make a test transactional (pytest-django): it commits, or flushes the tables.
_TRANSACTIONAL = (
    "transactional_db",
    "live_server",
    "django_db_reset_sequences",
    "django_db_serialized_rollback",
)


def _shares_world(module: pytest.Module, items: list[pytest.Item]) -> bool:
    """Whether the tests of ``module`` can share one world: every one that uses the database uses
    the world, and runs in a transaction of its own (each test's is then a savepoint in the
    module's, rolled back). A test there without the world would see it, and a transactional one
    would commit or flush inside the module's transaction."""
    for item in items:
        if getattr(item, "module", None) is not module:
            continue
        names = set(getattr(item, "fixturenames", ()))
        marker = item.get_closest_marker("django_db")
        if marker is None and not names & {"db", *_TRANSACTIONAL}:
            continue  # no database
        if "world" not in names or names & set(_TRANSACTIONAL):
            return False
        if marker is not None:
            from pytest_django.fixtures import validate_django_db

            transactional, reset_sequences, _, serialized_rollback, _ = validate_django_db(marker)
            if transactional or reset_sequences or serialized_rollback:
                return False
    return True


@pytest.fixture(scope="module")
def _shared_world(request: pytest.FixtureRequest, django_db_setup, django_db_blocker):
    """The review world (tests/review_data.py), built once per module inside a transaction that
    is rolled back after the module's last test, when the module's tests can share it
    (``_shares_world``); else None, and each test builds its own. Each test gets a deep copy of
    the instances (``world``) and runs in a savepoint rolled back after it: it sees exactly the
    rows a world of its own would have, whatever the tests before it changed."""
    if not _shares_world(request.module, request.session.items):
        yield None
        return
    from django.db import transaction

    from tests.review_data import build_world

    with django_db_blocker.unblock():
        with transaction.atomic():
            alice, bob, charlie = _make_user("alice"), _make_user("bob"), _make_user("charlie")
            yield build_world(alice, bob, charlie, _make_alpha(alice, bob))
            transaction.set_rollback(True)


@pytest.fixture
def world(_shared_world, db, request):
    """The review tests' two teams with web and API conversations (tests/review_data.py)."""
    import copy

    if _shared_world is not None:
        return copy.deepcopy(_shared_world)
    from tests.review_data import build_world

    return build_world(*(request.getfixturevalue(name) for name in ("alice", "bob", "charlie", "alpha")))


# --- The websocket tests' tiny model and conversation (tests/ws_chat.py) --------------------


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """The tiny random model of the websocket tests (tests/ws_chat.py), loaded once per module with
    one slot and a queue of 4; a long context, so that a blocker (tests/ws_chat.py) can keep the
    slot busy for seconds."""
    from tests.chat_runtime import tiny_chat_model

    with tiny_chat_model(tmp_path_factory.mktemp("tiny-chat"), context_length=4096, queue_max=4) as model:
        yield model


@pytest.fixture
def runtime(tiny_model):
    """The process's runtime serving the tiny model for the duration of a test."""
    from tests.chat_runtime import serving

    with serving(tiny_model) as rt:
        yield rt


@pytest.fixture
def bravo(charlie):
    """charlie's own team."""
    from conversations import actions

    return actions.create_team("bravo", admin=charlie)


@pytest.fixture
def chat(alice, alpha):
    """A conversation of alice's, shared with her team, with short greedy replies: the tiny model
    sampled its end-of-text first now and then, and a test wanting some text failed by chance."""
    from conversations import actions

    return actions.start_conversation(alice, alpha, visibility="team", max_tokens=6, temperature=0.0)


# --- Redis -----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def redis_url() -> str:
    """The Redis server's URL (REDIS_URL, default 127.0.0.1:6379/0); skips when it is unreachable
    (and under CI a skip fails the run). Tests keep apart by a channel prefix of their own."""
    import socket

    host, port = "127.0.0.1", 6379
    try:
        with socket.create_connection((host, port), timeout=2):
            pass
    except OSError as exc:
        pytest.skip(f"Redis is not reachable at {host}:{port} ({exc}); start it to run these tests")
    return os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")


# --- The limits' clock ----------------------------------------------------------------------


@pytest.fixture
def limits_clock(monkeypatch) -> float:
    """The limits' clock (review/limits.py) stopped at the test's start, in this process: a test
    that counts requests in a minute (or tokens in a day) is not undone by a new minute beginning
    while it runs on a busy machine. Counters outlive their window by an hour in Redis, so a
    stopped clock keeps finding them. Returns the stopped time."""
    from review import limits

    stopped = time.time()

    class StoppedClock:
        def __getattr__(self, name: str):
            return getattr(time, name)

        @staticmethod
        def time() -> float:
            return stopped

    monkeypatch.setattr(limits, "time", StoppedClock())
    return stopped


# --- The inference worker tests (tests/worker_process.py) ------------------------------------


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory):
    """The tiny test GGUF (context 512), written once per session: the inference worker tests'
    model (tests/worker_process.py). Read-only: a test that needs another shape writes its own."""
    from tests.tiny_gguf import write_tiny_llama

    return write_tiny_llama(tmp_path_factory.mktemp("tiny") / "tiny.gguf", context_length=512)


@pytest.fixture
def prefix() -> str:
    """A channel prefix of the test's own: nothing in Redis is shared with another test or run."""
    import uuid

    return f"test{uuid.uuid4().hex[:8]}"


# --- A real headless browser (Debian's chromium, driven by Playwright through its path) ---------

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-background-networking", "--disable-gpu"]


@pytest.fixture(scope="module")
def browser():
    """Chromium for one test module (each test opens its own context). Screenshots go to
    .data/screenshots/ (ignored by git)."""
    from pathlib import Path

    from tests.live_server import ROOT

    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: run `scripts/setup.sh deps dev` (installs Debian's chromium)")
    (ROOT / ".data" / "screenshots").mkdir(parents=True, exist_ok=True)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


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
