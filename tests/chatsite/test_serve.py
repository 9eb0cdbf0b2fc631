"""The launcher (`manage.py serve`): graceful drain on SIGTERM, and recovery after kill -9.

A real server process; replies are streamed over /v1 with raw HTTP. The model is the tiny test
model at a fixed pace (tests/paced_model.py): these tests need replies that are still running when
they act, not the real model's words, and a reply's length in time then does not depend on how
busy the machine is.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from pathlib import Path

import pytest

from tests.live_server import LiveServer, Stream
from tests.paced_model import paced_env, write_paced_model

pytestmark = pytest.mark.slow


def open_stream(server: LiveServer, max_tokens: int) -> Stream:
    stream = Stream(server, max_tokens)
    assert stream.status == 200
    return stream


def start(tmp_path: Path, drain: float) -> LiveServer:
    server = LiveServer(
        tmp_path / "site",
        {**paced_env(write_paced_model(tmp_path / "model")), "CHAT_SLOTS": "1"},
        command=["manage.py", "serve", "--drain-timeout", str(drain)],
    )
    return server.start()


def last_reply(server: LiveServer):
    return server.query(
        "SELECT * FROM conversations_message WHERE role = 'assistant' ORDER BY id DESC LIMIT 1"
    )[0]


def test_it_lets_running_replies_finish_on_sigterm(tmp_path: Path) -> None:
    n_tokens = 300  # 6 s at the pace: the reply is still running when the refused request is made
    server = start(tmp_path, drain=300)
    try:
        # The readiness probe's one-token completion went through the runner into the metrics.
        status, _, body = server.request("GET", "/metrics", key=None)
        assert status == 200
        text = body.decode()
        assert 'chatsite_generations_total{reason="length"}' in text
        assert "chatsite_ttft_seconds_count" in text and 'chatsite_http_responses_total{code="200"}' in text
        stream = open_stream(server, max_tokens=n_tokens)
        stream.read(until_chars=20)
        server.process.send_signal(signal.SIGTERM)
        # Once the signal is handled /ready says so; the stream still runs (hundreds of tokens).
        deadline = time.monotonic() + 10
        while server.request("GET", "/ready", key=None)[0] == 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        status, _, body = server.request(
            "POST",
            "/v1/chat/completions",
            {"model": "gpt-3.5-turbo", "messages": [{"role": "user", "content": "hi"}]},
        )
        assert status == 503
        assert json.loads(body)["error"]["message"]
        assert last_reply(server)["status"] == "streaming"  # the reply was still running meanwhile
        stream.read()
        assert stream.done and stream.finish_reason == "length"
        assert server.process.wait(30) == 0
        row = last_reply(server)
        assert row["status"] == "complete" and row["completion_tokens"] == n_tokens
        assert row["content"] == stream.text
    finally:
        server.stop()


def test_it_interrupts_replies_that_outlive_the_drain(tmp_path: Path) -> None:
    server = start(tmp_path, drain=1)
    try:
        stream = open_stream(server, max_tokens=3000)
        stream.read(until_chars=20)
        server.process.send_signal(signal.SIGTERM)
        stream.read()
        assert stream.done and stream.error is not None  # the client is told the reply was cut
        assert server.process.wait(30) == 0
        row = last_reply(server)
        assert row["status"] == "interrupted"
        assert row["content"] and stream.text.startswith(row["content"])
        assert not server.query("SELECT id FROM conversations_message WHERE status = 'streaming'")
    finally:
        server.stop()


def test_it_recovers_every_message_after_kill_9(tmp_path: Path) -> None:
    server = start(tmp_path, drain=30)
    try:
        # A client that reads as the text comes, noting when each piece arrived.
        client = open_stream(server, max_tokens=3000)
        reader = threading.Thread(target=client.read, daemon=True)
        reader.start()
        while len(client.text) < 300 and reader.is_alive():
            time.sleep(0.05)
        # At least one checkpoint after the text the client has now.
        had, deadline = len(client.text), time.monotonic() + 30
        while len(last_reply(server)["content"]) < had and time.monotonic() < deadline:
            time.sleep(0.05)
        killed_at = time.monotonic()
        server.process.kill()
        server.process.wait(10)
        reader.join(30)  # everything the server sent before it died
        seen = client.text
        assert last_reply(server)["status"] == "streaming"  # nobody marked it: the process died
        server.log.close()
        server.start(setup=False)  # the same data folder: the next start-up finds the orphaned reply
        interrupted = server.query("SELECT * FROM conversations_message WHERE status = 'interrupted'")
        assert len(interrupted) == 1
        row = interrupted[0]
        assert row["content"] and seen.startswith(row["content"])
        # Checkpoints are at most ~1 s apart: the text the database lacks had been on the client
        # for about a second at most when the server died (generous: a busy machine).
        assert client.behind(len(row["content"]), killed_at) < 2.5
        users = server.query(
            "SELECT content FROM conversations_message WHERE role = 'user' AND conversation_id = ?",
            row["conversation_id"],
        )
        assert [u["content"] for u in users] == ["Tell me a long story about a lighthouse."]
        assert not server.query("SELECT id FROM conversations_message WHERE status = 'streaming'")
    finally:
        server.stop()
