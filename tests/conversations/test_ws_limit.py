"""Daphne's websocket message-size limit, as `manage.py serve` sets it (CHAT_WS_MAX_MESSAGE_BYTES):
an oversized message closes the socket with 1009, nothing is stored, and the server carries on.
A raw websocket client against a real server process (the tiny model: no reply is wanted)."""

from __future__ import annotations

import subprocess

import pytest

from tests.conversations.test_chat_browser import PASSWORD, SETUP
from tests.live_server import PYTHON, ROOT, LiveServer
from tests.raw_ws import RawSocket
from tests.tiny_gguf import write_tiny_llama

LIMIT = 64 * 1024


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("ws-limit")
    tiny = write_tiny_llama(root / "tiny.gguf")
    live = LiveServer(
        root / "site",
        {"CHAT_MODEL_PATH": str(tiny), "CHAT_WS_MAX_MESSAGE_BYTES": str(LIMIT)},
        command=["manage.py", "serve"],
    ).start()
    try:
        done = subprocess.run(
            [PYTHON, "-c", SETUP], cwd=ROOT, env=live._env(), capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr
        yield live
    finally:
        live.stop()


@pytest.mark.slow  # a live server
def test_it_closes_a_websocket_that_sends_an_oversized_message(server: LiveServer) -> None:
    session = server.log_in("alice", PASSWORD)
    conversation_id = server.query(
        "SELECT id FROM conversations_conversation WHERE title = 'Release notes draft'"
    )[0]["id"]
    before = server.query("SELECT COUNT(*) AS n FROM conversations_message")[0]["n"]
    sock = RawSocket(server, f"/ws/c/{conversation_id}/", session)
    assert sock.status_line.startswith("HTTP/1.1 101"), sock.status_line
    try:
        text = '{"action": "send", "text": "' + "x" * (LIMIT + 1000) + '"}'
        sock.send_text(text.encode())
        frames, code = sock.read_until_closed(timeout=10)
        # Daphne (autobahn) ends the connection: with 1009 "message too big", or by dropping it.
        # The consumer never saw the message: it would have refused it and kept the connection.
        assert code in (1009, None)
        assert not any(b"too large" in payload for _, payload in frames)
    finally:
        sock.close()
    assert server.query("SELECT COUNT(*) AS n FROM conversations_message")[0]["n"] == before
    # The server carries on, and a message under the limit is still accepted on a new socket.
    status, _, _ = server.request("GET", "/health", key=None)
    assert status == 200
    sock = RawSocket(server, f"/ws/c/{conversation_id}/", session)
    assert sock.status_line.startswith("HTTP/1.1 101"), sock.status_line
    sock.close()
