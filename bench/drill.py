"""The kill -9 drill: a server killed in the middle of streaming replies loses nothing.

Each round starts streaming clients against a real server (`manage.py serve`, the real default
model), kills the server with SIGKILL at a random moment while they read, starts it again on the
same database, and compares what the database holds with what the clients saw:

- every user message whose request was answered (HTTP 200) must be there;
- every reply must be `complete` (it ended before the kill) or `interrupted`, never `streaming`,
  and its text must be a prefix of what its client saw;
- "behind" is how long the oldest text the client had but the database lacked had been on the
  client when the server died (replies are checkpointed every second).

Usage (with nothing else running on the machine):

    .venv/bin/python -m bench.drill --kills 20                     # SQLite and PostgreSQL
    .venv/bin/python -m bench.drill --kills 3 --databases sqlite

PostgreSQL is reached at --postgres (default postgres://postgres@127.0.0.1:5432/postgres); the
drill creates its own database there and drops it at the end. Results: bench/results/drill.json.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import threading
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tests.live_server import LiveServer, Stream

ROOT = Path(__file__).resolve().parents[1]
POSTGRES = "postgres://postgres@127.0.0.1:5432/postgres"


@dataclass
class Totals:
    database: str
    kills: int = 0
    sent: int = 0  # user messages whose request was answered 200
    found: int = 0  # of those, in the database after the restart
    interrupted: int = 0  # partial replies marked interrupted
    complete: int = 0  # replies that ended before the kill
    lost: int = 0  # missing user messages + replies missing, stuck streaming, or not a prefix
    behind_max: float = 0.0
    behind_mean: float = 0.0
    rounds: list[dict] = field(default_factory=list)


@contextmanager
def postgres_database(admin_url: str) -> Iterator[str]:
    """A fresh PostgreSQL database for the drill, dropped at the end."""
    import psycopg

    name = f"chatsite_drill_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield urllib.parse.urlparse(admin_url)._replace(path=f"/{name}").geturl()
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def one_round(server: LiveServer, n: int, clients: int, rng: random.Random) -> tuple[list[Stream], float]:
    """Stream ``clients`` replies, kill the server while they run; return them and the kill time."""
    tag = uuid.uuid4().hex[:6]
    streams = [
        Stream(server, 3000, f"Drill {n}.{i} ({tag}): tell me a long story about a lighthouse.")
        for i in range(clients)
    ]
    threads = [threading.Thread(target=s.read, daemon=True) for s in streams if s.status == 200]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 60
    while not any(s.text for s in streams) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(rng.uniform(0.3, 3.0))  # a random moment of the stream
    killed_at = time.monotonic()
    server.process.kill()
    server.process.wait(30)
    for thread in threads:
        thread.join(30)
    return streams, killed_at


def check(server: LiveServer, streams: list[Stream], killed_at: float) -> dict:
    found = interrupted = complete = lost = 0
    behind: list[float] = []
    for client in streams:
        if client.status != 200:
            continue
        users = server.query(
            "SELECT conversation_id FROM conversations_message WHERE role = 'user' AND content = ?",
            client.content,
        )
        if not users:
            lost += 1
            continue
        found += 1
        replies = server.query(
            "SELECT status, content FROM conversations_message WHERE role = 'assistant' "
            "AND conversation_id = ?",
            users[0]["conversation_id"],
        )
        if len(replies) != 1:
            lost += 1
            continue
        status, content = replies[0]["status"], replies[0]["content"]
        if status not in ("interrupted", "complete") or not client.text.startswith(content):
            lost += 1
            continue
        if status == "interrupted":
            interrupted += 1
            behind.append(client.behind(len(content), killed_at))
        else:
            complete += 1
    stuck = server.query("SELECT COUNT(*) AS n FROM conversations_message WHERE status = 'streaming'")[0]["n"]
    return {
        "sent": sum(s.status == 200 for s in streams),
        "found": found,
        "interrupted": interrupted,
        "complete": complete,
        "lost": lost + stuck,
        "behind": behind,
    }


def drill(
    database: str,
    kills: int,
    clients: int,
    root: Path,
    postgres: str = POSTGRES,
    seed: int = 0,
    server_env: dict[str, str] | None = None,
) -> Totals:
    """``kills`` rounds against ``database`` ("sqlite" or "postgres"); ``server_env`` adds to the
    server's settings (the test runs the drill on the tiny model at a fixed pace)."""
    rng = random.Random(seed)
    totals = Totals(database)
    with postgres_database(postgres) if database == "postgres" else _nothing() as url:
        env = {"CHAT_SLOTS": "2", "CHAT_THREADS": "2", **(server_env or {})}
        if url:
            env["DATABASE_URL"] = url
        server = LiveServer(root / f"drill-{database}", env, command=["manage.py", "serve"])
        server.start()
        behind: list[float] = []
        try:
            for n in range(1, kills + 1):
                streams, killed_at = one_round(server, n, clients, rng)
                server.log.close()
                server.start(setup=False)  # the same database: start-up marks the orphans
                result = check(server, streams, killed_at)
                behind += result.pop("behind")
                totals.kills += 1
                for key in ("sent", "found", "interrupted", "complete", "lost"):
                    setattr(totals, key, getattr(totals, key) + result[key])
                totals.rounds.append(result)
                print(f"  {database} kill {n}: {result}", flush=True)
        finally:
            server.stop()
        totals.behind_max = max(behind, default=0.0)
        totals.behind_mean = sum(behind) / len(behind) if behind else 0.0
    return totals


@contextmanager
def _nothing() -> Iterator[str]:
    yield ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=20, help="kills per database (default 20)")
    parser.add_argument("--clients", type=int, default=3, help="streaming clients per kill (2 slots)")
    parser.add_argument(
        "--databases", nargs="+", default=["sqlite", "postgres"], choices=["sqlite", "postgres"]
    )
    parser.add_argument("--postgres", default=POSTGRES, help="an admin URL; the drill makes its own database")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "drill.json")
    args = parser.parse_args(argv)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for database in args.databases:
            results.append(drill(database, args.kills, args.clients, Path(tmp), args.postgres))
    print()
    print(
        f"{'database':<10} {'kills':>5} {'sent':>5} {'found':>5} {'interrupted':>11} {'complete':>8} "
        f"{'lost':>4} {'behind max':>10} {'mean':>6}"
    )
    for t in results:
        print(
            f"{t.database:<10} {t.kills:>5} {t.sent:>5} {t.found:>5} {t.interrupted:>11} {t.complete:>8} "
            f"{t.lost:>4} {t.behind_max:>9.2f}s {t.behind_mean:>5.2f}s"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps([asdict(t) for t in results], indent=2) + "\n")
    print(f"written to {args.out}")
    return 0 if all(t.lost == 0 and t.found == t.sent for t in results) else 1


if __name__ == "__main__":
    sys.exit(main())
