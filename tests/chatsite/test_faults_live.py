"""Faults under a real server process: a held SQLite write lock, a full disk, Redis unreachable.

- A write lock held by another connection (30 s in the report) must not freeze the process: other
  replies keep streaming to their pages, sockets open, and a request that cannot write answers 503
  with Retry-After within the busy timeout.
- A full disk when a reply ends: the client is told in-band, the row never stays `streaming`,
  and it gets its real final state once the disk has room again. /ready fails meanwhile.
- Redis unreachable: /v1 still answers (it does not need Redis), nothing is left `streaming`, and a
  websocket gets a clear error and the close code 4503 (try again later) instead of a 500.

The replies are the tiny test model's at a fixed pace (tests/paced_model.py): these tests need a
reply still running while they act, not the real model's words, and then a reply's length in time
does not depend on how busy the machine is.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.live_server import PYTHON, ROOT, LiveServer, Stream, free_port
from tests.paced_model import paced_env, write_paced_model
from tests.raw_ws import RawSocket
from tests.tiny_gguf import write_tiny_llama

BUSY_TIMEOUT = 1  # CHAT_DB_BUSY_TIMEOUT of the servers here (5 by default): the 503s wait it out

SESSION = """
import json, django
django.setup()
from django.contrib.auth import get_user_model
from django.test import Client
from conversations import actions
alice = get_user_model().objects.get(username="alice")
conversation = actions.start_conversation(
    alice, actions.default_team(alice), title="Lighthouses", max_tokens=800, temperature=0.0
)
client = Client()
client.force_login(alice)
print(json.dumps({"session": client.cookies["sessionid"].value, "conversation": conversation.pk}))
"""


def login(server: LiveServer) -> tuple[str, int]:
    """alice's session cookie (a real session row) and a new conversation of hers."""
    done = subprocess.run(
        [PYTHON, "-c", SESSION], cwd=ROOT, env=server._env(), capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    return out["session"], out["conversation"]


def is_delta(frame: str) -> bool:
    return bool(re.search(r'id="m-\d+-(body|open)" hx-swap-oob="innerHTML"', frame))


def csrf_token(server: LiveServer) -> str:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    conn.request("GET", "/accounts/login/")
    response = conn.getresponse()
    response.read()
    return re.search(r"csrftoken=([^;]+)", response.getheader("Set-Cookie")).group(1)


def post_page(server: LiveServer, path: str, session: str, csrf: str) -> tuple[int, dict, float]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    start = time.monotonic()
    conn.request(
        "POST",
        path,
        "",
        {"Cookie": f"sessionid={session}; csrftoken={csrf}", "X-CSRFToken": csrf},
    )
    response = conn.getresponse()
    response.read()
    return response.status, dict(response.getheaders()), time.monotonic() - start


def streaming_rows(server: LiveServer) -> list:
    return server.query("SELECT id FROM conversations_message WHERE status = 'streaming'")


def wait_until(condition, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return False


HI = {"model": "gpt-3.5-turbo", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


# --- A held write lock ---------------------------------------------------------------------------


@pytest.mark.slow
def test_it_keeps_streaming_and_answers_503_while_another_connection_holds_the_write_lock(
    tmp_path: Path,
) -> None:
    server = LiveServer(
        tmp_path / "site",
        {
            **paced_env(write_paced_model(tmp_path / "model")),  # a reply that runs for 16 s
            "CHAT_SLOTS": "2",
            "CHAT_DB_BUSY_TIMEOUT": str(BUSY_TIMEOUT),
        },
    ).start()
    try:
        session, conversation, page = locked_checks(server)
        # Once the lock is gone everything carries on: Stop ends the reply, saved with its text.
        page.send_json({"action": "stop"})
        assert wait_until(lambda: not streaming_rows(server), 60), server.server_log()
        answer = server.query(
            "SELECT * FROM conversations_message WHERE role = 'assistant' AND conversation_id = ?",
            conversation,
        )[-1]
        assert answer["status"] in ("stopped", "complete") and answer["content"]
        assert server.request("GET", "/ready", key=None)[0] == 200
        page.close()
    finally:
        server.stop()


def locked_checks(server: LiveServer) -> tuple[str, int, RawSocket]:
    """Start a reply on a page, hold the write lock from another connection, check that the
    process carries on; release the lock. Returns the session, the conversation and the page."""
    session, conversation = login(server)
    csrf = csrf_token(server)
    page = RawSocket(server, f"/ws/c/{conversation}/", session)
    assert page.status_line.startswith("HTTP/1.1 101"), page.status_line
    assert page.wait_for('id="messages"', 30)
    page.send_json({"action": "send", "text": "Write a long essay about the history of lighthouses."})
    assert page.wait_for('-body" hx-swap-oob="innerHTML"', 120), "the reply never started"

    lock = sqlite3.connect(server.db_path, isolation_level=None, timeout=30)
    lock.execute("BEGIN IMMEDIATE")  # held by another process: nobody else can write
    locked_at = time.monotonic()
    try:
        # Past the first checkpoint (every second), the reply keeps reaching the page.
        deltas_after = 0
        deadline = locked_at + 4
        while (frame := page.next_frame(deadline)) is not None:
            if is_delta(frame) and time.monotonic() > locked_at + 1.5:
                deltas_after += 1
                if deltas_after >= 2:
                    break
        assert deltas_after >= 2, "the page stopped receiving the reply while the database was locked"

        # A new socket opens at once (its session is read; reads are not blocked by the lock).
        opened = time.monotonic()
        second = RawSocket(server, f"/ws/c/{conversation}/", session)
        assert second.status_line.startswith("HTTP/1.1 101"), second.status_line
        assert second.wait_for('id="messages"', 10)
        assert time.monotonic() - opened < 3
        second.close()

        # A page that must write answers 503 with Retry-After, within the busy timeout.
        status, headers, elapsed = post_page(server, f"/c/{conversation}/rename", session, csrf)
        assert status == 503 and headers.get("Retry-After")
        assert elapsed < BUSY_TIMEOUT + 3

        # So does /v1 (nothing could be logged), in OpenAI's shape.
        status, headers, body = server.request("POST", "/v1/chat/completions", HI)
        assert status == 503, body
        assert headers.get("Retry-After")
        assert json.loads(body)["error"]["code"] == "database_unavailable"

        status, _, body = server.request("GET", "/ready", key=None)
        assert status == 503 and json.loads(body)["checks"]["database"] == "failing"
    finally:
        lock.rollback()
        lock.close()
    return session, conversation, page


# --- A full disk ---------------------------------------------------------------------------------


@dataclass
class ServerOnSmallDisk(LiveServer):
    """A live server whose SQLite database lives on its own small filesystem."""

    db_dir: Path = Path()

    @property
    def db_path(self) -> Path:
        return self.db_dir / "db.sqlite3"

    def _env(self) -> dict[str, str]:
        env = super()._env()
        env["DATABASE_URL"] = f"sqlite:///{self.db_path}"
        return env


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 16 MB tmpfs (mounting needs root)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mount = tmp_path / "small-disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(folder: Path) -> Path:
    """Fill the filesystem of ``folder`` to the last byte."""
    filler = folder / "filler"
    with open(filler, "wb", buffering=0) as fh:
        for size in (1 << 20, 1 << 12, 1):
            while True:
                try:
                    fh.write(b"\0" * size)
                except OSError:
                    break
    return filler


@pytest.mark.slow
def test_it_tells_the_client_and_saves_the_reply_later_when_the_disk_is_full(
    tmp_path: Path, small_disk: Path
) -> None:
    server = ServerOnSmallDisk(
        tmp_path / "site",
        {
            **paced_env(write_paced_model(tmp_path / "model")),  # A's reply runs for 40 s
            "CHAT_SLOTS": "1",
            "CHAT_QUEUE_MAX": "1",
            "CHAT_SAVE_RETRY_INTERVAL": "1",  # the wait for the late save, once the disk has room
        },
        db_dir=small_disk,
    ).start()
    try:
        # A occupies the one slot; B is admitted behind it, so its rows are written while the disk
        # has room, and it runs (and ends) once A's client goes away: after the disk is full.
        first = Stream(server, max_tokens=2000)
        assert first.status == 200
        first.read(until_chars=10)
        stream = Stream(server, max_tokens=8, content="Say hello.")
        assert stream.status == 200
        filler = fill(small_disk)

        status, _, body = server.request("GET", "/ready", key=None)
        assert status == 503 and json.loads(body)["checks"]["database"] == "failing"

        first.conn.close()  # A's generation is cancelled within a token: B runs
        stream.read()
        assert stream.done, "the stream did not end with [DONE]"
        assert stream.error is not None and stream.error["code"] == "save_failed"
        assert stream.text

        # Nothing can be logged: a new call answers 503 with Retry-After, not a 500.
        status, headers, body = server.request("POST", "/v1/chat/completions", HI)
        assert status == 503, body
        assert headers.get("Retry-After")

        filler.unlink()  # room again: the reply gets its real final state
        reply_id = server.query(
            "SELECT id FROM conversations_message WHERE role = 'assistant' ORDER BY id DESC LIMIT 1"
        )[0]["id"]

        def saved() -> bool:
            return not streaming_rows(server)

        assert wait_until(saved, 60), server.server_log()
        row = server.query("SELECT * FROM conversations_message WHERE id = ?", reply_id)[0]
        assert row["status"] == "complete" and row["content"] == stream.text
        assert "saved late" in row["error"]
        assert server.request("GET", "/ready", key=None)[0] == 200
    finally:
        server.stop()


# --- Redis unreachable ---------------------------------------------------------------------------


@pytest.mark.slow  # a live server
def test_it_answers_api_calls_and_closes_sockets_cleanly_when_redis_is_unreachable(tmp_path: Path) -> None:
    tiny = write_tiny_llama(tmp_path / "tiny.gguf")
    # Nothing listens on this port: Redis is down for the whole life of the server.
    server = LiveServer(
        tmp_path / "site",
        {
            "CHAT_MODEL_PATH": str(tiny),
            "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
            "CHAT_MAX_TOKENS_CAP": "8",
        },
    )
    try:
        server.start()  # it waits for a 200 from /v1/chat/completions
        status, _, body = server.request("POST", "/v1/chat/completions", HI)
        assert status == 200, body
        assert not streaming_rows(server)

        status, _, body = server.request("GET", "/ready", key=None)
        assert status == 503 and json.loads(body)["checks"]["channel_layer"] == "failing"

        session, conversation = login(server)
        page = RawSocket(server, f"/ws/c/{conversation}/", session)
        assert page.status_line.startswith("HTTP/1.1 101"), page.status_line
        error = page.wait_for("chat-error", 10)
        assert error is not None and "Redis" in error
        assert page.next_frame(time.monotonic() + 10) is None
        assert page.close_code == 4503
        page.close()
    finally:
        server.stop()
