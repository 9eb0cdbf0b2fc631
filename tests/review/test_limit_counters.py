"""The limits' counters are exact under concurrency: threads on the database (SQLite, or PostgreSQL
with DATABASE_URL), two processes on one Redis, and two web processes sharing one limit over Redis."""

from __future__ import annotations

import json
import subprocess
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from django.db import connection

from review import limits
from review.limit_counters import DatabaseCounters, Item, RedisCounters, Refused
from review.models import LimitCounter
from tests.live_server import PYTHON, ROOT, LiveServer
from tests.tiny_gguf import write_tiny_llama

THREADS = 8
NOW = time.time()  # every attempt of a run at one instant (set_limits starts its counters at it too)

# One process's share of a hammering: THREADS threads released together, each with its own
# database connection, trying ``attempts`` reservations in all; prints how many were admitted.
HAMMER = """
import json, sys, threading, django
django.setup()
from django.db import connection
from review import limits
team_id, user_id, attempts, tokens, settle = (int(a) for a in sys.argv[1:6])
now = float(sys.argv[6])  # one instant for every attempt: no minute boundary in the middle
start = threading.Barrier(THREADS)
admitted = []
def worker():
    start.wait()
    for _ in range(attempts // THREADS):
        try:
            reservation = limits.reserve(team_id=team_id, user_id=user_id, tokens=tokens, now=now)
        except limits.LimitReached:
            continue
        if settle:
            reservation.settle(settle)
        admitted.append(1)
    connection.close()
threads = [threading.Thread(target=worker) for _ in range(THREADS)]
[t.start() for t in threads]
[t.join() for t in threads]
print(json.dumps({"admitted": len(admitted)}), flush=True)
""".replace("THREADS", str(THREADS))

SQLITE_SETUP = """
import django
django.setup()
from django.core.management import call_command
call_command("migrate", verbosity=0)
"""


def hammer(team_id: int, user_id: int, attempts: int, tokens: int, settle: int, tmp_path: Path) -> int:
    """Admitted reservations out of ``attempts``: from THREADS threads in this process on
    PostgreSQL; on SQLite (whose test database lives in memory) from two processes sharing a
    database file, as two web processes would."""
    args = [str(a) for a in (team_id, user_id, attempts, tokens, settle, NOW)]
    if connection.vendor != "sqlite":
        return _threads_here(team_id, user_id, attempts, tokens, settle)
    env = {
        "DJANGO_SETTINGS_MODULE": "chatsite.settings",
        "CHAT_DATA_DIR": str(tmp_path),
        "PATH": "/usr/bin:/bin",
    }
    processes = [
        subprocess.Popen(
            [PYTHON, "-c", HAMMER, *args[:2], str(attempts // 2), *args[3:]],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=120) for p in processes]
    for process, (_, err) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, err
    return sum(json.loads(out.strip().splitlines()[-1])["admitted"] for out, _ in outputs)


def _threads_here(team_id: int, user_id: int, attempts: int, tokens: int, settle: int) -> int:
    start = threading.Barrier(THREADS)

    def worker(count: int) -> int:
        start.wait()
        admitted = 0
        try:
            for _ in range(count):
                try:
                    reservation = limits.reserve(team_id=team_id, user_id=user_id, tokens=tokens, now=NOW)
                except limits.LimitReached:
                    continue
                if settle:
                    reservation.settle(settle)
                admitted += 1
        finally:
            connection.close()  # each thread's own connection
        return admitted

    with ThreadPoolExecutor(THREADS) as pool:
        return sum(pool.map(worker, [attempts // THREADS] * THREADS))


def sqlite_file_database(tmp_path: Path) -> dict[str, int] | None:
    """On SQLite: a migrated database file in ``tmp_path`` with alice in alpha; their ids."""
    if connection.vendor != "sqlite":
        return None
    env = {
        "DJANGO_SETTINGS_MODULE": "chatsite.settings",
        "CHAT_DATA_DIR": str(tmp_path),
        "PATH": "/usr/bin:/bin",
    }
    script = (
        SQLITE_SETUP
        + """
import json
from django.contrib.auth import get_user_model
from conversations import actions
from review import limits
alice = get_user_model().objects.create_user("alice")
alpha = actions.create_team("alpha", admin=alice)
print(json.dumps({"team": alpha.pk, "user": alice.pk}))
"""
    )
    done = subprocess.run([PYTHON, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def set_limits_in(tmp_path: Path, ids: dict[str, int] | None, **limit) -> None:
    """Set a limit in the database the hammering uses (the file on SQLite, else the test's)."""
    if ids is None:
        from django.contrib.auth import get_user_model

        from conversations.models import Team

        scope = {"team": Team.objects.get(name="alpha")}
        if limit.pop("member", False):
            scope["user"] = get_user_model().objects.get(username="alice")
        limits.set_limits(**scope, **limit, by=None, now=NOW)
        return
    member = limit.pop("member", False)
    script = f"""
import django
django.setup()
from django.contrib.auth import get_user_model
from conversations.models import Team
from review import limits
scope = {{"team": Team.objects.get(pk={ids["team"]})}}
if {member}:
    scope["user"] = get_user_model().objects.get(pk={ids["user"]})
limits.set_limits(**scope, **{limit!r}, by=None, now={NOW!r})
"""
    env = {
        "DJANGO_SETTINGS_MODULE": "chatsite.settings",
        "CHAT_DATA_DIR": str(tmp_path),
        "PATH": "/usr/bin:/bin",
    }
    done = subprocess.run([PYTHON, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def counter_value(tmp_path: Path, ids: dict[str, int] | None, key: str) -> int:
    if ids is None:
        return sum(LimitCounter.objects.filter(key=key).values_list("used", flat=True))
    import sqlite3

    with sqlite3.connect(tmp_path / "db.sqlite3") as db:
        return db.execute("SELECT SUM(used) FROM review_limitcounter WHERE key = ?", (key,)).fetchone()[0]


@pytest.mark.slow  # processes
@pytest.mark.django_db(transaction=True)
def test_it_admits_exactly_the_requests_per_minute_under_concurrency(alice, alpha, tmp_path: Path) -> None:
    ids = sqlite_file_database(tmp_path) or {"team": alpha.pk, "user": alice.pk}
    file_ids = ids if connection.vendor == "sqlite" else None
    set_limits_in(tmp_path, file_ids, requests_per_minute=13)
    admitted = hammer(ids["team"], ids["user"], 48, 10, 0, tmp_path)
    assert admitted == 13
    assert counter_value(tmp_path, file_ids, f"req:team-{ids['team']}") == 13


@pytest.mark.slow  # processes
@pytest.mark.django_db(transaction=True)
def test_it_admits_exactly_the_token_budget_and_settles_under_concurrency(
    alice, alpha, tmp_path: Path
) -> None:
    ids = sqlite_file_database(tmp_path) or {"team": alpha.pk, "user": alice.pk}
    file_ids = ids if connection.vendor == "sqlite" else None
    set_limits_in(tmp_path, file_ids, member=True, tokens_per_day=1000)
    # Each admitted call reserves 100 and keeps 60 (40 given back at once): admissions stop when
    # fewer than 100 remain, i.e. after 16 (15 × 60 = 900 leaves exactly 100; 16 × 60 leaves 40).
    # A round can admit fewer: an attempt made while others hold their 100 unsettled is refused,
    # and the threads may have no attempt left once those settle (15 seen under CI). So rounds
    # run until one admits nothing: never more than the budget, and each settle exact.
    key, total, rounds = f"tok:member-{ids['team']}-{ids['user']}", 0, []
    while not rounds or rounds[-1]:
        rounds.append(hammer(ids["team"], ids["user"], 48, 100, 60, tmp_path))
        total += rounds[-1]
        assert total <= 16, rounds
        assert counter_value(tmp_path, file_ids, key) == 60 * total, rounds
    assert total == 16, rounds


@pytest.mark.django_db(transaction=True)
def test_it_takes_all_counters_or_none() -> None:
    counters = DatabaseCounters()
    a, b = Item("req:team-1", 0, 1, limit=5, ttl=60), Item("tok:team-1", 0, 100, limit=150, ttl=60)
    assert counters.take([a, b]) == [1, 100]
    with pytest.raises(Refused) as refused:
        counters.take([a, b])  # the tokens have no room: the request is not counted either
    assert (refused.value.index, refused.value.used) == (1, 100)
    assert counters.read([a, b]) == [1, 100]


# --- Redis ----------------------------------------------------------------------------------------

PROCESS = """
import json, sys, threading, django
django.setup()
import redis
from review.limit_counters import Item, RedisCounters, Refused
url, prefix, attempts = sys.argv[1], sys.argv[2], int(sys.argv[3])
counters = RedisCounters(url, prefix)  # this process's own connections
print("ready", flush=True)
redis.Redis.from_url(url).blpop(prefix + ":go")  # both processes start together
admitted = 0
lock = threading.Lock()
def run():
    global admitted
    for _ in range(attempts // 4):
        try:
            counters.take([
                Item("req:team-1", 0, 1, limit=250, ttl=60), Item("tok:team-1", 0, 10, limit=10_000, ttl=60)
            ])
        except Refused:
            continue
        with lock:
            admitted += 1
threads = [threading.Thread(target=run) for _ in range(4)]
[t.start() for t in threads]
[t.join() for t in threads]
print(json.dumps({"admitted": admitted}), flush=True)
"""


@pytest.mark.slow  # processes
def test_it_shares_one_limit_exactly_between_two_processes_over_redis(redis_url: str) -> None:
    import redis

    prefix = f"limits-{uuid.uuid4().hex[:8]}"
    env = {"DJANGO_SETTINGS_MODULE": "chatsite.settings", "PATH": "/usr/bin:/bin"}
    processes = [
        subprocess.Popen(
            [PYTHON, "-c", PROCESS, redis_url, prefix, "200"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    for process in processes:
        assert process.stdout.readline().strip() == "ready", process.stderr.read()
    client = redis.Redis.from_url(redis_url)
    client.rpush(f"{prefix}:go", 1, 1)
    outputs = [process.communicate(timeout=60) for process in processes]
    admitted = [json.loads(out.strip().splitlines()[-1])["admitted"] for out, _ in outputs]
    # 400 attempts for 250 requests: neither process alone could take them all (200 each).
    assert sum(admitted) == 250, (admitted, [err for _, err in outputs])
    counters = RedisCounters(redis_url, prefix)
    assert counters.read([Item("req:team-1", 0, 0), Item("tok:team-1", 0, 0)]) == [250, 2500]
    client.delete(*client.keys(f"{prefix}:*"))


@pytest.mark.slow  # processes
def test_it_limits_two_web_processes_sharing_redis(redis_url: str, tmp_path: Path) -> None:
    """Two Daphne processes on one database and one Redis: a key's 5 requests per minute hold
    across both (12 calls, 6 to each, at once)."""
    model = write_tiny_llama(tmp_path / "tiny.gguf", context_length=1024)
    env = {
        "REDIS_URL": redis_url,
        "CHAT_CHANNEL_PREFIX": f"lim{uuid.uuid4().hex[:8]}",
        "CHAT_MODEL_PATH": str(model),
        "CHAT_SLOTS": "1",
        "CHAT_THREADS": "1",
        "CHAT_QUEUE_MAX": "16",
        "CHAT_MAX_TOKENS_CAP": "2",
    }
    a = b = None
    try:
        a = LiveServer(tmp_path / "site", env).start()
        b = LiveServer(tmp_path / "site", env, keys=a.keys).start(setup=False)
        prefix = a.keys["bob"].removeprefix("csk-").split("-")[0]
        done = subprocess.run(
            [PYTHON, "manage.py", "setlimits", "--key", prefix, "--rpm", "5"],
            cwd=ROOT,
            env=a._env(),
            capture_output=True,
            text=True,
        )
        assert done.returncode == 0, done.stderr
        assert "5 requests per minute" in done.stdout
        body = {"model": "gpt-3.5-turbo", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
        barrier = threading.Barrier(12)

        def one(server: LiveServer) -> tuple[int, dict[str, str]]:
            barrier.wait()
            status, headers, _ = server.request("POST", "/v1/chat/completions", body, key="bob")
            return status, headers

        with ThreadPoolExecutor(12) as pool:
            results = list(pool.map(one, [a, b] * 6))
        statuses = sorted(status for status, _ in results)
        # One minute window: if the calls straddle a minute boundary the next minute admits more.
        assert statuses.count(200) == 5 or statuses.count(200) == 10, statuses
        assert statuses.count(200) + statuses.count(429) == 12
        refused = [{k.lower(): v for k, v in h.items()} for s, h in results if s == 429]
        assert all(h.get("retry-after") and h.get("x-ratelimit-limit-requests") == "5" for h in refused), (
            refused
        )
        logged = a.query(
            "SELECT COUNT(*) AS n FROM conversations_conversation WHERE source = 'api' AND api_key_id = "
            "(SELECT id FROM conversations_apikey WHERE prefix = ?)",
            prefix,
        )
        assert logged[0]["n"] == statuses.count(200)  # a refused call wrote nothing
    finally:
        for server in (a, b):
            if server is not None:
                server.stop()
