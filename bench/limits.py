"""The cost of the limit check per request (review/limits.py), on SQLite, PostgreSQL and Redis.

Each backend runs in its own process on a fresh database: a team with a requests-per-minute and a
tokens-per-day limit, its member with a requests-per-minute limit and a key with a tokens-per-day
limit (four counters to take at once, the most a request has). It times ``limits.reserve`` (the
lookup of the limits that apply, then the atomic take of every counter), ``Reservation.settle``
(the correction at the reply's end) and the lookup alone for a request no limit applies to.

    .venv/bin/python -m bench.limits                      # SQLite, PostgreSQL, Redis
    .venv/bin/python -m bench.limits --postgres postgres://postgres@127.0.0.1:5432/limits_bench

Results: bench/results/limits.json. Target: reserve ≤ 1 ms median on SQLite.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PROBE = r"""
import json, statistics, sys, time, django
django.setup()
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.db import connection
from conversations import actions
from review import limits
from review.limit_counters import counters
call_command("migrate", verbosity=0)
requests = int(sys.argv[1])
User = get_user_model()
alice = User.objects.create_user("bench-" + str(time.time_ns()))
team = actions.create_team("bench-" + str(time.time_ns()), admin=alice)
key, _ = actions.create_api_key(alice, team, "bench")
limits.set_limits(team=team, requests_per_minute=10**9, tokens_per_day=10**15, by=None)
limits.set_limits(team=team, user=alice, requests_per_minute=10**9, by=None)
limits.set_limits(api_key=key, tokens_per_day=10**15, by=None)
other = User.objects.create_user("free-" + str(time.time_ns()))

def timed(fn, n):
    out = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        out.append((time.perf_counter() - start) * 1000)
    return out

for _ in range(50):  # warm up (connections, statements, the script cached in Redis)
    limits.reserve(team_id=team.pk, user_id=alice.pk, key_id=key.pk, tokens=100).settle(80)
taken = []
scope = {"team_id": team.pk, "user_id": alice.pk, "key_id": key.pk}
reserve_ms = timed(lambda: taken.append(limits.reserve(**scope, tokens=100)), requests)
settle_ms = timed(lambda: taken.pop().settle(80), requests)
free_ms = timed(lambda: limits.reserve(team_id=None, user_id=other.pk, tokens=100), requests)

def select_one():
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        cursor.fetchone()

baseline_ms = timed(select_one, requests)  # the machine's pace: one trivial query

def summary(values):
    values = sorted(values)
    p95 = values[int(len(values) * 0.95)]
    return {"median_ms": round(statistics.median(values), 3), "p95_ms": round(p95, 3)}

print(json.dumps({
    "database": connection.vendor,
    "counters": counters().name,
    "requests": requests,
    "reserve": summary(reserve_ms),
    "settle": summary(settle_ms),
    "no_limit_lookup": summary(free_ms),
    "select_1": summary(baseline_ms),
}))
"""


def run(env: dict[str, str], requests: int) -> dict:
    base = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("CHAT_") and k not in ("DATABASE_URL", "REDIS_URL")
    }
    done = subprocess.run(
        [sys.executable, "-c", PROBE, str(requests)],
        cwd=ROOT,
        # As in production: DEBUG=0 (no query log).
        env={
            **base,
            "DJANGO_SETTINGS_MODULE": "chatsite.settings",
            "DEBUG": "0",
            "SECRET_KEY": "b" * 60,
            **env,
        },
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--postgres", default="postgres://postgres@127.0.0.1:5432/limits_bench")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--only", choices=["sqlite", "postgresql", "redis"], action="append")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "limits.json"))
    args = parser.parse_args(argv)
    chosen = args.only or ["sqlite", "postgresql", "redis"]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in chosen:
            env = {"CHAT_DATA_DIR": str(Path(tmp) / name)}
            if name == "postgresql":
                _create_database(args.postgres)
                env["DATABASE_URL"] = args.postgres
            if name == "redis":  # the limits' rows in SQLite, the counters in Redis
                env.update({"REDIS_URL": args.redis, "CHAT_CHANNEL_PREFIX": f"bench{uuid.uuid4().hex[:6]}"})
            result = run(env, args.requests)
            results.append(result)
            r = {k: v["median_ms"] for k, v in result.items() if isinstance(v, dict)}
            print(
                f"{result['database']:>10} + {result['counters']:<8} reserve median {r['reserve']:.3f} ms "
                f"(p95 {result['reserve']['p95_ms']:.3f}), settle {r['settle']:.3f} ms, "
                f"no limit {r['no_limit_lookup']:.3f} ms, SELECT 1 {r['select_1']:.3f} ms"
            )
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")


def _create_database(url: str) -> None:
    """A fresh database for the PostgreSQL run (dropped first if an earlier run left it)."""
    import psycopg

    name = url.rsplit("/", 1)[1]
    admin = url.rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')


if __name__ == "__main__":
    main()
